"""Resumable uploads (tus 1.0.0) over real HTTPS: the real tuspy client (also interrupted by a
killed server and resumed by a new client), the protocol's rules request by request, a request
cut off mid-body, expiry, and no plaintext of a partial upload on disk."""

import base64
import email.utils
import hashlib
import json
import random
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import pytest
from tusclient import client as tus

from tests.dbedit import Edits
from tests.server import Response, Server

S = 1024 * 1024  # the server's default segment size
MiB = S
TUS = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
STAGED = 0

# --------------------------------------------------------------------------- helpers


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(size * 31 + seed).randbytes(size)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metadata(name: str) -> str:
    return "filename " + b64(name.encode())


def send(
    server: Server,
    method: str,
    path: str,
    token: str | None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    tus_header: bool = True,
) -> Response:
    """One request with its whole body, even if the server answers early and stops reading."""
    hdrs = dict(headers or {})
    if tus_header:
        hdrs.setdefault("Tus-Resumable", TUS)
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    conn = server.connection(timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if method in ("POST", "PATCH") or body:
            hdrs.setdefault("Content-Length", str(len(body)))
        for key, value in hdrs.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # answered and closed before the body was read: read that answer
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def create(
    server: Server,
    token: str,
    name: str,
    length: int,
    body: bytes | None = None,
    extra: dict[str, str] | None = None,
) -> Response:
    headers = {"Upload-Length": str(length), "Upload-Metadata": metadata(name), **(extra or {})}
    if body is not None:
        headers.setdefault("Content-Type", OFFSET_TYPE)
    return send(server, "POST", "/tus", token, headers, body or b"")


def create_path(server: Server, token: str, name: str, length: int, body: bytes | None = None) -> str:
    """Create an upload and return the path of its URL."""
    resp = create(server, token, name, length, body)
    assert resp.status == 201, (resp.status, resp.body)
    location = resp.headers["Location"]
    assert location.startswith(server.url + "/tus/"), location
    return urlsplit(location).path


def patch(
    server: Server, token: str, path: str, offset: int, body: bytes, extra: dict[str, str] | None = None
) -> Response:
    headers = {"Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE, **(extra or {})}
    return send(server, "PATCH", path, token, headers, body)


def offset_of(server: Server, token: str, path: str) -> int:
    resp = send(server, "HEAD", path, token)
    assert resp.status == 200, resp.status
    assert resp.headers["Cache-Control"].startswith("no-store")
    return int(resp.headers["Upload-Offset"])


def assert_patched(resp: Response, offset: int) -> None:
    assert resp.status == 204, (resp.status, resp.body)
    assert resp.headers["Tus-Resumable"] == TUS
    assert resp.headers["Upload-Offset"] == str(offset)
    assert_expires_in_future(resp)


def assert_expires_in_future(resp: Response) -> None:
    expires = email.utils.parsedate_to_datetime(resp.headers["Upload-Expires"]).timestamp()
    assert time.time() < expires < time.time() + 366 * 86400


def assert_error(resp: Response, status: int) -> None:
    """The one error shape, and the tus version on every /tus answer."""
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    body = resp.json()
    assert set(body) == {"message", "status"} and body["status"] == status, body
    assert resp.headers["Tus-Resumable"] == TUS


def listing(server: Server, token: str) -> dict[str, dict[str, Any]]:
    resp = server.request("GET", "/files", token=token)
    assert resp.status == 200, resp.body
    return {entry["filename"]: entry for entry in resp.json()["files"]}


def assert_stored(server: Server, token: str, name: str, data: bytes) -> None:
    """The upload is an ordinary file: listed with its size and SHA-256, and downloads intact."""
    entry = listing(server, token)[name]
    assert (entry["size"], entry["sha256"]) == (len(data), sha256_hex(data))
    resp = server.request("GET", "/download/" + quote(name, safe=""), token=token)
    assert resp.status == 200, resp.body[:200]
    assert resp.body == data
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert resp.headers["Repr-Digest"] == f"sha-256=:{digest}:"


def query(server: Server, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    uri = f"file:{quote(str(server.db_path))}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def user_id(server: Server, username: str) -> int:
    return int(query(server, "SELECT id FROM users WHERE username = ?", (username,))[0][0])


def staged(server: Server, owner: int) -> tuple[int, int]:
    """(STAGED rows of the owner, segments of those rows)."""
    rows = query(server, "SELECT COUNT(*) FROM files WHERE owner = ? AND state = ?", (owner, STAGED))
    segs = query(
        server,
        "SELECT COUNT(*) FROM segments s JOIN files f ON f.file_id = s.file_id"
        " WHERE f.owner = ? AND f.state = ?",
        (owner, STAGED),
    )
    return int(rows[0][0]), int(segs[0][0])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.05)


def open_tls(server: Server) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return server.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1")


def hang_up(sock: ssl.SSLSocket) -> None:
    """Close the sending side (the server reads all that was sent, then end of stream) and wait
    for the server to close: unlike a bare close, no reset can throw away bytes in flight."""
    sock.shutdown(socket.SHUT_WR)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass


def tus_client(server: Server, token: str, monkeypatch: pytest.MonkeyPatch) -> tus.TusClient:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert))  # requests verifies the real cert
    return tus.TusClient(server.url + "/tus", headers={"Authorization": "Bearer " + token})


