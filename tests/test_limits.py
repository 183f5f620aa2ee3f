"""Issue 6 limits: concurrent uploads per user (429) and stalled request bodies (408)."""

import asyncio
import json
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.marks import needs_curl
from tests.server import Server
from tests.test_api import user_id, wait_until_clean
from tests.test_transfers import cut, open_tls, start_upload, wait_for
from vault.errors import TooManyDownloads, TooManyUploads
from vault.limits import DOWNLOAD_KINDS, UPLOAD, DownloadSlots, UploadSlots
from vault.state import LocalState


def read_response(sock: ssl.SSLSocket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response (headers and a Content-Length body); status 0 if the server closed first."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, {}, data
            data += chunk
    except (ConnectionError, ssl.SSLError):
        return 0, {}, data
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def partial_put(server: Server, token: str, name: str) -> ssl.SSLSocket:
    """An upload whose prepare() has run (it holds its slot) and whose body has begun. Tornado
    sends "100 Continue" only once prepare() is done: that answer is the event waited for."""
    headers = {"Content-Length": "1000", "Expect": "100-continue"}
    sock = start_upload(server, token, "PUT", f"/upload/{name}", headers, b"")
    sock.settimeout(30)
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(1)
        assert chunk, f"closed before 100 Continue: {interim!r}"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    sock.sendall(b"x" * 10)
    return sock


def test_upload_slots_count_each_users_uploads_exactly() -> None:
    async def scenario() -> None:
        slots = UploadSlots(3)
        held = []
        for expected in (1, 2, 3):
            held.append(await slots.acquire(7))
            assert slots.in_progress(7) == expected
        other = await slots.acquire(8)
        assert (slots.in_progress(7), slots.in_progress(8), slots.in_progress(9)) == (3, 1, 0)
        with pytest.raises(TooManyUploads, match="^Too many uploads in progress: at most 3 at once$"):
            await slots.acquire(7)
        assert slots.in_progress(7) == 3  # a refused upload takes nothing
        for expected in (2, 1, 0):
            await slots.release(held.pop())
            assert slots.in_progress(7) == expected
        assert slots.in_progress(8) == 1 and slots.total() == 1  # another user's slots are their own
        await slots.release(other)
        await slots.release(other)  # one release too many neither fails nor gives an extra slot
        assert slots.in_progress(8) == 0
        for _ in range(3):
            await slots.acquire(7)
        with pytest.raises(TooManyUploads):
            await slots.acquire(7)

    asyncio.run(scenario())


def test_upload_slots_of_two_processes_on_one_state_count_together() -> None:
    async def scenario() -> None:
        state = LocalState()
        mine, theirs = UploadSlots(2, state), UploadSlots(2, state)
        held = await mine.acquire(7)
        assert await state.held(UPLOAD, "7") == 1
        other = await theirs.acquire(7)
        for slots in (mine, theirs):
            with pytest.raises(TooManyUploads):
                await slots.acquire(7)
        assert (mine.in_progress(7), theirs.in_progress(7), mine.total()) == (1, 1, 1)
        await theirs.release(other)
        assert await state.held(UPLOAD, "7") == 1
        await mine.release(await mine.acquire(7))
        await mine.release(held)
        assert await state.held(UPLOAD, "7") == 0

    asyncio.run(scenario())


def test_download_slots_of_two_processes_on_one_state_count_together_and_free_at_once() -> None:
    async def scenario() -> None:
        state = LocalState()
        mine = DownloadSlots(per_user=1, per_link=1, per_address=2, state=state)
        theirs = DownloadSlots(per_user=1, per_link=1, per_address=2, state=state)
        holds = await mine.acquire(user=7, link="L", address="2001:db8::1")
        held = [
            await state.held(DOWNLOAD_KINDS["user"], "7"),
            await state.held(DOWNLOAD_KINDS["link"], "L"),
            await state.held(DOWNLOAD_KINDS["address"], "2001:db8::/64"),
        ]
        assert held == [1, 1, 1]
        assert (mine.total(), theirs.total()) == (1, 0)  # one download, three holds
        with pytest.raises(TooManyDownloads, match="for this account"):
            await theirs.acquire(user=7, link=None, address="192.0.2.1")
        with pytest.raises(TooManyDownloads, match="through this link"):
            await theirs.acquire(user=8, link="L", address="192.0.2.1")
        await mine.release(holds)  # given back at once, the first time
        for kind, key in (("user", "7"), ("link", "L"), ("address", "2001:db8::/64")):
            assert await state.held(DOWNLOAD_KINDS[kind], key) == 0
        again = await theirs.acquire(user=7, link="L", address="2001:db8::2")
        assert (mine.total(), theirs.total()) == (0, 1)
        await theirs.release(again)

    asyncio.run(scenario())


def test_uploads_per_user_429_and_slots_free(fresh_server: Server) -> None:
    fresh_server.env = {"VAULT_UPLOADS_PER_USER": "2"}
    server = fresh_server.start()
    username, token = server.new_user()
    _, other = server.new_user()
    first, second = partial_put(server, token, "a.bin"), partial_put(server, token, "b.bin")
    resp = server.put_file(token, "c.bin", b"data")
    assert resp.status == 429, resp.body
    assert resp.json()["message"] == "Too many uploads in progress: at most 2 at once"
    assert resp.headers["Retry-After"]
    # tus with a body counts too; another user is not affected.
    tus = server.request(
        "POST",
        "/tus",
        b"data",
        {
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "4",
            "Upload-Metadata": "filename ZC5iaW4=",
            "Content-Type": "application/offset+octet-stream",
        },
        token=token,
    )
    assert tus.status == 429
    assert server.put_file(other, "c.bin", b"data").status == 201
    # One finishes: a slot frees.
    first.sendall(b"x" * 990)
    status, _, _ = read_response(first)
    assert status == 201
    first.close()
    assert server.put_file(token, "c.bin", b"data").status == 201
    # One disconnects mid-upload: its slot frees too, and nothing of it is stored.
    third = partial_put(server, token, "d.bin")
    assert server.put_file(token, "e.bin", b"data").status == 429
    cut(second)
    cut(third)
    # The count is back to zero: two uploads may run at once again.
    wait_for(lambda: server.put_file(token, "f.bin", b"data").status == 201, "a slot after disconnects")
    again = [partial_put(server, token, f"g{i}.bin") for i in range(2)]
    assert server.put_file(token, "h.bin", b"data").status == 429
    for sock in again:
        cut(sock)
    names = {f["filename"] for f in server.request("GET", "/files", token=token).json()["files"]}
    assert names == {"a.bin", "c.bin", "f.bin"}
    wait_until_clean(server, user_id(server, username))


def test_stalled_body_is_cut_off(fresh_server: Server) -> None:
    fresh_server.env = {"VAULT_BODY_TIMEOUT": "1"}
    server = fresh_server.start()
    username, token = server.new_user()
    started = time.monotonic()
    sock = partial_put(server, token, "stalled.bin")
    status, _, body = read_response(sock, timeout=10)
    elapsed = time.monotonic() - started
    sock.close()
    assert elapsed < 5
    assert status == 408, body  # nothing was answered yet: a clear error, then the close
    assert "timed out" in json.loads(body)["message"]
    # A stalled multipart upload too.
    sock = start_upload(
        server,
        token,
        "POST",
        "/upload",
        {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": "1000"},
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="m.bin"\r\n\r\nabc',
    )
    assert read_response(sock, timeout=10)[0] in (408, 0)
    sock.close()
    assert server.request("GET", "/files", token=token).json()["files"] == []
    wait_until_clean(server, user_id(server, username))
    # The slots were given back.
    assert server.put_file(token, "ok.bin", b"data").status == 201


def test_slow_steady_body_is_not_cut_off(fresh_server: Server) -> None:
    fresh_server.env = {"VAULT_BODY_TIMEOUT": "1"}
    server = fresh_server.start()
    _, token = server.new_user()
    sock = start_upload(server, token, "PUT", "/upload/slow.bin", {"Content-Length": "7"}, b"")
    for _ in range(7):  # a byte every 0.3 s: 2.1 s in all, more than body_timeout
        time.sleep(0.3)
        sock.sendall(b"s")
    status, _, body = read_response(sock)
    sock.close()
    assert status == 201, body
    assert json.loads(body)["size"] == 7


def test_idle_connection_without_request_is_closed(fresh_server: Server) -> None:
    fresh_server.env = {"VAULT_IDLE_TIMEOUT": "1"}
    server = fresh_server.start()
    sock = open_tls(server)
    sock.settimeout(10)
    started = time.monotonic()
    try:
        assert sock.recv(1) == b""
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    assert time.monotonic() - started < 5
    sock.close()


def partial_body(server: Server, method: str, path: str) -> ssl.SSLSocket:
    """An anonymous request that declares a 100-byte body and sends 10 bytes of it."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    sock = open_tls(server)
    sock.sendall((head + "Content-Length: 100\r\n\r\n").encode() + b'{"username"')
    return sock


def test_every_partial_body_is_cut_off_anonymous_included(fresh_server: Server) -> None:
    """body_timeout holds for every request body, not only uploads: JSON routes, public links and
    unknown paths answer 408 or close; nothing waits for the rest of the body."""
    fresh_server.env = {"VAULT_BODY_TIMEOUT": "1"}
    server = fresh_server.start()
    routes = [
        ("POST", "/login"),
        ("POST", "/register"),
        ("POST", "/token/refresh"),
        ("POST", "/s/" + "A" * 24),
        ("GET", "/s/" + "A" * 24),
        ("POST", "/no/such/path"),
        ("PUT", "/files"),
    ]
    sockets = [(route, partial_body(server, *route)) for route in routes for _ in range(5)]
    answers: dict[tuple[str, str], set[int]] = {}
    for route, sock in sockets:
        try:
            status = read_response(sock, timeout=30)[0]  # a timeout here: the body was still awaited
        finally:
            sock.close()
        answers.setdefault(route, set()).add(status)
    # 408, an error decided before the body (413: GET /s/... takes none), or closed: not held.
    assert all(statuses <= {408, 413, 0} for statuses in answers.values()), answers
    assert answers[("POST", "/login")] == {408}  # a handler that reads the body says why
    assert server.request("GET", "/health").status == 200


def whole_put(server: Server, token: str, name: str, size: int) -> tuple[int, bytes]:
    """A PUT that sends its whole body at once, without Expect: 100-continue, then reads the
    answer (0: the connection was reset or closed under it)."""
    head = (
        f"PUT /upload/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    sock = open_tls(server)
    try:
        sock.sendall(head.encode() + b"x" * size)
        status, _, body = read_response(sock, timeout=30)
    except (ConnectionError, ssl.SSLError):
        return 0, b""
    finally:
        sock.close()
    return status, body


def test_upload_refused_before_its_body_is_read_still_gets_its_answer(fresh_server: Server) -> None:
    """429 (uploads_per_user) and 413 (quota) are decided before the body is read; a client
    sending the body without waiting for 100 Continue must still read the answer, not a reset."""
    fresh_server.env = {"VAULT_UPLOADS_PER_USER": "1", "VAULT_USER_QUOTA": str(6 * 1024 * 1024)}
    server = fresh_server.start()
    _, token = server.new_user()
    held = partial_put(server, token, "held.bin")  # takes the only slot
    try:
        for _ in range(3):
            status, body = whole_put(server, token, "second.bin", 4 * 1024 * 1024)
            assert status == 429, body
            assert json.loads(body) == {"message": json.loads(body)["message"], "status": 429}
    finally:
        held.close()
    for _ in range(3):
        status, body = whole_put(server, token, "big.bin", 8 * 1024 * 1024)
        assert status == 413, body
        assert json.loads(body)["message"].startswith("Quota exceeded")
    assert server.put_file(token, "small.bin", b"fits").status == 201  # the connection state is clean


@needs_curl
@pytest.mark.parametrize("expect", ["100-continue", ""])
def test_curl_prints_the_413_with_and_without_expect(
    fresh_server: Server, tmp_path: Path, expect: str
) -> None:
    fresh_server.env = {"VAULT_USER_QUOTA": "1000000"}
    server = fresh_server.start()
    _, token = server.new_user()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (8 * 1024 * 1024))  # under DRAIN_LIMIT: never cut off mid-body
    for _ in range(4):
        done = subprocess.run(
            ["curl", "-sS", "--cacert", str(server.cert), "-H", f"Authorization: Bearer {token}",
             "-H", f"Expect: {expect}", "-T", str(big), "-w", "\n%{http_code}",
             f"{server.url}/upload/big.bin"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr  # not 55 (send failure) after a reset
        body, _, status = done.stdout.rpartition(b"\n")
        assert status == b"413"
        assert json.loads(body) == {
            "message": "Quota exceeded: 1000000 bytes of your quota are left",
            "status": 413,
        }
