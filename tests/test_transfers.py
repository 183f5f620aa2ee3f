"""Transfers end to end: the real curl binary, clients that vanish mid-upload, a server killed
mid-upload, and stored segments tampered with under a running server."""

import hashlib
import http.client
import json
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.dbedit import server_database, sqlite_only
from tests.marks import needs_curl
from tests.server import Server
from tests.test_api import (
    BOUNDARY,
    LIVE,
    STAGED,
    assert_error,
    assert_uploaded,
    listing,
    payload,
    query,
    user_id,
    wait_until_clean,
)

MiB = 1024 * 1024
CURL_TIMEOUT = 60

# --------------------------------------------------------------------------- helpers


def curl(
    server: Server, token: str | None, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd = ["curl", "--silent", "--show-error", "--cacert", str(server.cert)]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, timeout=CURL_TIMEOUT, check=False)


def curl_json(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def open_tls(server: Server) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return server.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.05)


def staged_segments(server: Server, owner: int) -> int:
    rows = query(
        server,
        "SELECT COUNT(*) FROM segments s JOIN files f ON f.file_id = s.file_id"
        " WHERE f.owner = ? AND f.state = ?",
        (owner, STAGED),
    )
    return int(rows[0][0])


def start_upload(
    server: Server, token: str, method: str, path: str, headers: dict[str, str], body_prefix: bytes
) -> ssl.SSLSocket:
    """Send a request's headers and only the first part of its body over a raw TLS socket."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Authorization: Bearer {token}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    sock = open_tls(server)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sock.sendall(body_prefix)
    return sock


def cut(sock: ssl.SSLSocket) -> None:
    """Vanish like a client whose process died: no close_notify, no rest of the body."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def file_ids(server: Server, owner: int, name: str) -> list[bytes]:
    rows = query(
        server, "SELECT file_id FROM files WHERE owner = ? AND name = ? AND state = ?", (owner, name, LIVE)
    )
    return [bytes(row[0]) for row in rows]


def execute(server: Server, sql: str, params: tuple[object, ...] | dict[str, object] = ()) -> int:
    """Write to the database beside the running server, as an attacker with file access could."""
    with server_database(server) as db:
        return int(db.execute(sql, params).rowcount)


def flip_byte(server: Server, file_id: bytes, idx: int, offset: int = 100) -> None:
    """Flip one bit of one stored segment, writing beside the running server."""
    with server_database(server) as db:
        (blob,) = db.execute(
            "SELECT data FROM segments WHERE file_id = ? AND idx = ?", (file_id, idx)
        ).fetchone()
        data = bytearray(blob)
        data[offset] ^= 0x01
        db.execute("UPDATE segments SET data = ? WHERE file_id = ? AND idx = ?", (bytes(data), file_id, idx))


def leftovers_of(server: Server, owner: int) -> int:
    """Segments of the owner's files that are not LIVE (deleted or replaced, awaiting purge)."""
    rows = query(
        server,
        "SELECT COUNT(*) FROM segments s JOIN files f ON f.file_id = s.file_id"
        " WHERE f.owner = ? AND f.state != ?",
        (owner, LIVE),
    )
    return int(rows[0][0])


