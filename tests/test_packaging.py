"""The deployment files in docs/deploy/: what can be checked without a Docker engine or an
installed service (README, Packaged)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.server import ROOT

DEPLOY = ROOT / "docs" / "deploy"


def test_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "vault.service").read_text()
    for option in (
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "ReadWritePaths=/var/lib/vault",
    ):
        assert f"\n{option}\n" in unit
    copy = tmp_path / "vault.service"  # the venv's python in place of /opt/vault/.venv
    copy.write_text(unit.replace("/opt/vault/.venv/bin/python", sys.executable))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(copy)], capture_output=True, text=True, check=False
    )
    match = re.search(r"Overall exposure level for vault.service: ([0-9.]+)", security.stdout)
    assert match and float(match.group(1)) <= 2.0, security.stdout[-500:]


def test_dockerfile_runs_as_a_user_with_a_volume_and_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'VOLUME ["/data"]' in text and "HEALTHCHECK" in text and "/health" in text
    copies = [line.split()[1:-1] for line in re.findall(r"^COPY .+$", text, re.M)]  # sources, then the target
    assert [s for sources in copies for s in sources][:2] == ["requirements.txt", "run.py"]  # found at all
    for source in (s for sources in copies for s in sources):
        assert (ROOT / source).exists(), source


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-tools.txt)")
    done = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "")


def test_compose_file_builds_that_dockerfile_with_a_data_volume_on_loopback() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["vault"]
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    ).resolve()
    assert service["volumes"] == ["vault-data:/data"] and "vault-data" in compose["volumes"]
    assert service["ports"] and all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