# --------------------------------------------------------------------------- tuspy, the real client


def open_source(tmp_path: Path) -> BinaryIO:
    """BIG as a file on disk, opened for tuspy. A stream, not ``file_path``: tuspy 1.1.0 opens
    ``file_path`` anew for every request and never closes it (ResourceWarning)."""
    source = tmp_path / "big.bin"
    if not source.exists():
        source.write_bytes(BIG)
    return source.open("rb")


BIG = payload(int(3.5 * MiB))


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "sha1-checksum"])
def test_tuspy_uploads_in_chunks_and_the_file_downloads_intact(
    server: Server, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checksum: bool
) -> None:
    with open_source(tmp_path) as source:
        uploader = tus_client(server, token, monkeypatch).uploader(
            file_stream=source,
            chunk_size=1_000_000,
            metadata={"filename": "big.bin"},
            upload_checksum=checksum,
        )
        uploader.upload()
    assert uploader.offset == len(BIG)
    assert_stored(server, token, "big.bin", BIG)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_tuspy_resumes_after_a_server_restart_with_the_right_sha256(
    fresh_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int
) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    client = tus_client(server, token, monkeypatch)
    with open_source(tmp_path) as source:
        first = client.uploader(file_stream=source, chunk_size=1_000_000, metadata={"filename": "big.bin"})
        first.upload(stop_at=2_000_000)  # two chunks; the offset is inside segment 1
    assert first.offset == 2_000_000
    url = first.url

    server.stop(sig)
    server.start()

    with open_source(tmp_path) as source:
        second = client.uploader(url=url, file_stream=source, chunk_size=1_000_000)
        assert second.offset == 2_000_000  # learnt from the server with HEAD
        second.upload()
    assert second.offset == len(BIG)
    assert_stored(server, token, "big.bin", BIG)


# --------------------------------------------------------------------------- discovery and creation


def test_options_advertises_version_extensions_max_size_and_checksums_without_auth(server: Server) -> None:
    for path in ("/tus", "/tus/", "/tus/someid"):
        resp = send(server, "OPTIONS", path, None, tus_header=False)
        assert resp.status in (200, 204), (path, resp.status)
        assert resp.headers["Tus-Resumable"] == TUS
        assert resp.headers["Tus-Version"] == TUS
        extensions = resp.headers["Tus-Extension"].split(",")
        for extension in ("creation", "creation-with-upload", "termination", "expiration", "checksum"):
            assert extension in extensions
        assert int(resp.headers["Tus-Max-Size"]) > 0
        assert {"sha256", "sha1"} <= set(resp.headers["Tus-Checksum-Algorithm"].split(","))


