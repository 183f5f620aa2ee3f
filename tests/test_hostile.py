"""Hostile and careless clients (issue 10): bad input is a 4xx with the JSON error, never a
500; one-time links answer HEAD like GET; tus clients that can only POST still append."""

import asyncio
import base64
import inspect
import json
import os
import socket
import sqlite3
import ssl
import struct
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests import incore
from tests.marks import needs_curl
from tests.server import Response, Server
from vault.auth import Identity
from vault.errors import InvalidFilename
from vault.names import check_new_filename

T = {"Tus-Resumable": "1.0.0"}


def raw(server: Server, request: bytes, timeout: float = 30) -> bytes:
    """Send bytes exactly as given over TLS; return everything the server answers."""
    context = server.ssl_context()
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            chunks = []
            while True:
                try:
                    data = tls.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not data:
                    break
                chunks.append(data)
    return b"".join(chunks)


def head_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def json_error(answer: bytes, status: int) -> None:
    assert head_line(answer).startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert b'"status": %d' % status in answer and b'"message": ' in answer


@pytest.mark.parametrize(
    ("range_header", "status"),
    [
        ("bytes=" + "9" * 5000 + "-", 416),
        ("bytes=0-" + "9" * 5000, 206),
        ("bytes=-" + "9" * 5000, 206),
        ("bytes=" + "1" * 5000 + "-" + "2" * 5000, 416),
        ("bytes=\u00b2-", 200),  # not ASCII digits: ignored, like any malformed Range
    ],
)
def test_ranges_with_thousands_of_digits_are_answered_not_500(
    server: Server, token: str, range_header: str, status: int
) -> None:
    assert server.put_file(token, "digits.bin", b"0123456789").status == 201
    conn = server.connection()
    try:
        conn.putrequest("GET", "/download/digits.bin")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Range", range_header.encode("latin-1"))
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == status, body[:200]
    if status == 206:
        assert body == b"0123456789"


@pytest.mark.parametrize("path", ["/upload/x.bin", "/login", "/register", "/tus"])
@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "1" * 5000, "-1", "+1", "1 2"])
def test_a_content_length_that_is_not_plain_digits_is_400(
    server: Server, token: str, path: str, value: str
) -> None:
    method = "PUT" if path.startswith("/upload") else "POST"
    tus = "Tus-Resumable: 1.0.0\r\nUpload-Length: 1\r\nUpload-Metadata: filename eA==\r\n"
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"{tus if path == '/tus' else ''}"
        f"Content-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {value}\r\n\r\nx"
    ).encode()
    json_error(raw(server, request), 400)


@pytest.mark.parametrize("path", ["/register", "/login"])
@pytest.mark.parametrize("field", ["username", "password"])
def test_a_lone_surrogate_in_json_is_400(server: Server, path: str, field: str) -> None:
    fields = {"username": "u" + uuid.uuid4().hex[:8], "password": "correct horse battery"}
    body = f'{{"{field}": "ab\\ud800cdefghij", '
    other = "password" if field == "username" else "username"
    body += f'"{other}": "{fields[other]}"}}'
    resp = server.request("POST", path, body, {"Content-Type": "application/json"})
    assert resp.status == 400, resp.body
    assert resp.json()["status"] == 400 and "surrogate" in resp.json()["message"]