def read_streaming(server: Server, path: str, token: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """GET and read the body as far as it comes, even if the connection is cut short."""
    conn = server.connection(timeout=30)
    received = bytearray()
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        try:
            # read(amt) returns b"" on a premature end instead of raising IncompleteRead
            while chunk := resp.read(64 * 1024):
                received += chunk
        except http.client.IncompleteRead as exc:
            received += exc.partial
        except (ConnectionError, ssl.SSLError):
            pass
        return resp.status, resp.headers, bytes(received)
    finally:
        conn.close()


def assert_error_body(status: int, body: bytes, expected: int) -> None:
    assert status == expected, (status, body[:200])
    assert json.loads(body) == {"message": "Stored data failed its integrity check", "status": expected}


# --------------------------------------------------------------------------- curl


@needs_curl
def test_curl_multipart_upload(server: Server, token: str, tmp_path: Path) -> None:
    data = payload(MiB + 3)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    body = curl_json(curl(server, token, "-F", f"file=@{path}", server.url + "/upload"))
    assert body["message"] == "File uploaded successfully"
    assert (body["filename"], body["size"], body["sha256"]) == (
        "photo.jpg",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert server.request("GET", "/download/photo.jpg", token=token).body == data


@needs_curl
def test_curl_put_upload_appends_the_file_name(server: Server, token: str, tmp_path: Path) -> None:
    data = payload(2 * MiB + 1)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    result = curl(server, token, "-T", str(path), server.url + "/upload/")
    body = curl_json(result)
    assert (body["filename"], body["size"], body["sha256"]) == (
        "notes.txt",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert server.request("GET", "/download/notes.txt", token=token).body == data


@needs_curl
def test_curl_put_of_an_empty_file(server: Server, token: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    result = curl(server, token, "-f", "-T", str(path), server.url + "/upload/")
    body = curl_json(result)
    assert (body["filename"], body["size"]) == ("empty.txt", 0)


@needs_curl
@pytest.mark.parametrize("name", ["report.pdf", "résumé 2026.pdf"])
def test_curl_download_with_remote_header_name(server: Server, token: str, tmp_path: Path, name: str) -> None:
    data = payload(MiB + 17)
    assert server.put_file(token, name, data).status == 201
    out = tmp_path / "out"
    out.mkdir()
    result = curl(server, token, "-f", "-O", "-J", server.url + "/download/" + quote(name, safe=""), cwd=out)
    assert result.returncode == 0, result.stderr
    saved = list(out.iterdir())
    assert len(saved) == 1, saved
    assert saved[0].read_bytes() == data
    if name.isascii():
        assert saved[0].name == name
    else:
        # curl reads only the ASCII fallback filename="...", never filename*
        assert saved[0].name.isascii() and saved[0].name.endswith(" 2026.pdf"), saved[0].name


@needs_curl
def test_curl_multipart_upload_of_non_ascii_name_then_download(
    server: Server, token: str, tmp_path: Path
) -> None:
    name, data = "日本語.txt", payload(1000)
    src = tmp_path / name
    src.write_bytes(data)
    body = curl_json(curl(server, token, "-F", f"file=@{src}", server.url + "/upload"))
    assert body["filename"] == name
    out = tmp_path / "out"
    out.mkdir()
    result = curl(
        server, token, "-f", "-o", "got.bin", server.url + "/download/" + quote(name, safe=""), cwd=out
    )
    assert result.returncode == 0, result.stderr
    assert (out / "got.bin").read_bytes() == data


@needs_curl
def test_curl_fail_on_missing_file_exits_nonzero_and_saves_nothing(
    server: Server, token: str, tmp_path: Path
) -> None:
    result = curl(server, token, "-f", "-O", "-J", server.url + "/download/missing.txt", cwd=tmp_path)
    assert result.returncode == 22, (result.returncode, result.stderr)
    assert b"404" in result.stderr
    assert list(tmp_path.iterdir()) == []


@needs_curl
def test_curl_without_fail_flag_shows_the_json_error(server: Server, token: str) -> None:
    result = curl(server, token, "-w", "\n%{http_code}", server.url + "/download/missing.txt")
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"404"
    assert json.loads(body) == {"message": "File not found", "status": 404}


@needs_curl
def test_curl_without_token_gets_401(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"x" * 1000)
    result = curl(server, None, "-T", str(path), "-w", "\n%{http_code}", server.url + "/upload/")
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"401"
    assert json.loads(body)["status"] == 401


# --------------------------------------------------------------------------- clients that vanish


def test_disconnect_mid_put_leaves_nothing(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    owner = user_id(server, username)
    sock = start_upload(
        server, token, "PUT", "/upload/cut.bin", {"Content-Length": str(5 * MiB)}, payload(5 * MiB // 2)
    )
    try:
        # the upload really is under way: its first segments are stored as STAGED
        wait_for(lambda: staged_segments(server, owner) >= 1, "a staged segment of the upload")
    finally:
        cut(sock)
    wait_until_clean(server, owner)
    assert listing(server, token) == []
    assert server.request("GET", "/download/cut.bin", token=token).status == 404


def test_disconnect_mid_multipart_part_leaves_nothing(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    owner = user_id(server, username)
    prefix = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + payload(5 * MiB // 2)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(5 * MiB + 500),
    }
    sock = start_upload(server, token, "POST", "/upload", headers, prefix)
    try:
        wait_for(lambda: staged_segments(server, owner) >= 1, "a staged segment of the upload")
    finally:
        cut(sock)
    wait_until_clean(server, owner)
    assert listing(server, token) == []


def test_disconnect_mid_replacement_keeps_the_old_version(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    owner = user_id(server, username)
    old = payload(MiB + 1)
    assert server.put_file(token, "keep.bin", old).status == 201
    sock = start_upload(
        server, token, "PUT", "/upload/keep.bin", {"Content-Length": str(4 * MiB)}, payload(2 * MiB)
    )
    try:
        wait_for(lambda: staged_segments(server, owner) >= 1, "a staged segment of the replacement")
    finally:
        cut(sock)
    wait_until_clean(server, owner)
    assert [(f["filename"], f["size"]) for f in listing(server, token)] == [("keep.bin", len(old))]
    assert server.request("GET", "/download/keep.bin", token=token).body == old


def test_server_keeps_serving_while_a_client_stalls_mid_upload(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    owner = user_id(server, username)
    sock = start_upload(
        server, token, "PUT", "/upload/slow.bin", {"Content-Length": str(3 * MiB)}, payload(MiB + 10)
    )
    try:
        wait_for(lambda: staged_segments(server, owner) >= 1, "a staged segment of the upload")
        assert server.put_file(token, "other.txt", b"meanwhile").status == 201
        assert server.request("GET", "/download/other.txt", token=token).body == b"meanwhile"
        assert [f["filename"] for f in listing(server, token)] == ["other.txt"]
    finally:
        cut(sock)
    wait_until_clean(server, owner)


def test_download_cut_short_does_not_keep_a_deleted_file_forever(
    server: Server, user: tuple[str, str]
) -> None:
    username, token = user
    owner = user_id(server, username)
    data = payload(3 * MiB)
    assert server.put_file(token, "big.bin", data).status == 201
    conn = server.connection(timeout=30)
    conn.request("GET", "/download/big.bin", headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read(100_000) == data[:100_000]
    conn.close()  # gone mid-body
    assert server.request("DELETE", "/files/big.bin", token=token).status == 200

    def purged() -> bool:
        # each upload ends with a purge of deleted files that no download still reads
        assert server.put_file(token, "nudge.txt", b"nudge").status == 201
        return leftovers_of(server, owner) == 0

    wait_for(purged, "the deleted file's segments to be purged")


def test_file_deleted_or_replaced_during_a_download_still_downloads_whole(
    server: Server, user: tuple[str, str]
) -> None:
    username, token = user
    owner = user_id(server, username)
    data = payload(3 * MiB + 5)
    for action in ("DELETE", "REPLACE"):
        assert server.put_file(token, "busy.bin", data).status == 201
        conn = server.connection(timeout=30)
        try:
            conn.request("GET", "/download/busy.bin", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            assert resp.status == 200
            first = resp.read(MiB)
            if action == "DELETE":
                assert server.request("DELETE", "/files/busy.bin", token=token).status == 200
            else:
                assert server.put_file(token, "busy.bin", b"new").status == 201
            rest = resp.read()
        finally:
            conn.close()
        assert first + rest == data, action
    assert server.request("GET", "/download/busy.bin", token=token).body == b"new"

    def purged() -> bool:
        assert server.put_file(token, "nudge.txt", b"nudge").status == 201
        return leftovers_of(server, owner) == 0

    wait_for(purged, "replaced and deleted files to be purged once their downloads ended")


# --------------------------------------------------------------------------- crash


def test_kill_mid_upload_then_restart_keeps_committed_files_and_drops_the_partial_one(
    fresh_server: Server,
) -> None:
    server = fresh_server.start()
    username, token = server.new_user()
    owner = user_id(server, username)
    a = payload(3 * MiB)
    assert_uploaded(server.put_file(token, "a.bin", a), "a.bin", a)

    sock = start_upload(
        server, token, "PUT", "/upload/b.bin", {"Content-Length": str(4 * MiB)}, payload(2 * MiB)
    )
    try:
        wait_for(lambda: staged_segments(server, owner) >= 1, "a staged segment of b.bin")
        server.stop(signal.SIGKILL)
    finally:
        cut(sock)
    assert server.process is not None and server.process.returncode == -signal.SIGKILL
    # the kill left the partial upload behind: this is what the restart must clean up
    assert query(server, "SELECT COUNT(*) FROM files WHERE owner = ? AND state = ?", (owner, STAGED)) == [
        (1,)
    ]

    server.start()
    if not server.database_url:  # PostgreSQL's own structure is not vault's to check
        assert query(server, "PRAGMA integrity_check") == [("ok",)]
    resp = server.request("POST", "/login", {"username": username, "password": "correct horse battery"})
    assert resp.status == 200, resp.body
    token = resp.json()["token"]
    files = listing(server, token)
    assert [(f["filename"], f["size"], f["sha256"]) for f in files] == [
        ("a.bin", len(a), hashlib.sha256(a).hexdigest())
    ]
    resp = server.request("GET", "/download/a.bin", token=token)
    assert resp.status == 200
    assert resp.body == a
    assert_error(server.request("GET", "/download/b.bin", token=token), 404, "File not found")
    wait_until_clean(server, owner)
    (orphans,) = query(
        server,
        "SELECT COUNT(*) FROM segments WHERE file_id NOT IN (SELECT file_id FROM files WHERE state = ?)",
        (LIVE,),
    )[0]
    assert orphans == 0


# --------------------------------------------------------------------------- tampering


def test_download_of_file_with_tampered_middle_segment_never_yields_altered_bytes(
    server: Server, user: tuple[str, str]
) -> None:
    username, token = user
    data = payload(3 * MiB)
    assert server.put_file(token, "t.bin", data).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "t.bin")
    flip_byte(server, file_id, idx=1)

    status, headers, received = read_streaming(server, "/download/t.bin", token)
    if status == 200:
        # the headers went out before segment 1 was read: the body must stop short, unaltered
        assert headers["Content-Length"] == str(len(data))
        assert len(received) < len(data)
        assert received == data[: len(received)]
        assert len(received) <= MiB  # nothing from segment 1 onwards
    else:
        assert_error_body(status, received, 500)
    assert server.request("GET", "/health").status == 200


def test_download_of_file_with_tampered_first_segment_is_json_500_before_any_body(
    server: Server, user: tuple[str, str]
) -> None:
    username, token = user
    data = payload(3 * MiB)
    assert server.put_file(token, "t0.bin", data).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "t0.bin")
    flip_byte(server, file_id, idx=0)

    resp = server.request("GET", "/download/t0.bin", token=token)
    assert_error(resp, 500, "Stored data failed its integrity check")
    assert "Content-Disposition" not in resp.headers
    assert data[:64] not in resp.body


@pytest.mark.parametrize("offset", [0, 20, -1], ids=["iv", "ciphertext", "tag"])
def test_tampering_any_part_of_a_segment_is_detected(
    server: Server, user: tuple[str, str], offset: int
) -> None:
    username, token = user
    data = payload(1000)
    assert server.put_file(token, "small.bin", data).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "small.bin")
    (size,) = query(server, "SELECT length(data) FROM segments WHERE file_id = ? AND idx = 0", (file_id,))[0]
    flip_byte(server, file_id, idx=0, offset=offset % size)
    assert_error(
        server.request("GET", "/download/small.bin", token=token),
        500,
        "Stored data failed its integrity check",
    )


# Each attack is a list of statements run with :fid bound to the victim file's id.
ATTACKS: dict[str, list[str]] = {
    "swap-segments-0-and-1": [
        "UPDATE segments SET idx = -1 WHERE file_id = :fid AND idx = 0",
        "UPDATE segments SET idx = 0 WHERE file_id = :fid AND idx = 1",
        "UPDATE segments SET idx = 1 WHERE file_id = :fid AND idx = -1",
    ],
    "copy-segment-0-over-1": [
        "UPDATE segments SET data = (SELECT data FROM segments WHERE file_id = :fid AND idx = 0)"
        " WHERE file_id = :fid AND idx = 1"
    ],
    "drop-last-segment": ["DELETE FROM segments WHERE file_id = :fid AND idx = 2"],
    "drop-middle-segment": ["DELETE FROM segments WHERE file_id = :fid AND idx = 1"],
    "truncate-segment": ["UPDATE segments SET data = substr(data, 1, 1000) WHERE file_id = :fid AND idx = 1"],
    "shrink-size": ["UPDATE files SET size = size - 1048576 WHERE file_id = :fid"],
    "fewer-segments": ["UPDATE files SET seg_count = 2 WHERE file_id = :fid"],
    "other-digest": ["UPDATE files SET sha256 = randomblob(32) WHERE file_id = :fid"],
    "rotate-wrapped-key": [
        "UPDATE files SET wrapped_key = CAST(substr(wrapped_key, 2) || substr(wrapped_key, 1, 1) AS BLOB)"
        " WHERE file_id = :fid"
    ],
    "other-header-tag": ["UPDATE files SET header_tag = randomblob(length(header_tag)) WHERE file_id = :fid"],
}
# The same attacks in PostgreSQL's SQL where SQLite's differs (a server in postgres mode).
PG_ATTACKS: dict[str, list[str]] = {
    "other-digest": [
        "UPDATE files SET sha256 = decode(md5(random()::text) || md5(random()::text), 'hex')"
        " WHERE file_id = :fid"
    ],
    "rotate-wrapped-key": [
        "UPDATE files SET wrapped_key = substr(wrapped_key, 2) || substr(wrapped_key, 1, 1)"
        " WHERE file_id = :fid"
    ],
    "other-header-tag": [
        "UPDATE files SET header_tag = decode(md5(random()::text) || md5(random()::text), 'hex')"
        " WHERE file_id = :fid"
    ],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_download_after_database_tampering_never_yields_wrong_bytes(
    server: Server, user: tuple[str, str], attack: str
) -> None:
    """Whatever an attacker with write access to vault.db changes, a client gets either an error
    or a short, unaltered prefix of the original bytes, never a complete download of other bytes."""
    username, token = user
    data = payload(3 * MiB)
    assert server.put_file(token, "victim.bin", data).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "victim.bin")
    attacks = PG_ATTACKS if server.database_url else {}
    for sql in attacks.get(attack, ATTACKS[attack]):
        assert execute(server, sql, {"fid": file_id}) == 1, sql

    status, headers, received = read_streaming(server, "/download/victim.bin", token)
    if status == 200:
        assert headers["Content-Length"] == str(len(data))
        assert len(received) < len(data)
        assert received == data[: len(received)]
    else:
        assert_error_body(status, received, 500)


def test_file_moved_to_another_owner_in_the_database_does_not_open(server: Server) -> None:
    alice_name, alice = server.new_user()
    mallory_name, mallory = server.new_user()
    assert server.put_file(alice, "secret.bin", b"alice's secret" * 1000).status == 201
    (file_id,) = file_ids(server, user_id(server, alice_name), "secret.bin")
    execute(server, "UPDATE files SET owner = ? WHERE file_id = ?", (user_id(server, mallory_name), file_id))
    resp = server.request("GET", "/download/secret.bin", token=mallory)
    assert_error(resp, 500, "Stored data failed its integrity check")
    assert b"secret" not in resp.body


def test_file_renamed_in_the_database_does_not_open(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    assert server.put_file(token, "invoice.pdf", b"%PDF" + payload(1000)).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "invoice.pdf")
    execute(server, "UPDATE files SET name = 'invoice.exe' WHERE file_id = ?", (file_id,))
    resp = server.request("GET", "/download/invoice.exe", token=token)
    assert_error(resp, 500, "Stored data failed its integrity check")


def test_corrupt_row_does_not_leave_the_server_reading_stale_data(fresh_server: Server) -> None:
    """A row that fails to load (here: a key stored as non-UTF-8 TEXT instead of a BLOB) is an
    error for that file only; afterwards the server must still see new users and new files."""
    server = fresh_server.start()
    username, token = server.new_user()
    assert server.put_file(token, "bad.bin", b"x" * 5000).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "bad.bin")
    sqlite_only(server, "PostgreSQL's columns are typed: no text in a bytea column")
    execute(
        server, "UPDATE files SET wrapped_key = CAST(randomblob(40) AS TEXT) WHERE file_id = ?", (file_id,)
    )
    assert_error(server.request("GET", "/download/bad.bin", token=token), 500)

    name, password = "fresh" + uuid.uuid4().hex[:8], "correct horse battery"
    assert server.request("POST", "/register", {"username": name, "password": password}).status == 201
    resp = server.request("POST", "/login", {"username": name, "password": password})
    assert resp.status == 200, resp.body
    other = resp.json()["token"]
    assert server.put_file(other, "new.txt", b"new").status == 201
    assert server.request("GET", "/download/new.txt", token=other).body == b"new"
    assert [f["filename"] for f in listing(server, other)] == ["new.txt"]


@needs_curl
def test_curl_reports_failure_on_tampered_download(
    server: Server, user: tuple[str, str], tmp_path: Path
) -> None:
    username, token = user
    data = payload(3 * MiB)
    assert server.put_file(token, "c.bin", data).status == 201
    (file_id,) = file_ids(server, user_id(server, username), "c.bin")
    flip_byte(server, file_id, idx=2)
    result = curl(server, token, "-f", "-o", "got.bin", server.url + "/download/c.bin", cwd=tmp_path)
    assert result.returncode != 0, "curl believed the tampered download complete"
    got = (tmp_path / "got.bin").read_bytes() if (tmp_path / "got.bin").exists() else b""
    assert len(got) < len(data)
    assert got == data[: len(got)]
