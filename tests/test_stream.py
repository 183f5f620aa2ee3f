"""handlers/stream.py: one read of the HTTPS server takes every TLS record that is ready.

Over a real TLS connection (the server's own context) on a Unix socket pair: a write on one
end has reached the other end's receive queue when it completes, so what a read can find is
known exactly, without timing.
"""

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.httputil
import tornado.iostream
import tornado.netutil
import tornado.tcpclient
import tornado.testing
from tornado.http1connection import HTTP1Connection

from handlers.stream import LEND_MIN, BatchedSSLIOStream, HTTPServer, send_now
from vault.tls import ensure_certificate, server_context

RECORD = 16 * 1024  # the largest TLS record: what one plain SSL read returns at most
READ = 256 * 1024


def tls_sockets(tmp_path: Path) -> tuple[ssl.SSLSocket, socket.socket, ssl.SSLContext]:
    """A connected socket pair: the server's end wrapped as the HTTPS server wraps it (the
    handshake not begun), the client's plain end, and a client context trusting the server."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_certificate(cert, key)
    server_sock, client_sock = socket.socketpair()
    wrapped = tornado.netutil.ssl_wrap_socket(
        server_sock, server_context(cert, key), server_side=True, do_handshake_on_connect=False
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return wrapped, client_sock, context


@asynccontextmanager
async def tls_pair(tmp_path: Path) -> AsyncIterator[tuple[BatchedSSLIOStream, tornado.iostream.SSLIOStream]]:
    """(server stream as the HTTPS server reads, client stream), handshake done."""
    wrapped, client_sock, client_context = tls_sockets(tmp_path)
    server = BatchedSSLIOStream(wrapped)
    starting = tornado.iostream.IOStream(client_sock).start_tls(False, client_context)
    _, client = await asyncio.gather(server.wait_for_handshake(), starting)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


def read_once(stream: BatchedSSLIOStream, size: int = READ) -> tuple[int | None, bytes]:
    buf = bytearray(size)
    got = stream.read_from_fd(buf)
    return got, bytes(buf[: got or 0])


def test_a_read_takes_every_record_that_is_ready(tmp_path: Path) -> None:
    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            assert read_once(server) == (None, b"")  # nothing ready: nothing waits for it
            data = os.urandom(4 * RECORD + 100)  # five records
            await client.write(data)
            assert read_once(server) == (len(data), data)  # one read, not five
            assert read_once(server) == (None, b"")

    asyncio.run(run())


def test_a_read_stops_at_the_buffers_end_and_the_next_goes_on(tmp_path: Path) -> None:
    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            data = os.urandom(5 * RECORD)
            size = 2 * RECORD + 100  # a record and a half is left in the SSL object
            await client.write(data)
            first, second = read_once(server, size), read_once(server)
            assert first == (size, data[:size]) and second == (len(data) - size, data[size:])

    asyncio.run(run())


def test_the_end_of_the_stream_comes_after_the_data_before_it(tmp_path: Path) -> None:
    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            data = os.urandom(2 * RECORD + 1)
            await client.write(data)
            client.close()
            assert read_once(server) == (len(data), data)
            assert read_once(server) == (0, b"")  # then the end, as Tornado expects it

    asyncio.run(run())


def test_the_https_server_reads_through_the_batched_stream(tmp_path: Path) -> None:
    """HTTPServer.handle_stream gives each TLS connection the batched reads, and only those."""
    seen: list[type] = []

    async def run() -> None:
        arrived = asyncio.Event()

        class Recording(HTTPServer):
            def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
                super().handle_stream(stream, address)
                seen.append(type(stream))
                arrived.set()

        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        ensure_certificate(cert, key)
        for options in (server_context(cert, key), None):
            server = Recording(lambda request: None, ssl_options=options)
            sock, port = tornado.testing.bind_unused_port()
            server.add_sockets([sock])
            arrived.clear()
            stream = await tornado.tcpclient.TCPClient().connect("127.0.0.1", port)
            await arrived.wait()
            stream.close()
            server.stop()

    asyncio.run(run())
    assert seen == [BatchedSSLIOStream, tornado.iostream.IOStream]


def test_a_body_read_gets_the_read_buffer_itself_and_keeps_it(tmp_path: Path) -> None:
    """A read_bytes that takes all that one read brought gets that buffer (a bytearray, no
    copy), which the stream forgets: later reads never write into it. Shorter reads, reads
    that leave bytes behind and delimiter reads are Tornado's copies, as before."""

    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            first, second = os.urandom(3 * RECORD + 7), os.urandom(2 * RECORD)
            await client.write(first)
            got: object = await server.read_bytes(READ, partial=True)  # typed bytes by Tornado
            assert isinstance(got, bytearray) and got == first
            await client.write(second)
            again = await server.read_bytes(READ, partial=True)
            assert again == second and again is not got
            assert got == first  # the stream's next read went into a buffer of its own

            await client.write(b"x" * 100 + b"\r\n" + second)
            line = await server.read_until(b"\r\n")  # a delimiter read: bytes, as Tornado's
            assert type(line) is bytes and line == b"x" * 100 + b"\r\n"
            part = await server.read_bytes(RECORD, partial=True)  # bytes were left behind
            rest = await server.read_bytes(len(second) - len(part))
            assert part + rest == second

            await client.write(b"ab")
            small = await server.read_bytes(2)
            assert type(small) is bytes and small == b"ab"

    asyncio.run(run())