def audit_rows(server: Server) -> list[tuple[str, str, str]]:
    with sqlite3.connect(server.db_path) as con:
        return con.execute("SELECT action, target, outcome FROM audit ORDER BY seq").fetchall()


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [("GET", "/download/%FF%FE.txt", "download"), ("DELETE", "/files/%C3%28", "delete")],
)
def test_invalid_utf8_in_an_audited_path_is_400_and_audited(
    fresh_server: Server, method: str, path: str, action: str
) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    resp = server.request(method, path, token=token)
    assert resp.status == 400, resp.body
    assert resp.json()["status"] == 400
    deadline = time.monotonic() + 10
    while (action, "[not UTF-8]", "400") not in audit_rows(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (action, "[not UTF-8]", "400") in audit_rows(server)
    assert "Traceback" not in server.output()


def one_time_link(server: Server, token: str, data: bytes) -> str:
    name = f"once-{uuid.uuid4().hex[:6]}.bin"
    assert server.put_file(token, name, data).status == 201
    resp = server.request("POST", f"/files/{name}/links", {"max_downloads": 1}, token=token)
    assert resp.status == 201
    return "/s/" + str(resp.json()["url"]).rsplit("/", 1)[1]


@pytest.mark.parametrize("size", [0, 1, 1000])
def test_head_on_a_used_up_one_time_link_is_410_like_get(server: Server, token: str, size: int) -> None:
    path = one_time_link(server, token, b"x" * size)
    assert server.request("HEAD", path).status == 200  # HEAD costs nothing
    assert server.request("HEAD", path).status == 200
    first = server.request("GET", path)
    assert (first.status, len(first.body)) == (200, size)
    assert server.request("GET", path).status == 410
    head = server.request("HEAD", path)
    assert head.status == 410


def tus_create(server: Server, token: str, data: bytes) -> str:
    meta = "filename " + base64.b64encode(f"o-{uuid.uuid4().hex[:6]}.bin".encode()).decode()
    headers = {**T, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    resp = server.request("POST", "/tus", headers=headers, token=token)
    assert resp.status == 201, resp.body
    return "/tus/" + resp.headers["Location"].rsplit("/", 1)[1]


def test_tus_x_http_method_override_patch_appends(server: Server, token: str) -> None:
    data = b"override me"
    path = tus_create(server, token, data)
    headers = {
        **T,
        "X-HTTP-Method-Override": "PATCH",
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
    }
    resp: Response = server.request("POST", path, data, headers=headers, token=token)
    assert resp.status == 204, resp.body
    assert resp.headers["Upload-Offset"] == str(len(data))
    files = server.request("GET", "/files", token=token).json()["files"]
    assert any(f["size"] == len(data) for f in files)


def test_tus_x_http_method_override_delete_terminates(server: Server, token: str) -> None:
    path = tus_create(server, token, b"abc")
    resp = server.request("POST", path, headers={**T, "X-HTTP-Method-Override": "DELETE"}, token=token)
    assert resp.status == 204, resp.body
    assert server.request("HEAD", path, headers=T, token=token).status == 404


def test_a_post_to_an_upload_without_override_is_still_405(server: Server, token: str) -> None:
    path = tus_create(server, token, b"abc")
    resp = server.request("POST", path, headers={**T, "X-HTTP-Method-Override": "GET"}, token=token)
    assert resp.status == 405
    assert resp.json()["status"] == 405


@pytest.mark.parametrize(
    ("method", "suffix", "status"),
    [("PUT", "", 405), ("DELETE", "", 405), ("GET", "/more", 404), ("GET", "%FF", 404)],
)
def test_link_secrets_are_masked_in_every_log_line(
    fresh_server: Server, method: str, suffix: str, status: int
) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    path = one_time_link(server, token, b"secret stuff")
    secret = path.removeprefix("/s/")
    resp = server.request(method, path + suffix, b"x" if method != "GET" else None)
    assert resp.status == status
    server.stop()  # every line written
    output = server.output()
    assert f"{status} {method} /s/[secret]" in output  # the request was logged
    assert secret not in output


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Pad": "a" * 20_000},
        {f"X-Pad-{n}": "b" * 1000 for n in range(17)},
        {"Cookie": "c" * 40_000},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/health"), ("PUT", "/upload/big.bin"), ("POST", "/login")]
)
def test_oversized_request_headers_are_431_with_the_json_error(
    server: Server, headers: dict[str, str], method: str, path: str
) -> None:
    resp = server.request(method, path, b"x" if method != "GET" else None, headers=headers)
    assert resp.status == 431
    assert resp.json() == {"message": "Request header fields too large: the limit is 16 KiB", "status": 431}


def test_headers_just_under_the_limit_are_served(server: Server) -> None:
    resp = server.request("GET", "/health", headers={"X-Pad": "a" * 15_000})
    assert (resp.status, resp.json()) == (200, {"status": "ok"})


@needs_curl
def test_the_generated_certificate_is_a_leaf_that_curl_trusts(server: Server) -> None:
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    done = subprocess.run(
        ["curl", "-sS", "--cacert", str(server.cert), f"https://127.0.0.1:{server.port}/health"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, b'{"status": "ok"}'), done.stderr


BLANK_NAMES = [
    " ",
    "   ",
    "\u200b",
    "\ufeff",
    "\u200b\ufeff",
    "\u3000",
    "\u00a0",
    "\u2800",
    "\u3164",
    " \u200b ",
    "\u0301",
]


@pytest.mark.parametrize("name", BLANK_NAMES)
def test_names_made_only_of_invisible_characters_are_refused(server: Server, token: str, name: str) -> None:
    with pytest.raises(InvalidFilename):
        check_new_filename(name)
    resp = server.put_file(token, name, b"invisible")
    assert resp.status == 400 and resp.json()["message"].startswith("Invalid filename")
    meta = "filename " + base64.b64encode(name.encode()).decode()
    tus = server.request(
        "POST", "/tus", headers={**T, "Upload-Length": "1", "Upload-Metadata": meta}, token=token
    )
    assert tus.status == 400
    names = [f["filename"] for f in server.request("GET", "/files", token=token).json()["files"]]
    assert name not in names


@pytest.mark.parametrize("name", ["a\u200b", " x ", "\u200bb", "e\u0301"])
def test_names_with_one_visible_character_are_accepted(name: str) -> None:
    assert check_new_filename(name)


def test_downloads_are_sandboxed(server: Server, token: str) -> None:
    page = b"<script>alert(document.cookie)</script>"
    for name in ("page.html", "image.svg", "code.js", "plain.txt"):
        assert server.put_file(token, name, page).status == 201
        resp = server.request("GET", "/download/" + name, token=token)
        assert resp.status == 200 and resp.body == page
        assert resp.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    path = one_time_link(server, token, page)
    assert server.request("GET", path).headers["Content-Security-Policy"] == "sandbox; default-src 'none'"


def test_a_link_created_while_its_file_is_deleted_does_not_serve_the_next_upload(
    fresh_server: Server,
) -> None:
    """The link's password is hashed (bcrypt, slow) after the file was found; the file is
    deleted meanwhile. The link must not come to life for the next upload of that name."""
    fresh_server.env["VAULT_BCRYPT_ROUNDS"] = "12"
    server = fresh_server.start()
    _, token = server.new_user()
    assert server.put_file(token, "doomed.txt", b"old").status == 201
    creator, deleter = server.connection(), server.connection()
    creator.connect()
    deleter.connect()
    try:
        body = b'{"password": "open sesame 42"}'
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        creator.request("POST", "/files/doomed.txt/links", body, headers)
        deleter.request("DELETE", "/files/doomed.txt", headers=headers)
        deleted = deleter.getresponse()
        deleted.read()
        created = creator.getresponse()
        answer = created.read()
    finally:
        creator.close()
        deleter.close()
    assert deleted.status == 200
    assert server.put_file(token, "doomed.txt", b"new secret contents").status == 201
    if created.status == 201:  # only possible if the delete came first after all: then it is gone
        url = json.loads(answer)["url"]
        resp = server.request("GET", "/s/" + url.rsplit("/", 1)[1], headers=basic_auth("open sesame 42"))
        assert resp.status in (404, 410)
    else:
        assert (created.status, json.loads(answer)["message"]) == (404, "File not found")
    with sqlite3.connect(server.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM links").fetchone() == (0,)


def basic_auth(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f":{password}".encode()).decode()}


def cut_off_download(server: Server, path: str, keep: int, dest: Path, start: int = 0) -> int:
    """GET ``path`` (from byte ``start``) and hang up after ``keep`` body bytes, as a client
    that is killed does (what the server already pushed into the sockets is lost); append what
    arrived to ``dest``. Returns the status (and keeps nothing unless it is 200 or 206)."""
    context = server.ssl_context()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes={start}-\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536)
            status = int(data.split(b" ", 2)[1])
            if status not in (200, 206):
                return status
            while len(data.split(b"\r\n\r\n", 1)[1]) < keep:
                data += tls.recv(65536)
            with dest.open("ab") as out:
                out.write(data.split(b"\r\n\r\n", 1)[1][:keep])
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
    return status


def served(server: Server, path: str) -> int:
    with sqlite3.connect(server.db_path) as con:
        (count,) = con.execute("SELECT COUNT(*) FROM links").fetchone()
        assert count >= 1
        return sum(row[0] for row in con.execute("SELECT bytes_served FROM links"))


def wait_until_charged(server: Server, path: str, at_least: int) -> int:
    deadline = time.monotonic() + 30
    while served(server, path) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return served(server, path)


@needs_curl
def test_an_interrupted_one_time_download_resumes_to_completion_with_curl(
    fresh_server: Server, tmp_path: Path
) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    data = os.urandom(24 * 1024 * 1024 + 5)  # more than the sockets hold: the server is cut off
    path = one_time_link(server, token, data)
    partial = tmp_path / "partial.bin"
    partial.write_bytes(b"")
    for keep in (300_000, 3_000_000):  # cut off twice, each time with megabytes in flight
        charged = served(server, path)
        have = partial.stat().st_size
        assert cut_off_download(server, path, keep, partial, start=have) == 206
        wait_until_charged(server, path, charged + 1)
    have = partial.stat().st_size
    done = subprocess.run(
        ["curl", "-sS", "--cacert", str(server.cert), "-C", "-", "-o", str(partial), "-w", "%{http_code}",
         server.url + path],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"206"), (done.stderr, have)
    assert partial.read_bytes() == data
    assert server.request("GET", path).status == 410  # and that was the one download


def test_restarting_cut_off_downloads_never_yields_more_than_the_budget(fresh_server: Server) -> None:
    """An attacker who takes nearly all of each response and claims to have nothing gets back
    at most the in-flight allowance over the link's life: N copies, the preview allowance and
    the in-flight allowance, and no more."""
    server = fresh_server.start()
    _, token = server.new_user()
    size = 2 * 1024 * 1024
    data = os.urandom(size)
    path = one_time_link(server, token, data)
    received = 0
    for _ in range(8):  # take almost everything, hang up, and ask again from byte 0
        charged = served(server, path)
        if cut_off_download(server, path, size - 1, Path(os.devnull)) == 410:
            break
        received += size - 1
        wait_until_charged(server, path, charged + 1)
    assert size - 1 <= received <= size + min(64 * 1024, size // 2) + min(16 * 1024 * 1024, size)
    assert server.request("GET", path).status == 410


def test_the_shared_listing_asks_the_store_the_same_however_many_files_and_grants(tmp_path: Path) -> None:
    """GET /shared was grants x the owner's files (300 shares: ~20 s of CPU): now one query for
    the grants with their files and one account read per owner, whatever the counts."""

    async def store_calls(files: int) -> tuple[int, int]:
        async with incore.core(tmp_path / f"shared{files}.db", bcrypt_rounds=4) as core:
            for name in ("alice", "bob"):
                await core.auth.register(name, "correct horse battery")
            alice, bob = [await core.auth.find_user(n) for n in ("alice", "bob")]
            assert alice is not None and bob is not None
            for n in range(files):
                upload = await core.files.begin_upload(alice.id, None)
                await upload.write(b"x" * n)
                await upload.finish(f"f{n}.txt")
                await core.sharing.grant(Identity(alice.id, "alice"), f"f{n}.txt", "bob")
            calls = 0
            for attr in dir(core.store):
                method = getattr(core.store, attr)
                if not attr.startswith("_") and inspect.iscoroutinefunction(method):

                    async def counted(*args: Any, _method: Any = method) -> Any:
                        nonlocal calls
                        calls += 1
                        return await _method(*args)

                    setattr(core.store, attr, counted)
            shared = await core.sharing.shared_with(Identity(bob.id, "bob"))
            return len(shared), calls

    few, many = asyncio.run(store_calls(3)), asyncio.run(store_calls(40))
    assert (few[0], many[0]) == (3, 40)
    assert few[1] == many[1] <= 3


def test_listings_paginate_with_limit_and_after_and_stay_whole_without(server: Server, token: str) -> None:
    names = [f"page{n:02}.txt" for n in range(7)]
    for name in names:
        assert server.put_file(token, name, b"p").status == 201
        assert server.request("POST", f"/files/{name}/links", {}, token=token).status == 201
    whole = server.request("GET", "/files", token=token).json()
    assert "next" not in whole and [f["filename"] for f in whole["files"]] == names
    for key, path in (("files", "/files"), ("links", "/links")):
        seen: list[Any] = []
        after = None
        while True:
            query = "?limit=3" + (f"&after={urllib.parse.quote(after)}" if after else "")
            page = server.request("GET", path + query, token=token).json()
            assert len(page[key]) <= 3
            seen += page[key]
            after = page["next"]
            if after is None:
                break
        assert seen == server.request("GET", path, token=token).json()[key]
    for bad in ("0", "1001", "-1", "x", "\u00b2"):
        resp = server.request("GET", "/files?limit=" + urllib.parse.quote(bad), token=token)
        assert resp.status == 400 and resp.json()["status"] == 400