def test_create_returns_location_offset_zero_and_expiry(server: Server, token: str) -> None:
    resp = create(server, token, "new.bin", 10)
    assert resp.status == 201, resp.body
    assert resp.headers["Upload-Offset"] == "0"
    assert resp.headers["Tus-Resumable"] == TUS
    assert_expires_in_future(resp)
    path = urlsplit(resp.headers["Location"]).path
    head = send(server, "HEAD", path, token)
    assert head.status == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "10"
    assert head.headers["Upload-Metadata"] == metadata("new.bin")
    assert_expires_in_future(head)
    assert "new.bin" not in listing(server, token)  # not a file until its last byte


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0.1"])
def test_request_without_supported_tus_resumable_is_412_with_tus_version(
    server: Server, token: str, version: str | None
) -> None:
    headers = {"Upload-Length": "10", "Upload-Metadata": metadata("v.bin")}
    if version is not None:
        headers["Tus-Resumable"] = version
    resp = send(server, "POST", "/tus", token, headers, tus_header=False)
    assert_error(resp, 412)
    # tus 1.0.0: the 412 MUST carry Tus-Version so the client can see what is supported.
    assert resp.headers.get("Tus-Version") == TUS


def test_head_and_patch_without_tus_resumable_are_412(server: Server, token: str) -> None:
    path = create_path(server, token, "v.bin", 10)
    resp = send(server, "HEAD", path, token, tus_header=False)
    assert resp.status == 412
    resp = send(
        server,
        "PATCH",
        path,
        token,
        {"Upload-Offset": "0", "Content-Type": OFFSET_TYPE},
        b"x",
        tus_header=False,
    )
    assert_error(resp, 412)
    assert offset_of(server, token, path) == 0


def test_tus_requests_without_token_are_401(server: Server, token: str) -> None:
    resp = send(
        server, "POST", "/tus", None, {"Upload-Length": "10", "Upload-Metadata": metadata("x.bin")}, b""
    )
    assert_error(resp, 401)
    path = create_path(server, token, "x.bin", 10)
    assert send(server, "HEAD", path, None).status == 401
    anon_patch = {"Upload-Offset": "0", "Content-Type": OFFSET_TYPE}
    assert_error(send(server, "PATCH", path, None, anon_patch, b"0123456789"), 401)
    assert_error(send(server, "DELETE", path, None), 401)
    assert offset_of(server, token, path) == 0


@pytest.mark.parametrize(
    "name",
    ["r\u00e9sum\u00e9 \u65e5\u672c.txt", "with space.bin", "a" * 200 + ".bin"],
    ids=["unicode", "space", "long"],
)
def test_upload_keeps_the_name_from_metadata(server: Server, token: str, name: str) -> None:
    data = payload(1234)
    path = create_path(server, token, name, len(data))
    assert_patched(patch(server, token, path, 0, data), len(data))
    assert_stored(server, token, name, data)


def test_metadata_with_several_pairs_and_a_key_without_value_is_accepted(server: Server, token: str) -> None:
    meta = f"{metadata('meta.bin')},filetype {b64(b'application/pdf')},is_confidential"
    resp = send(server, "POST", "/tus", token, {"Upload-Length": "3", "Upload-Metadata": meta})
    assert resp.status == 201, resp.body
    path = urlsplit(resp.headers["Location"]).path
    assert send(server, "HEAD", path, token).headers["Upload-Metadata"] == meta
    assert_patched(patch(server, token, path, 0, b"pdf"), 3)
    assert_stored(server, token, "meta.bin", b"pdf")