@dataclass
class RawClient:
    """A TLS client that encrypts into memory: a test sends exactly the records it wants,
    altered or cut short, on a real socket."""

    tls: ssl.SSLObject
    outgoing: ssl.MemoryBIO
    sock: socket.socket

    def records(self, data: bytes) -> bytearray:
        """``data`` as this client's TLS records on the wire."""
        self.tls.write(data)
        return bytearray(self.outgoing.read())

    async def send(self, wire: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, wire)


@asynccontextmanager
async def raw_tls_pair(
    tmp_path: Path, kind: type[tornado.iostream.SSLIOStream]
) -> AsyncIterator[tuple[tornado.iostream.SSLIOStream, RawClient]]:
    """(server stream of ``kind``, a RawClient), the handshake done."""
    wrapped, client_sock, context = tls_sockets(tmp_path)
    server = kind(wrapped)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = RawClient(context.wrap_bio(incoming, outgoing), outgoing, client_sock)
    client_sock.setblocking(False)
    handshake = asyncio.ensure_future(server.wait_for_handshake())
    while True:
        try:
            client.tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await client.send(outgoing.read())
            incoming.write(await asyncio.get_running_loop().sock_recv(client_sock, 65536))
    await client.send(outgoing.read())
    await handshake
    try:
        yield server, client
    finally:
        client_sock.close()
        server.close()


async def read_to_the_end(stream: tornado.iostream.SSLIOStream) -> bytes:
    """Every byte the stream delivers before it closes."""
    got = b""
    with contextlib.suppress(tornado.iostream.StreamClosedError, ssl.SSLError):
        while True:
            got += await stream.read_bytes(READ, partial=True)
    return got


@pytest.mark.parametrize("kind", [tornado.iostream.SSLIOStream, BatchedSSLIOStream])
def test_a_record_failing_its_check_after_good_ones_fails_the_stream(
    tmp_path: Path, kind: type[tornado.iostream.SSLIOStream]
) -> None:
    """A record that fails its MAC (altered on the way) behind good ones that one read takes:
    the good bytes are delivered, then the stream closes with the TLS error, as Tornado's own
    stream does (it reads a record at a time). The batched read used to stop there quietly and
    its next read found only an end (OpenSSL reads one after a fatal error): the stream closed
    as if the client had ended cleanly, without the error, and nothing was logged."""

    async def run() -> None:
        async with raw_tls_pair(tmp_path, kind) as (server, client):
            good = os.urandom(3 * RECORD)
            wire = client.records(good)
            bad = client.records(b"x" * 1000)
            bad[-1] ^= 1  # the record's tag
            await client.send(bytes(wire + bad + client.records(b"y" * 5000)))
            assert await read_to_the_end(server) == good
            assert isinstance(server.error, ssl.SSLError)
            assert "BAD_RECORD_MAC" in str(server.error)

    asyncio.run(run())


