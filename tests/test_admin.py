"""run.py admin: accounts, offline verification and export, beside a running server."""

import os
import sqlite3
import subprocess
import sys

from tests.server import ROOT, Server


def admin(server: Server, *args: str, stdin: str = "") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "admin",
            "--config",
            str(server.workdir / "config.yaml"),
            *args,
        ],
        input=stdin.encode(),
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "VAULT_BCRYPT_ROUNDS": "4"},
    )


def login(server: Server, name: str, password: str) -> int:
    return server.request("POST", "/login", {"username": name, "password": password}).status


def test_created_user_logs_in_and_a_reset_password_replaces_the_old_one(server: Server) -> None:
    done = admin(server, "create-user", "admin-made", stdin="first password\n")
    assert done.returncode == 0, done.stderr
    assert login(server, "admin-made", "first password") == 200
    done = admin(server, "reset-password", "admin-made", stdin="second password\n")
    assert done.returncode == 0, done.stderr
    assert login(server, "admin-made", "second password") == 200
    assert login(server, "admin-made", "first password") == 401


def test_create_user_refuses_a_short_password_and_a_taken_name(server: Server) -> None:
    name, _ = server.new_user()
    assert b"at least 8" in admin(server, "create-user", "short-pw-user", stdin="short\n").stderr
    done = admin(server, "create-user", name, stdin="long enough password\n")
    assert done.returncode == 1 and b"already exists" in done.stderr


def test_export_writes_the_exact_plaintext_to_stdout(server: Server) -> None:
    name, token = server.new_user()
    data = os.urandom(2 * 1024 * 1024 + 77)
    assert server.put_file(token, "export.bin", data).status == 201
    done = admin(server, "export", name, "export.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_export_of_a_missing_file_fails_without_output(server: Server) -> None:
    name, _ = server.new_user()
    done = admin(server, "export", name, "nothing.bin")
    assert (done.returncode, done.stdout) == (1, b"")
    assert b"File not found" in done.stderr


def test_verify_names_exactly_the_damaged_files(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, token = server.new_user()
    for file in ("good.bin", "bad.bin"):
        assert server.put_file(token, file, os.urandom(1024 * 1024 + 5)).status == 201
    clean = admin(server, "verify")
    assert clean.returncode == 0, clean.stderr
    assert b"2 files checked, 0 damaged" in clean.stdout
    with sqlite3.connect(server.db_path) as con:
        (file_id,) = con.execute("SELECT file_id FROM files WHERE name = 'bad.bin' AND state = 1").fetchone()
        (blob,) = con.execute(
            "SELECT data FROM segments WHERE file_id = ? AND idx = 1", (file_id,)
        ).fetchone()
        flipped = bytearray(blob)
        flipped[40] ^= 1
        con.execute("UPDATE segments SET data = ? WHERE file_id = ? AND idx = 1", (bytes(flipped), file_id))
    damaged = admin(server, "verify")
    assert damaged.returncode == 1
    assert damaged.stdout.decode().splitlines() == [f"DAMAGED {name}/bad.bin", "2 files checked, 1 damaged"]