@pytest.mark.parametrize(
    "headers",
    [
        {"Upload-Metadata": metadata("a.bin")},  # no Upload-Length
        {"Upload-Length": "-1", "Upload-Metadata": metadata("a.bin")},
        {"Upload-Length": "ten", "Upload-Metadata": metadata("a.bin")},
        {"Upload-Length": "10"},  # no file name
        {"Upload-Length": "10", "Upload-Metadata": "type " + b64(b"text/plain")},
        {"Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"},
        {"Upload-Length": "10", "Upload-Metadata": metadata("a/b")},
        {"Upload-Length": "10", "Upload-Metadata": metadata("..")},
        {"Upload-Length": "10", "Upload-Metadata": metadata("")},
        {"Upload-Length": "10", "Upload-Metadata": "filename " + b64(b"\xff\xfe.bin")},
        {"Upload-Defer-Length": "1", "Upload-Metadata": metadata("a.bin")},
    ],
    ids=[
        "no-length",
        "negative-length",
        "text-length",
        "no-metadata",
        "no-filename",
        "filename-not-base64",
        "filename-with-slash",
        "filename-dotdot",
        "filename-empty",
        "filename-not-utf8",
        "defer-length",
    ],
)
def test_create_with_bad_length_or_filename_is_400_and_stores_nothing(
    server: Server, user: tuple[str, str], headers: dict[str, str]
) -> None:
    username, token = user
    resp = send(server, "POST", "/tus", token, headers)
    assert_error(resp, 400)
    assert "Location" not in resp.headers
    assert staged(server, user_id(server, username)) == (0, 0)


def test_upload_length_over_the_max_file_size_is_413(fresh_server: Server) -> None:
    fresh_server.env = {"VAULT_MAX_FILE_SIZE": "1000"}
    server = fresh_server.start()
    username, token = server.new_user()
    options = send(server, "OPTIONS", "/tus", None, tus_header=False)
    assert options.headers["Tus-Max-Size"] == "1000"
    assert_error(create(server, token, "big.bin", 1001), 413)
    assert_error(create(server, token, "big.bin", 10**18), 413)
    assert staged(server, user_id(server, username)) == (0, 0)
    data = payload(1000)
    path = create_path(server, token, "max.bin", 1000)  # exactly the limit is fine
    assert_patched(patch(server, token, path, 0, data), 1000)
    assert_stored(server, token, "max.bin", data)


# --------------------------------------------------------------------------- appending


def test_creation_with_upload_stores_the_first_bytes_and_patch_finishes(server: Server, token: str) -> None:
    data = payload(2 * S + 300)
    resp = create(server, token, "cwu.bin", len(data), body=data[: S + 17])
    assert resp.status == 201, resp.body
    assert resp.headers["Upload-Offset"] == str(S + 17)
    path = urlsplit(resp.headers["Location"]).path
    assert offset_of(server, token, path) == S + 17
    resp = patch(server, token, path, S + 17, data[S + 17 :])
    assert_patched(resp, len(data))
    assert_stored(server, token, "cwu.bin", data)
    assert send(server, "HEAD", path, token).status == 404  # a finished upload is a file now


def test_creation_with_the_whole_body_completes_at_once(server: Server, token: str) -> None:
    data = payload(5000)
    resp = create(server, token, "whole.bin", len(data), body=data)
    assert resp.status == 201, resp.body
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert resp.json()["sha256"] == sha256_hex(data)
    assert_stored(server, token, "whole.bin", data)