def test_a_body_read_into_reused_memory_holds_only_the_bytes_read(tmp_path: Path) -> None:
    """The read buffer is not zeroed first (vault.memory.uninitialized): what a body read gets
    is exactly the bytes that arrived, never what the allocator's memory held before (here
    buffers of 0xEE of the read's size freed just before each read, which the next one likely
    reuses), whether the read filled most of its buffer or a little of it."""
    size = 4 * RECORD  # what one socket pair takes before its writer waits

    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            server.read_chunk_size = size
            for length in (size - 1, RECORD + 1, 1, RECORD):
                dirty = [bytearray(b"\xee") * size for _ in range(4)]
                del dirty
                data = os.urandom(length)
                await client.write(data)
                got = await server.read_bytes(size, partial=True)
                assert len(got) == length and got == data

    asyncio.run(run())


def test_a_body_read_lends_only_reads_longer_than_lend_min(tmp_path: Path) -> None:
    """LEND_MIN bytes or fewer are copied as Tornado does; one more is lent."""

    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            for length, kind in ((LEND_MIN, bytes), (LEND_MIN + 1, bytearray)):
                await client.write(os.urandom(length))
                got = await server.read_bytes(READ, partial=True)
                assert (type(got), len(got)) == (kind, length)

    asyncio.run(run())


def test_a_read_to_the_end_after_a_lent_body_read_gets_bytes(tmp_path: Path) -> None:
    """Only a read_bytes gets the read buffer itself: a read_until_close that follows one, which
    Tornado finishes at the close without passing through _read_from_buffer, gets a copy."""

    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            await client.write(os.urandom(LEND_MIN + 100))
            lent: object = await server.read_bytes(READ, partial=True)
            assert isinstance(lent, bytearray)
            assert await server.read_bytes(0) == b""  # nothing left, and nothing lent
            rest = os.urandom(LEND_MIN + 100)
            await client.write(rest)
            client.close()
            got = await server.read_until_close()
            assert type(got) is bytes and got == rest

    asyncio.run(run())


def test_the_https_server_gives_each_connection_its_peer_address(tmp_path: Path) -> None:
    seen: list[str] = []

    def handle(request: tornado.httputil.HTTPServerRequest) -> None:
        seen.append(str(request.remote_ip))
        assert request.connection is not None
        request.connection.write_headers(
            tornado.httputil.ResponseStartLine("HTTP/1.1", 200, "OK"),
            tornado.httputil.HTTPHeaders({"Content-Length": "0"}),
        )
        request.connection.finish()

    async def run() -> None:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        ensure_certificate(cert, key)
        server = HTTPServer(handle, ssl_options=server_context(cert, key))
        sock, port = tornado.testing.bind_unused_port()
        server.add_sockets([sock])
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(
                f"https://127.0.0.1:{port}/", ca_certs=str(cert), validate_cert=False
            )
            assert response.code == 200
        finally:
            client.close()
            server.stop()

    asyncio.run(run())
    assert seen == ["127.0.0.1"]


async def body_connection(client: tornado.iostream.SSLIOStream, length: int | None) -> HTTP1Connection:
    """An HTTP/1.1 connection on ``client`` whose headers went out: a PUT of ``length`` bytes
    (None: chunked). send_now reads only its stream and its Content-Length count."""
    connection = HTTP1Connection(client, is_client=True)
    headers = tornado.httputil.HTTPHeaders({"Host": "vault"})
    if length is not None:
        headers["Content-Length"] = str(length)
    await connection.write_headers(tornado.httputil.RequestStartLine("PUT", "/x", "HTTP/1.1"), headers)
    return connection


def head_and_body(wire: bytes) -> bytes:
    return wire.split(b"\r\n\r\n", 1)[1]


