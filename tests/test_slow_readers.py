"""Slow and stalled readers (issue 10 item 4), against the real TLS server: the decrypted
download segments of all downloads together stay under ``download_segments`` however many
clients stop reading, a download whose client takes nothing for ``send_timeout`` is closed, and
downloads are capped per user, per link and per address (429, Retry-After, slot given back)."""

import http.client
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dbedit import Edits
from tests.server import Response, Server
from tests.test_metrics import free_port, scrape, value
from tests.test_workers import from_both, worker_env

MiB = 1024 * 1024
STALLED = 200
BUDGET = 8  # download_segments of the memory test's server


def started(tmp: Path, **settings: int) -> tuple[Server, int]:
    port = free_port()
    env = {"VAULT_METRICS_PORT": str(port), **{f"VAULT_{k.upper()}": str(v) for k, v in settings.items()}}
    return Server(tmp, env=env).start(), port


def metric(port: int, series: str) -> float:
    return value(scrape(port), series)


def wait_for(condition: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    """Poll ``condition`` until it holds (the server offers no event to await); the deadline
    only turns a hang into a failure."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def open_request(server: Server, path: str, headers: dict[str, str]) -> ssl.SSLSocket:
    """A TLS connection that sent ``GET path`` and has read nothing of the answer. Its small
    receive buffer keeps what the kernel takes in for it small."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(60)
    raw.connect(("127.0.0.1", server.port))
    sock = server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_head(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Read until the response's headers are in: (status, headers, body bytes read with them)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed before the headers: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def read_rest(sock: ssl.SSLSocket) -> int:
    """Read to the end of the connection; the number of bytes read."""
    total = 0
    try:
        while chunk := sock.recv(MiB):
            total += len(chunk)
    except (ConnectionError, ssl.SSLError):
        pass
    return total


def memory(pid: int, field: str) -> int:
    """VmRSS or VmHWM (peak) of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def closing() -> Iterator[list[ssl.SSLSocket]]:
    socks: list[ssl.SSLSocket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_stalled_readers_keep_memory_bounded_and_the_server_answering(
    tmp_path: Path, closing: list[ssl.SSLSocket]
) -> None:
    server, port = started(
        tmp_path,
        download_segments=BUDGET,
        downloads_per_user=0,
        downloads_per_link=0,
        downloads_per_address=0,
    )
    try:
        _, token = server.new_user()
        big = os.urandom(8 * MiB)
        assert server.put_file(token, "big.bin", big).status == 201
        small = os.urandom(3 * MiB + 5)
        assert server.put_file(token, "small.bin", small).status == 201
        assert server.request("GET", "/download/small.bin", token=token).body == small  # warm
        pid = server.process.pid if server.process else 0
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        before = memory(pid, "VmRSS")
        print(f"RSS before {before / MiB:.0f} MiB")

        for _ in range(STALLED):
            closing.append(open_request(server, "/download/big.bin", bearer(token)))
        for sock in closing:  # every one of them was answered, and then read no further
            status, headers, _ = read_head(sock)
            assert status == 200 and headers["content-length"] == str(len(big))
        assert metric(port, "vault_downloads_in_progress") == STALLED

        # Meanwhile the server answers: /health, and a whole download (its segments wait
        # their turn in the budget, taken back from the readers that stopped).
        assert server.request("GET", "/health").status == 200
        assert server.request("GET", "/download/small.bin", token=token).body == small
        held = metric(port, "vault_download_segments_held")
        assert 0 <= held <= BUDGET
        peak = memory(pid, "VmHWM") - before
        print(f"peak RSS grew by {peak / MiB:.0f} MiB, held {held}")
        # Unbounded, each stalled reader held 5 segments (~1 GB for 200). Bounded: the
        # budget's segments (plaintext, plus the sealed blob while decrypting) and, per
        # connection, one 64 KiB piece, its TLS buffers and the request's objects.
        assert peak < 2 * BUDGET * MiB + STALLED * 256 * 1024, f"peak RSS grew by {peak / MiB:.0f} MiB"
        for sock in closing:
            sock.close()
        closing.clear()
        wait_for(lambda: metric(port, "vault_downloads_in_progress") == 0, "every stalled download ended")
        wait_for(lambda: metric(port, "vault_download_segments_held") == 0, "every segment given back")
    finally:
        server.stop()


def test_a_slow_reader_gets_every_byte_in_order(tmp_path: Path, closing: list[ssl.SSLSocket]) -> None:
    """A client reading in small steps behind a small receive buffer keeps the server's
    socket full: the body then goes out in turns, straight from the segment while the socket
    takes it (handlers/stream.py send_now) and a copied piece through Tornado when it does
    not; after a refused TLS write, OpenSSL resumes the records it began, so the retry must
    offer the same bytes. Whole files and ranges, byte for byte."""
    server, _ = started(tmp_path)
    try:
        _, token = server.new_user()
        data = os.urandom(3 * MiB + 5)
        assert server.put_file(token, "f.bin", data).status == 201
        for first, last in [(0, len(data) - 1), (MiB - 7, 2 * MiB + 100_000)]:
            sock = open_request(
                server, "/download/f.bin", {**bearer(token), "Range": f"bytes={first}-{last}"}
            )
            closing.append(sock)
            status, _, body = read_head(sock)
            assert status == 206
            chunks = [body]
            got = len(body)
            while got < last + 1 - first:
                chunk = sock.recv(4096)
                assert chunk, "closed before the end of the body"
                chunks.append(chunk)
                got += len(chunk)
            assert b"".join(chunks) == data[first : last + 1]
    finally:
        server.stop()


def test_send_timeout_closes_a_stalled_download_and_frees_it(
    tmp_path: Path, closing: list[ssl.SSLSocket]
) -> None:
    server, port = started(tmp_path, send_timeout=1)
    try:
        _, token = server.new_user()
        data = os.urandom(8 * MiB)
        assert server.put_file(token, "big.bin", data).status == 201
        sock = open_request(server, "/download/big.bin", bearer(token))
        closing.append(sock)
        status, _, body = read_head(sock)
        assert status == 200
        wait_for(lambda: metric(port, "vault_send_timeouts_total") == 1, "the send timeout")
        # Closed by the server: what was on the way arrives, then the end, short of the file.
        assert len(body) + read_rest(sock) < len(data)
        wait_for(lambda: metric(port, "vault_downloads_in_progress") == 0, "the download ended")
        assert metric(port, "vault_download_segments_held") == 0
        # A reader that keeps reading is never cut off, and the file was never harmed.
        assert server.request("GET", "/download/big.bin", token=token).body == data
        assert "send_timeout" in server.output()
    finally:
        server.stop()


def test_download_caps_answer_429_and_give_the_slot_back(
    tmp_path: Path, closing: list[ssl.SSLSocket]
) -> None:
    server, port = started(tmp_path, downloads_per_user=2, downloads_per_link=2, downloads_per_address=4)
    try:
        _, alice = server.new_user()
        _, bob = server.new_user()
        data = os.urandom(8 * MiB)
        assert server.put_file(alice, "big.bin", data).status == 201
        assert server.put_file(bob, "bob.bin", b"bob's").status == 201
        url = server.request("POST", "/files/big.bin/links", {}, token=alice).json()["url"]
        link = "/s/" + url.rsplit("/s/", 1)[1]

        def stall(path: str, headers: dict[str, str]) -> tuple[ssl.SSLSocket, int]:
            """A download answered 200 whose client then stops reading (and what it read)."""
            sock = open_request(server, path, headers)
            closing.append(sock)
            status, _, body = read_head(sock)
            assert status == 200
            return sock, len(body)

        def refused(path: str, token: str | None, why: str) -> None:
            resp = server.request("GET", path, token=token)
            assert resp.status == 429, resp.body
            assert resp.headers["Retry-After"] == "5"
            assert resp.json() == {"message": resp.json()["message"], "status": 429}
            assert why in resp.json()["message"]

        own = [stall("/download/big.bin", bearer(alice)) for _ in range(2)]
        refused("/download/big.bin", alice, "for this account")
        assert server.request("HEAD", "/download/big.bin", token=alice).status == 200  # no body, no slot
        shared = [stall(link, {}) for _ in range(2)]
        refused(link, None, "through this link")
        refused("/download/bob.bin", bob, "from this address")  # 4 in progress from 127.0.0.1
        assert metric(port, "vault_downloads_in_progress") == 4

        own[0][0].close()  # cut: its slot comes back
        wait_for(lambda: metric(port, "vault_downloads_in_progress") == 3, "the cut download ended")
        assert server.request("GET", "/download/bob.bin", token=bob).body == b"bob's"
        assert server.request("GET", "/download/big.bin", token=alice).body == data  # alice: 1 + 1

        sock, read = shared[0]
        assert read_rest_of(sock, len(data) - read)  # read to the end: the download ends
        wait_for(lambda: metric(port, "vault_downloads_in_progress") == 2, "the finished download ended")
        resp = server.request("GET", link)
        assert resp.status == 200 and resp.body == data
        assert metric(port, "vault_throttled_requests_total") == 3
    finally:
        server.stop()


def read_rest_of(sock: ssl.SSLSocket, length: int) -> bool:
    """Read a response whose headers were read, to its ``length`` body bytes."""
    got = 0
    while got < length:
        chunk = sock.recv(MiB)
        if not chunk:
            return False
        got += len(chunk)
    return True


def test_a_download_cut_for_damaged_data_ends_its_request(tmp_path: Path) -> None:
    """A segment failing its MAC after the headers went out cuts the connection; the request
    ends there (its slot, its memory, its place among the requests a stop waits for)."""
    server, port = started(tmp_path, shutdown_grace=1)
    try:
        _, token = server.new_user()
        data = os.urandom(3 * MiB + 5)
        assert server.put_file(token, "bad.bin", data).status == 201
        with sqlite3.connect(server.db_path, factory=Edits) as con:
            (file_id,) = con.execute("SELECT file_id FROM files WHERE name = 'bad.bin'").fetchone()
            (blob,) = con.execute(
                "SELECT data FROM segments WHERE file_id = ? AND idx = 2", (file_id,)
            ).fetchone()
            flipped = bytearray(blob)
            flipped[40] ^= 1
            con.execute(
                "UPDATE segments SET data = ? WHERE file_id = ? AND idx = 2", (bytes(flipped), file_id)
            )
        conn = server.connection()
        try:
            conn.request("GET", "/download/bad.bin", headers=bearer(token))
            resp = conn.getresponse()
            assert resp.status == 200
            with pytest.raises(http.client.IncompleteRead) as cut:
                resp.read()
            assert cut.value.partial == data[: 2 * MiB]
        finally:
            conn.close()
        wait_for(lambda: metric(port, "vault_downloads_in_progress") == 0, "the cut download ended")
        assert metric(port, "vault_download_segments_held") == 0
    finally:
        server.stop()
    assert "cutting off" not in server.output()  # no request was left in flight


def test_download_caps_hold_in_total_across_workers(tmp_path: Path, closing: list[ssl.SSLSocket]) -> None:
    """workers: 2: two downloads in progress (downloads_per_user: 2), whichever worker serves
    them, make both workers refuse a third; another user's download still goes through."""
    server = Server(tmp_path, env=worker_env(VAULT_DOWNLOADS_PER_USER="2", VAULT_USER_QUOTA="0")).start()
    try:
        _, alice = server.new_user()
        _, bob = server.new_user()
        data = os.urandom(8 * MiB)
        assert server.put_file(alice, "big.bin", data).status == 201
        assert server.put_file(bob, "small.bin", b"small").status == 201
        for _ in range(2):
            closing.append(open_request(server, "/download/big.bin", bearer(alice)))
            assert read_head(closing[-1])[0] == 200

        def refused(resp: Response) -> None:
            assert resp.status == 429 and "for this account" in resp.json()["message"], resp.body

        from_both(lambda: server.request("GET", "/download/big.bin", token=alice), refused)
        assert server.request("GET", "/download/small.bin", token=bob).body == b"small"
    finally:
        for sock in closing:
            sock.close()
        closing.clear()
        server.stop()
