"""run.py admin: accounts, offline verification and export, beside a running server."""

import base64
import json
import os
import signal
import socket
import sqlite3
import ssl
import tempfile
import time
from pathlib import Path

from tests.dbedit import Edits
from tests.server import Server
from vault.tls import ensure_certificate


def login(server: Server, name: str, password: str) -> int:
    return server.request("POST", "/login", {"username": name, "password": password}).status


def test_created_user_logs_in_and_a_reset_password_replaces_the_old_one(server: Server) -> None:
    done = server.admin("create-user", "admin-made", stdin="first password\n")
    assert done.returncode == 0, done.stderr
    assert login(server, "admin-made", "first password") == 200
    done = server.admin("reset-password", "admin-made", stdin="second password\n")
    assert done.returncode == 0, done.stderr
    assert login(server, "admin-made", "second password") == 200
    assert login(server, "admin-made", "first password") == 401


def test_create_user_refuses_a_short_password_and_a_taken_name(server: Server) -> None:
    name, _ = server.new_user()
    assert b"at least 8" in server.admin("create-user", "short-pw-user", stdin="short\n").stderr
    done = server.admin("create-user", name, stdin="long enough password\n")
    assert done.returncode == 1 and b"already exists" in done.stderr


def test_export_writes_the_exact_plaintext_to_stdout(server: Server) -> None:
    name, token = server.new_user()
    data = os.urandom(2 * 1024 * 1024 + 77)
    assert server.put_file(token, "export.bin", data).status == 201
    done = server.admin("export", name, "export.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_export_of_a_missing_file_fails_without_output(server: Server) -> None:
    name, _ = server.new_user()
    done = server.admin("export", name, "nothing.bin")
    assert (done.returncode, done.stdout) == (1, b"")
    assert b"File not found" in done.stderr


def test_verify_names_exactly_the_damaged_files(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, token = server.new_user()
    for file in ("good.bin", "bad.bin"):
        assert server.put_file(token, file, os.urandom(1024 * 1024 + 5)).status == 201
    clean = server.admin("verify")
    assert clean.returncode == 0, clean.stderr
    assert b"2 files checked, 0 damaged" in clean.stdout
    with sqlite3.connect(server.db_path, factory=Edits) as con:
        (file_id,) = con.execute("SELECT file_id FROM files WHERE name = 'bad.bin' AND state = 1").fetchone()
        (blob,) = con.execute(
            "SELECT data FROM segments WHERE file_id = ? AND idx = 1", (file_id,)
        ).fetchone()
        flipped = bytearray(blob)
        flipped[40] ^= 1
        con.execute("UPDATE segments SET data = ? WHERE file_id = ? AND idx = 1", (bytes(flipped), file_id))
    damaged = server.admin("verify")
    assert damaged.returncode == 1
    assert damaged.stdout.decode().splitlines() == [f"DAMAGED {name}/bad.bin", "2 files checked, 1 damaged"]


def test_rotate_key_refuses_while_the_server_runs(fresh_server: Server) -> None:
    server = fresh_server.start()
    done = server.admin("rotate-key")
    assert done.returncode == 2
    assert b"another vault is already running" in done.stderr


def test_rotated_and_retired_keys_leave_files_grants_links_and_logins_working(fresh_server: Server) -> None:
    server = fresh_server.start()
    owner, token = server.new_user()
    friend, _ = server.new_user()
    data = os.urandom(1024 * 1024 + 3)
    assert server.put_file(token, "kept.bin", data).status == 201
    assert server.request("POST", "/files/kept.bin/shares", {"username": friend}, token=token).status == 201
    url = server.request("POST", "/files/kept.bin/links", {}, token=token).json()["url"]
    with sqlite3.connect(server.db_path) as con:
        before = con.execute("SELECT idx, data FROM segments ORDER BY idx").fetchall()
    server.stop()

    rotated = server.admin("rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    assert b"new primary master key 2" in rotated.stderr
    refused = server.admin("retire-key", "2")
    assert refused.returncode == 2 and b"primary" in refused.stderr
    retired = server.admin("retire-key", "1")
    assert retired.returncode == 0, retired.stderr
    with sqlite3.connect(server.db_path) as con:
        assert con.execute("SELECT idx, data FROM segments ORDER BY idx").fetchall() == before  # untouched
        assert {row[0] for row in con.execute("SELECT key_id FROM files WHERE state = 1")} == {2}

    server.start()
    password = "correct horse battery"
    token = server.request("POST", "/login", {"username": owner, "password": password}).json()["token"]
    friend_token = server.request("POST", "/login", {"username": friend, "password": password}).json()[
        "token"
    ]
    assert server.request("GET", "/download/kept.bin", token=token).body == data
    assert server.request("GET", f"/shared/{owner}/kept.bin", token=friend_token).body == data
    assert server.request("GET", url.split(str(server.port), 1)[1]).body == data


def test_retire_key_refuses_a_key_still_in_use(fresh_server: Server) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    assert server.put_file(token, "x.bin", b"x").status == 201
    server.stop()
    with open(server.data_dir / "master.keys") as handle:
        ring = json.load(handle)
    ring["keys"]["2"] = base64.b64encode(os.urandom(32)).decode()
    ring["primary"] = 2
    (server.data_dir / "master.keys").write_text(json.dumps(ring))
    done = server.admin("retire-key", "1")
    assert done.returncode == 2
    assert b"still wraps or tags some data" in done.stderr


def served_certificate(server: Server) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read which certificate is served
    with socket.create_connection(("127.0.0.1", server.port)) as raw, context.wrap_socket(raw) as tls:
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def test_sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_broken(fresh_server: Server) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    first = served_certificate(server)
    cert, key = server.cert, server.workdir / "certs" / "key.pem"
    with tempfile.TemporaryDirectory() as spare:
        assert ensure_certificate(Path(spare) / "c.pem", Path(spare) / "k.pem")
        cert.write_bytes((Path(spare) / "c.pem").read_bytes())
        key.write_bytes((Path(spare) / "k.pem").read_bytes())
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while served_certificate(server) == first and time.monotonic() < deadline:
        time.sleep(0.1)
    second = served_certificate(server)
    assert second != first
    assert server.request("GET", "/files", token=token).status == 200  # the new cert verifies
    cert.write_text("not a certificate")
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "certificate not reloaded" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "certificate not reloaded" in server.output()
    assert served_certificate(server) == second