def test_send_now_sends_what_the_content_length_allows(tmp_path: Path) -> None:
    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            body = os.urandom(3000)
            connection = await body_connection(client, len(body))
            view = memoryview(body)
            assert send_now(connection, view[:1000]) == 1000
            assert send_now(connection, view[1000:]) == 2000  # exactly what is left
            assert send_now(connection, memoryview(b"!")) == 0  # past the Content-Length
            connection.finish()  # Tornado's own count agrees: all of it went
            got = read_once(server)[1]
            assert head_and_body(got) == body

            chunked = await body_connection(client, None)
            assert send_now(chunked, memoryview(b"abc")) == 0  # chunk framing is Tornado's

    asyncio.run(run())


def test_send_now_refuses_more_than_is_left(tmp_path: Path) -> None:
    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            connection = await body_connection(client, 100)
            assert send_now(connection, memoryview(bytes(60))) == 60
            assert send_now(connection, memoryview(bytes(41))) == 0  # 40 are left
            assert send_now(connection, memoryview(bytes(40))) == 40

    asyncio.run(run())


def test_send_now_waits_behind_tornados_buffered_write(tmp_path: Path) -> None:
    """While Tornado still holds part of a write, send_now sends nothing, even when the
    socket has room (the server has just read): its bytes would overtake the held ones."""

    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            size = 8 << 20
            connection = await body_connection(client, size + 10)
            written = connection.write(bytes(size))  # more than the socket pair holds
            assert client.writing()
            got, _ = read_once(server)  # room in the socket now; Tornado has not run yet
            assert got
            assert send_now(connection, memoryview(b"late")) == 0
            written.cancel()

    asyncio.run(run())


def test_send_now_sends_nothing_when_the_socket_is_full_or_failed_or_closed(tmp_path: Path) -> None:
    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            connection = await body_connection(client, 1 << 30)
            chunk = memoryview(bytes(RECORD))
            sent = total = 0
            while (sent := send_now(connection, chunk)) == len(chunk):
                total += sent
            assert sent == 0 and total > 0  # full: the reader has not read
        async with tls_pair(tmp_path) as (server, client):
            connection = await body_connection(client, 1 << 30)
            server.close()  # the peer is gone: the send fails
            tries = [send_now(connection, memoryview(bytes(RECORD))) for _ in range(3)]
            assert tries[-1] == 0  # (the kernel may take a first record before it knows)
        async with tls_pair(tmp_path) as (server, client):
            connection = await body_connection(client, 1 << 30)
            client.close()
            assert send_now(connection, memoryview(b"x")) == 0

    asyncio.run(run())


def test_a_read_waiting_for_more_keeps_the_bytes_already_read(tmp_path: Path) -> None:
    """A delimiter read, and a read of more bytes than have come, whose first bytes are
    read at once: the next socket read is appended to them (Tornado's read), not put in their
    place."""

    async def run() -> None:
        async with tls_pair(tmp_path) as (server, client):
            first = os.urandom(3 * RECORD).replace(b"\r", b"")
            await client.write(first)
            line = server.read_until(b"\r\n")  # reads ``first`` now, and waits for the rest
            await client.write(b"end\r\n")
            assert await line == first + b"end\r\n"
            await client.write(first)
            both = server.read_bytes(2 * len(first))
            await client.write(first)
            assert await both == first + first

    asyncio.run(run())


def test_a_clean_end_after_records_in_one_read_delivers_them(tmp_path: Path) -> None:
    """Records and then the client's close_notify, all ready for one read: the read returns
    the records' bytes, and the next one the end."""

    async def run() -> None:
        async with raw_tls_pair(tmp_path, BatchedSSLIOStream) as (server, client):
            assert isinstance(server, BatchedSSLIOStream)
            data = os.urandom(3 * RECORD)
            wire = client.records(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                client.tls.unwrap()  # the close_notify goes to the outgoing buffer
            await client.send(bytes(wire + client.outgoing.read()))
            assert read_once(server) == (len(data), data)
            assert read_once(server) == (0, b"")

    asyncio.run(run())