def test_creation_with_upload_of_wrong_content_type_is_415(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    resp = create(server, token, "ct.bin", 10, body=b"0123456789", extra={"Content-Type": "text/plain"})
    assert_error(resp, 415)
    assert "ct.bin" not in listing(server, token)
    assert staged(server, user_id(server, username)) == (0, 0)


def test_patches_of_odd_sizes_at_unaligned_offsets_end_byte_identical(server: Server, token: str) -> None:
    sizes = [1, S - 1, S + 1, 7, 16, 4095, S, 1]
    data = payload(sum(sizes) + 123)
    path = create_path(server, token, "odd.bin", len(data))
    offset = 0
    for size in [*sizes, 123]:
        resp = patch(server, token, path, offset, data[offset : offset + size])
        offset += size
        assert_patched(resp, offset)
        if offset < len(data):
            assert offset_of(server, token, path) == offset
    assert_stored(server, token, "odd.bin", data)


def test_patch_of_zero_bytes_keeps_the_offset(server: Server, token: str) -> None:
    path = create_path(server, token, "zero-patch.bin", 10, body=b"abc")
    assert_patched(patch(server, token, path, 3, b""), 3)
    assert offset_of(server, token, path) == 3


@pytest.mark.parametrize("claimed", [0, 99, 101, 5000])
def test_patch_at_the_wrong_offset_is_409_and_changes_nothing(
    server: Server, token: str, claimed: int
) -> None:
    data = payload(300)
    path = create_path(server, token, "off.bin", len(data), body=data[:100])
    assert_error(patch(server, token, path, claimed, data[claimed : claimed + 50] or b"x"), 409)
    assert offset_of(server, token, path) == 100
    assert_patched(patch(server, token, path, 100, data[100:]), 300)
    assert_stored(server, token, "off.bin", data)


@pytest.mark.parametrize(
    "headers",
    [{"Upload-Offset": "0"}, {"Upload-Offset": "-1"}, {"Upload-Offset": "x"}],
    ids=["no-offset", "negative", "text"],
)
def test_patch_with_missing_or_bad_upload_offset_is_400(
    server: Server, token: str, headers: dict[str, str]
) -> None:
    path = create_path(server, token, "bad-off.bin", 10)
    headers = {**headers, "Content-Type": OFFSET_TYPE}
    if headers["Upload-Offset"] == "0":
        del headers["Upload-Offset"]
    assert_error(send(server, "PATCH", path, token, headers, b"0123456789"), 400)
    assert offset_of(server, token, path) == 0


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_patch_with_wrong_content_type_is_415(server: Server, token: str, content_type: str | None) -> None:
    path = create_path(server, token, "type.bin", 10)
    headers = {"Upload-Offset": "0"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert_error(send(server, "PATCH", path, token, headers, b"0123456789"), 415)
    assert offset_of(server, token, path) == 0


def test_patch_beyond_upload_length_is_400_and_keeps_the_offset(server: Server, token: str) -> None:
    data = payload(100)
    path = create_path(server, token, "over.bin", 100, body=data[:40])
    assert_error(patch(server, token, path, 40, data[40:] + b"!"), 400)
    assert offset_of(server, token, path) == 40
    assert_patched(patch(server, token, path, 40, data[40:]), 100)
    assert_stored(server, token, "over.bin", data)


def test_patch_beyond_upload_length_across_segments_keeps_the_offset(server: Server, token: str) -> None:
    data = payload(2 * S)
    path = create_path(server, token, "over2.bin", len(data), body=data[:10])
    assert_error(patch(server, token, path, 10, data[10:] + b"extra"), 400)
    assert offset_of(server, token, path) == 10
    assert_patched(patch(server, token, path, 10, data[10:]), len(data))
    assert_stored(server, token, "over2.bin", data)


def headers_only(
    server: Server, method: str, path: str, headers: dict[str, str], timeout: float = 5.0
) -> bytes:
    """Send a request's headers (announcing a body) and no body; the raw answer, or b"" if the
    server keeps waiting for the body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    with open_tls(server) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.settimeout(timeout)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                    break
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            pass
    return answer


@pytest.mark.parametrize(
    ("method", "extra"),
    [("PATCH", 1), ("PATCH", 2 * MiB), ("POST", 1)],
    ids=["patch-one-byte-over", "patch-megabytes-over", "creation-with-upload-one-byte-over"],
)
def test_body_declared_beyond_upload_length_is_refused_before_it_is_read(
    server: Server, token: str, method: str, extra: int
) -> None:
    path = create_path(server, token, "declared.bin", 100, body=b"a" * 10)
    headers = {"Tus-Resumable": TUS, "Authorization": f"Bearer {token}", "Content-Type": OFFSET_TYPE}
    if method == "PATCH":
        headers |= {"Upload-Offset": "10", "Content-Length": str(90 + extra)}
        target = path
    else:
        headers |= {"Upload-Length": "100", "Upload-Metadata": metadata("declared.bin")}
        headers["Content-Length"] = str(100 + extra)
        target = "/tus"
    answer = headers_only(server, method, target, headers)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.split(" ")[1:2] in (["400"], ["413"]), answer[:300]
    assert f"Tus-Resumable: {TUS}" in header_lines, answer[:300]  # on every tus answer
    assert set(json.loads(body)) == {"message", "status"}, answer[:300]  # the one error shape
    assert offset_of(server, token, path) == 10


# --------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_checksum_mismatch_is_460_and_discards_the_chunk(server: Server, token: str, algorithm: str) -> None:
    data = payload(S + 5000)
    path = create_path(server, token, f"sum-{algorithm}.bin", len(data), body=data[:1000])
    chunk = data[1000 : S + 10]
    wrong = hashlib.new(algorithm, chunk + b"?").digest()
    resp = patch(server, token, path, 1000, chunk, {"Upload-Checksum": f"{algorithm} {b64(wrong)}"})
    assert_error(resp, 460)
    assert offset_of(server, token, path) == 1000
    right = hashlib.new(algorithm, chunk).digest()
    resp = patch(server, token, path, 1000, chunk, {"Upload-Checksum": f"{algorithm} {b64(right)}"})
    assert_patched(resp, S + 10)
    rest = data[S + 10 :]
    digest = hashlib.new(algorithm, rest).digest()
    resp = patch(server, token, path, S + 10, rest, {"Upload-Checksum": f"{algorithm} {b64(digest)}"})
    assert_patched(resp, len(data))
    assert_stored(server, token, f"sum-{algorithm}.bin", data)


def test_checksum_mismatch_on_creation_with_upload_is_460_and_stores_nothing(
    server: Server, token: str
) -> None:
    data = payload(100)
    wrong = hashlib.sha256(b"something else").digest()
    resp = create(
        server, token, "cwu-sum.bin", 100, body=data, extra={"Upload-Checksum": "sha256 " + b64(wrong)}
    )
    assert_error(resp, 460)
    assert "cwu-sum.bin" not in listing(server, token)


@pytest.mark.parametrize(
    "checksum",
    ["sha512 " + b64(hashlib.sha512(b"0123456789").digest()), "sha256 notbase64!", "sha256 " + b64(b"short")],
)
def test_unsupported_or_malformed_checksum_is_400(server: Server, token: str, checksum: str) -> None:
    path = create_path(server, token, "sum-bad.bin", 10)
    assert_error(patch(server, token, path, 0, b"0123456789", {"Upload-Checksum": checksum}), 400)
    assert offset_of(server, token, path) == 0


# --------------------------------------------------------------------------- termination, owners


def test_delete_terminates_the_upload_and_frees_its_segments(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    path = create_path(server, token, "gone.bin", 3 * S, body=payload(S + 10))
    resp = send(server, "DELETE", path, token)
    assert resp.status == 204, resp.body
    assert resp.headers["Tus-Resumable"] == TUS
    assert_error(send(server, "DELETE", path, token), 404)
    assert send(server, "HEAD", path, token).status == 404
    assert_error(patch(server, token, path, S + 10, b"more"), 404)
    assert staged(server, user_id(server, username)) == (0, 0)
    assert "gone.bin" not in listing(server, token)


def test_another_users_upload_is_404_for_head_patch_and_delete(server: Server, token: str) -> None:
    path = create_path(server, token, "mine.bin", 100, body=b"x" * 10)
    _, other = server.new_user()
    assert send(server, "HEAD", path, other).status == 404
    assert_error(patch(server, other, path, 10, b"y" * 90), 404)
    assert_error(send(server, "DELETE", path, other), 404)
    assert offset_of(server, token, path) == 10
    assert "mine.bin" not in listing(server, other)


@pytest.mark.parametrize("upload_id", ["doesnotexist", "A" * 64])
def test_unknown_upload_id_is_404(server: Server, token: str, upload_id: str) -> None:
    assert send(server, "HEAD", "/tus/" + upload_id, token).status == 404
    assert_error(patch(server, token, "/tus/" + upload_id, 0, b"x"), 404)
    assert_error(send(server, "DELETE", "/tus/" + upload_id, token), 404)


def test_zero_length_upload_completes_at_creation_and_is_listed(server: Server, token: str) -> None:
    resp = create(server, token, "empty.bin", 0)
    assert resp.status == 201, resp.body
    assert resp.headers["Upload-Offset"] == "0"
    assert_stored(server, token, "empty.bin", b"")


def test_completed_upload_replaces_a_file_of_the_same_name(server: Server, token: str) -> None:
    assert server.put_file(token, "same.bin", b"old contents").status == 201
    data = payload(S + 1)
    path = create_path(server, token, "same.bin", len(data), body=data[:S])
    assert listing(server, token)["same.bin"]["sha256"] == sha256_hex(b"old contents")  # until complete
    assert_patched(patch(server, token, path, S, data[S:]), len(data))
    assert list(listing(server, token)) == ["same.bin"]
    assert_stored(server, token, "same.bin", data)


# --------------------------------------------------------------------------- interruption


def cut_off_patch(server: Server, token: str, path: str, offset: int, declared: int, body: bytes) -> None:
    """A PATCH that announces ``declared`` bytes, sends only ``body`` and hangs up."""
    assert len(body) < declared
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTus-Resumable: {TUS}\r\n"
        f"Authorization: Bearer {token}\r\nUpload-Offset: {offset}\r\nContent-Type: {OFFSET_TYPE}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    with open_tls(server) as sock:
        sock.sendall(head + body)
        hang_up(sock)


@pytest.mark.parametrize(
    "sent", [1, S - 300, 2 * S + 5000], ids=["one-byte", "to-a-segment-boundary", "two-segments-and-more"]
)
def test_patch_cut_off_mid_body_keeps_what_arrived_and_resumes_byte_identical(
    server: Server, token: str, sent: int
) -> None:
    data = payload(4 * S + 77)
    old = S + 300
    path = create_path(server, token, "cut.bin", len(data), body=data[:old])
    cut_off_patch(server, token, path, old, len(data) - old, data[old : old + sent])
    wait_for(lambda: offset_of(server, token, path) > old, "the interrupted PATCH's bytes to be saved")
    new = offset_of(server, token, path)
    assert old < new <= old + sent
    assert_patched(patch(server, token, path, new, data[new:]), len(data))
    assert_stored(server, token, "cut.bin", data)


def test_patch_with_checksum_cut_off_mid_body_keeps_nothing(server: Server, token: str) -> None:
    data = payload(3 * S)
    path = create_path(server, token, "cut-sum.bin", len(data), body=data[:500])
    digest = hashlib.sha256(data[500:]).digest()
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTus-Resumable: {TUS}\r\n"
        f"Authorization: Bearer {token}\r\nUpload-Offset: 500\r\nContent-Type: {OFFSET_TYPE}\r\n"
        f"Upload-Checksum: sha256 {b64(digest)}\r\nContent-Length: {len(data) - 500}\r\n\r\n"
    ).encode()
    with open_tls(server) as sock:
        sock.sendall(head + data[500 : S + 9000])
        hang_up(sock)

    # The offset must stay at 500: retry while the server may still be finishing the cut request.
    def resumed() -> bool:
        resp = patch(server, token, path, 500, data[500:])
        if resp.status == 409 and offset_of(server, token, path) == 500:
            return False  # still busy with the cut-off request
        assert_patched(resp, len(data))
        return True

    wait_for(resumed, "the cut-off request to be discarded")
    assert_stored(server, token, "cut-sum.bin", data)


def test_patch_cut_off_mid_body_leaves_no_request_hanging_until_shutdown(fresh_server: Server) -> None:
    """An interrupted request must end when its connection does. A handler that never ends keeps
    its buffers (up to a segment of plaintext) in memory until shutdown, which then reports it
    as a failed request."""
    server = fresh_server.start()
    _, token = server.new_user()
    data = payload(3 * S)
    path = create_path(server, token, "hang.bin", len(data), body=data[:100])
    cut_off_patch(server, token, path, 100, len(data) - 100, data[100 : S + 500])
    wait_for(lambda: offset_of(server, token, path) > 100, "the interrupted PATCH's bytes to be saved")
    server.stop()
    assert server.process is not None and server.process.returncode == 0
    log = server.output()
    assert "500 PATCH" not in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]


def test_server_stopped_during_a_patch_keeps_what_arrived(fresh_server: Server) -> None:
    """SIGTERM while a PATCH is mid-body: once the grace period is over, shutdown lets the
    interrupted request save what it received before the database closes, so the offset
    survives the restart."""
    fresh_server.env["VAULT_SHUTDOWN_GRACE"] = "1"
    server = fresh_server.start()
    username, token = server.new_user()
    data = payload(4 * S)
    path = create_path(server, token, "stopped.bin", len(data))
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTus-Resumable: {TUS}\r\n"
        f"Authorization: Bearer {token}\r\nUpload-Offset: 0\r\nContent-Type: {OFFSET_TYPE}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with open_tls(server) as sock:
        sock.sendall(head + data[: 2 * S + 1234])
        wait_for(lambda: len(query(server, "SELECT 1 FROM segments")) >= 2, "two segments to be stored")
        server.stop()  # SIGTERM with the connection still open
    assert server.process is not None and server.process.returncode == 0
    assert "Cannot operate on a closed database" not in server.output()
    server.start()
    login = {"username": username, "password": "correct horse battery"}
    token = server.request("POST", "/login", login).json()["token"]
    offset = offset_of(server, token, path)
    assert offset >= 2 * S
    assert_patched(patch(server, token, path, offset, data[offset:]), len(data))
    assert_stored(server, token, "stopped.bin", data)


# --------------------------------------------------------------------------- expiry


def test_expired_upload_is_404_and_purged_at_start_up(fresh_server: Server) -> None:
    server = fresh_server.start()
    username, token = server.new_user()
    path = create_path(server, token, "late.bin", 3 * S, body=payload(S + 99))
    tus_id = path.rsplit("/", 1)[1]
    (file_id,) = query(server, "SELECT file_id FROM files WHERE tus_id = ?", (tus_id,))[0]
    assert query(server, "SELECT COUNT(*) FROM segments WHERE file_id = ?", (file_id,))[0][0] == 1

    with closing(sqlite3.connect(server.db_path, timeout=10, factory=Edits)) as db, db:
        db.execute("UPDATE files SET expires = ? WHERE tus_id = ?", (time.time() - 60, tus_id))
    assert send(server, "HEAD", path, token).status == 404
    assert_error(patch(server, token, path, S + 99, b"late"), 404)

    server.stop()
    server.start()  # start-up purges expired uploads
    assert query(server, "SELECT COUNT(*) FROM files WHERE file_id = ? OR tus_id = ?", (file_id, tus_id)) == [
        (0,)
    ]
    assert query(server, "SELECT COUNT(*) FROM segments WHERE file_id = ?", (file_id,)) == [(0,)]
    assert staged(server, user_id(server, username)) == (0, 0)


# --------------------------------------------------------------------------- at rest

MARKER = b"<<vault tus plaintext marker: this must never reach the disk!!>>"


def test_partial_upload_leaves_no_plaintext_in_the_database(fresh_server: Server) -> None:
    assert len(MARKER) == 64
    server = fresh_server.start()
    _, token = server.new_user()
    data = MARKER * (3 * S // 64)
    path = create_path(server, token, "secret.bin", len(data), body=data[: S // 2 + 3])
    assert_patched(patch(server, token, path, S // 2 + 3, data[S // 2 + 3 : S + 4099]), S + 4099)
    # Segment 0 is sealed; 4099 bytes of segment 1 wait in the tail between requests.
    assert offset_of(server, token, path) == S + 4099
    found, on_disk = [], 0
    for file in sorted(server.data_dir.glob("vault.db*")):
        content = file.read_bytes()
        on_disk += len(content)
        if MARKER in content or MARKER[:32] in content or MARKER[32:] in content:
            found.append(file.name)
    assert on_disk > S  # the sealed segment is there, only not readable
    assert found == []
