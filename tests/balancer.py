"""The README's "Several instances" setup on loopback (tests/test_several_instances.py,
bench/instances.py): two ``run.py`` from the README's config.yaml on one PostgreSQL and one
bucket, behind nginx from docs/deploy/nginx-vault-instances.conf as the README shows it."""

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.s3server import BUCKET, S3Server
from tests.server import ROOT, Server
from tests.test_proxy import Nginx, free_port
from vault.tls import ensure_certificate

RECIPE = ROOT / "docs" / "deploy" / "nginx-vault-instances.conf"
README_MARK = "<!-- docs/deploy/nginx-vault-instances.conf, verbatim (tests/test_several_instances.py) -->"
CONFIG_MARK = "<!-- several-instances config.yaml (tests/test_several_instances.py loads it) -->"


def readme_recipe() -> str:
    """The nginx block the README shows after its marker."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(README_MARK) + r"\n```nginx\n(.*?)```\n", readme, re.DOTALL)
    assert found is not None, "README.md has no nginx block after the marker"
    return found.group(1)


class Balancer(Nginx):
    """nginx from the instances' recipe, in front of ``a`` and ``b``; its access log names the
    instance (upstream address) that served each request."""

    def __init__(self, prefix: Path, a: Server, b: Server) -> None:
        self.prefix, self.port = prefix, free_port()
        self.cert, self.key = prefix / "proxy-cert.pem", prefix / "proxy-key.pem"
        ensure_certificate(self.cert, self.key)
        self.write_conf(
            readme_recipe()
            .replace("10.0.0.11:5000", f"127.0.0.1:{a.port}")
            .replace("10.0.0.12:5000", f"127.0.0.1:{b.port}")
            .replace("listen 443 ssl", f"listen 127.0.0.1:{self.port} ssl")
            .replace("/etc/ssl/vault/fullchain.pem", str(self.cert))
            .replace("/etc/ssl/vault/privkey.pem", str(self.key))
            .replace("/etc/nginx/vault-backend.pem", str(a.cert)),
            log_format="upstream '$request_method $uri $status $upstream_addr'",
        )
        self.process = None

    def served(self) -> list[tuple[str, str, int, str]]:
        """(method, path, status, upstream addresses) of each request so far."""
        rows = []
        for line in (self.prefix / "access.log").read_text().splitlines():
            method, path, status, upstream = line.split(" ", 3)
            rows.append((method, path, int(status), upstream))
        return rows


def readme_config(workdir: Path, s3: S3Server) -> None:
    """The README's instance config.yaml, with this machine's addresses and paths, as the
    instance's config file."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(CONFIG_MARK) + r"\n```yaml\n(.*?)```\n", readme, re.DOTALL)
    assert found is not None, "README.md has no config.yaml block after the marker"
    config = (
        found.group(1)
        .replace("host: 10.0.0.11", "host: 127.0.0.1")
        .replace("/var/lib/vault/certs/", f"{workdir}/certs/")
        .replace("data_dir: /var/lib/vault", f"data_dir: {workdir}/data")
        .replace("http://10.0.0.6:8333", s3.endpoint)
        .replace("s3_bucket: vault-segments", f"s3_bucket: {BUCKET}")
        .replace("s3_prefix: segments/", f"s3_prefix: {workdir.parent.name}/")
        .replace("trusted_proxies: 10.0.0.10", "trusted_proxies: 127.0.0.1")
    )
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(config)


@contextmanager
def several_instances(
    tmp_path: Path, database_url: str, weed: S3Server, extra: dict[str, str] | None = None
) -> Iterator[tuple[Server, Server, Balancer]]:
    """Two instances configured as the README says, the second with the first one's keys and
    certificate, behind nginx from the README's recipe."""
    env = {  # the secrets.env of the README
        "VAULT_STORAGE": "postgres",  # as in the config file (tests/server.py reads it here)
        "VAULT_DATABASE_URL": database_url,
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
        **(extra or {}),
    }
    a, b = Server(tmp_path / "a", env=env), Server(tmp_path / "b", env=env)
    for instance in (a, b):
        readme_config(instance.workdir, weed)
    proxy: Balancer | None = None
    try:
        a.start()
        # The second instance gets the first one's generated keys and certificate (README).
        for name in ("data/master.keys", "data/jwt.secret", "certs/cert.pem", "certs/key.pem"):
            (b.workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a.workdir / name, b.workdir / name)
        b.start()
        (tmp_path / "nginx").mkdir()
        proxy = Balancer(tmp_path / "nginx", a, b)
        proxy.start()
        yield a, b, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        a.stop()
        b.stop()
