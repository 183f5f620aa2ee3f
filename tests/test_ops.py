"""Operating vault: the admin CLI's safety (--init, umask, the server's paths), --version and
--help, and user management (list, delete, export to a file)."""

import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.server import ROOT, Server
from vault import __version__
from vault.config import load_settings
from vault.errors import ConfigError

PASSWORD = "correct horse battery"  # noqa: S105 (a test password)


def run(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**os.environ, "VAULT_BCRYPT_ROUNDS": "4"},
    )


def test_version_matches_the_project() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert match and match.group(1) == __version__
    done = run("--version")
    assert (done.returncode, done.stdout) == (0, f"vault {__version__}\n")


def test_help_lists_every_admin_command() -> None:
    done = run("--help")
    assert done.returncode == 0
    commands = re.findall(r"^  ([a-z-]+)  ", done.stdout.split("admin commands", 1)[1], re.M)
    assert {"create-user", "list-users", "invite", "disable-user", "delete-user", "export", "verify"} <= set(
        commands
    )
    assert len(commands) >= 14


def test_admin_refuses_to_create_a_data_directory_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("data_dir: data\n")
    done = run("admin", "--config", str(tmp_path / "config.yaml"), "list-users")
    assert done.returncode == 2
    assert "no vault database in" in done.stderr and "--init" in done.stderr
    assert not (tmp_path / "data").exists()
    done = run("admin", "--config", str(tmp_path / "config.yaml"), "--init", "list-users")
    assert done.returncode == 0, done.stderr
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    made = sorted(data.iterdir())
    assert "vault.db" in {path.name for path in made}  # the loop below checks something
    for path in made:  # database, WAL, keyring, JWT secret: the server's umask
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_admin_resolves_data_dir_like_the_server(fresh_server: Server, tmp_path: Path) -> None:
    server = fresh_server.start()
    name, _ = server.new_user()
    config = str(server.workdir / "config.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A relative --data-dir is relative to the config file's folder, for the server and admin
    # alike, wherever they are started from and on either side of `admin`.
    for args in (
        ("--config", config, "--data-dir", "data", "admin", "list-users"),
        ("admin", "--config", config, "--data-dir", "data", "list-users"),
    ):
        done = run(*args, cwd=elsewhere)
        assert done.returncode == 0, done.stderr
        assert name in done.stdout
    assert not (elsewhere / "data").exists()


def test_list_users_shows_each_account_with_human_sizes(fresh_server: Server) -> None:
    server = fresh_server.start()
    busy, token = server.new_user()
    idle, _ = server.new_user()
    assert server.put_file(token, "a.bin", b"a" * 1536).status == 201
    assert server.put_file(token, "b.bin", b"b" * 512).status == 201
    assert server.admin("set-limits", busy, "--quota", "50G").returncode == 0
    assert server.admin("disable-user", idle).returncode == 0
    done = server.admin("list-users")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    header = ["user", "created", "files", "usage", "stored", "quota", "disabled", "last", "login"]
    assert lines[0].split() == header
    rows = {line.split()[0]: line for line in lines[1:]}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert re.fullmatch(
        rf"{busy}\s+{today} \d\d:\d\d\s+2\s+2.0 KiB\s+2.1 KiB\s+50.0 GiB\s+no\s+{today} \d\d:\d\d", rows[busy]
    )
    assert re.fullmatch(
        rf"{idle}\s+{today} \d\d:\d\d\s+0\s+0 B\s+0 B\s+none \(default\)\s+yes\s+{today} \d\d:\d\d",
        rows[idle],
    )


def test_delete_user_asks_and_removes_files_shares_links_and_tokens(fresh_server: Server) -> None:
    server = fresh_server.start()
    owner, token = server.new_user()
    friend, friend_token = server.new_user()
    assert server.put_file(token, "mine.bin", os.urandom(3 * 1024 * 1024)).status == 201
    assert server.request("POST", "/files/mine.bin/shares", {"username": friend}, token=token).status == 201
    link = server.request("POST", "/files/mine.bin/links", {}, token=token).json()["url"]
    link_path = link.split(str(server.port), 1)[1]

    refused = server.admin("delete-user", owner, stdin="not-the-name\n")
    assert refused.returncode == 2 and b"not confirmed" in refused.stderr
    assert server.request("GET", "/download/mine.bin", token=token).status == 200

    with sqlite3.connect(server.db_path) as con:
        (owner_id,) = con.execute("SELECT id FROM users WHERE username = ?", (owner,)).fetchone()
        assert con.execute(
            "SELECT COUNT(*) FROM refresh_tokens WHERE user_id = ?", (owner_id,)
        ).fetchone() != (0,)
    done = server.admin("delete-user", owner, stdin=owner + "\n")
    assert done.returncode == 0, done.stderr
    assert f"deleted {owner}: 1 files, 3.0 MiB".encode() in done.stdout
    with sqlite3.connect(server.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM users WHERE username = ?", (owner,)).fetchone() == (0,)
        assert con.execute("SELECT COUNT(*) FROM segments").fetchone() == (0,)
        assert con.execute("SELECT COUNT(*) FROM files").fetchone() == (0,)
        assert con.execute("SELECT COUNT(*) FROM grants").fetchone() == (0,)
        assert con.execute("SELECT COUNT(*) FROM links").fetchone() == (0,)
        assert con.execute(
            "SELECT COUNT(*) FROM refresh_tokens WHERE user_id = ?", (owner_id,)
        ).fetchone() == (0,)
    deadline = time.monotonic() + 10  # the server's token epoch cache: 2 s
    while server.request("GET", "/files", token=token).status != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.request("GET", "/files", token=token).status == 401
    assert server.request("POST", "/login", {"username": owner, "password": PASSWORD}).status == 401
    assert server.request("GET", "/shared", token=friend_token).json() == {"files": []}
    assert server.request("GET", link_path).status == 410


def test_delete_user_with_yes_does_not_ask_and_an_unknown_user_fails(server: Server) -> None:
    name, _ = server.new_user()
    done = server.admin("delete-user", name, "--yes")
    assert done.returncode == 0, done.stderr
    gone = server.admin("delete-user", name, "--yes")
    assert gone.returncode == 1 and f"no user '{name}'".encode() in gone.stderr


@pytest.mark.parametrize("existing", [False, True])
def test_export_to_a_file_writes_nothing_on_error(server: Server, tmp_path: Path, existing: bool) -> None:
    name, token = server.new_user()
    target = tmp_path / "out.bin"
    if existing:
        target.write_bytes(b"keep me")
    done = server.admin("export", name, "missing.bin", "-o", str(target))
    assert done.returncode == 1 and b"File not found" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == (["out.bin"] if existing else [])
    if existing:
        assert target.read_bytes() == b"keep me"
    data = os.urandom(1024 * 1024 + 1)
    assert server.put_file(token, "there.bin", data).status == 201
    done = server.admin("export", name, "there.bin", "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert (done.stdout, target.read_bytes()) == (b"", data)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_health_checks_the_database(fresh_server: Server) -> None:
    server = fresh_server.start()
    assert server.request("GET", "/health").json() == {"status": "ok"}
    with sqlite3.connect(server.db_path) as con:
        con.execute("ALTER TABLE users RENAME TO users_gone")  # the database no longer answers
    resp = server.request("GET", "/health")
    assert (resp.status, resp.json()) == (503, {"message": "Database unavailable", "status": 503})


def test_tls_names_go_into_the_generated_certificate(fresh_server: Server) -> None:
    fresh_server.env["VAULT_TLS_NAMES"] = "files.lan, 192.0.2.10,fd00::7"
    server = fresh_server.start()
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "files.lan"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "192.0.2.10",
        "fd00::7",
    ]


@pytest.mark.parametrize("bad", ["files lan", "-bad.example", "a..b", "x" * 64 + ".org"])
def test_tls_names_refuse_what_is_neither_a_name_nor_an_address(bad: str) -> None:
    with pytest.raises(ConfigError, match="tls_names"):
        load_settings(None, {"VAULT_TLS_NAMES": bad})
