"""A request's shared holds are given back BEFORE its answer goes out (handlers/files.py,
handlers/tus.py, vault/resumable.py): a client that sends its next request as soon as it reads
an answer, to this process or to any other, must find the hold gone. Given back after the
answer, a refused upload's slot made the next upload on another worker 429, and a PATCH's write
hold made the resumed PATCH on another instance 409 after this one died.

The real handlers and core in this process, on a plain loopback socket; the state records, at
each release, whether the answer had already reached the client's socket (a loopback write is
in the peer's queue when ``send`` returns, and Tornado writes as soon as it can), so the order is
observed, not timed."""

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil

from handlers import make_app
from handlers.base import Context
from tests import incore
from vault.limits import UPLOAD
from vault.resumable import WRITING
from vault.state import LocalState
from vault.store import Hold
from vault.throttle import LoginThrottle

QUOTA = 100_000


class WatchedState(LocalState):
    """Notes, for each release of a hold of ``kind``, whether the client already had bytes."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.client: socket.socket | None = None
        self.answered_before_release: list[bool] = []

    async def release(self, hold: Hold) -> None:
        if hold.kind == self.kind and self.client is not None:
            try:
                seen = self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                seen = b""
            self.answered_before_release.append(bool(seen))
        await super().release(hold)


async def answer(client: socket.socket) -> bytes:
    """The answer's head, read without blocking the loop the server runs on."""
    client.setblocking(False)
    data = b""
    for _ in range(2000):
        try:
            data += client.recv(65536)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        if b"\r\n\r\n" in data:
            return data
    raise AssertionError(f"no answer: {data!r}")


def serve(
    tmp_path: Path, kind: str, scenario: Callable[[WatchedState, int, str, Any], Awaitable[None]]
) -> None:
    async def main() -> None:
        state = WatchedState(kind)
        async with incore.core(
            tmp_path / "vault.db", state=state, user_quota=QUOTA, registration="open"
        ) as core:
            await core.auth.register("alice", "correct horse")
            token = (await core.auth.login("alice", "correct horse")).token
            throttle = LoginThrottle(
                free=5, max_backoff=60, trusted_proxies="", register_per_address=10, register_per_hour=100
            )
            context = Context(core=core, throttle=throttle)
            server = tornado.httpserver.HTTPServer(make_app(context))
            [listener] = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server.add_sockets([listener])
            try:
                await scenario(state, listener.getsockname()[1], token, core)
                await context.requests.idle()  # its audit entry written before the store closes
            finally:
                server.stop()
                await server.close_all_connections()

    asyncio.run(main())


def request(port: int, state: WatchedState, head: str, body: bytes = b"") -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))
    state.client = client
    client.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return client


def test_an_upload_refused_over_quota_frees_its_slot_before_the_413(tmp_path: Path) -> None:
    async def scenario(state: WatchedState, port: int, token: str, _: Any) -> None:
        client = request(
            port,
            state,
            f"PUT /upload/big.bin HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\n"
            f"Content-Length: {QUOTA + 1}\nExpect: 100-continue\n",
        )
        with client:
            assert (await answer(client)).startswith(b"HTTP/1.1 413")
        assert state.answered_before_release == [False]

    serve(tmp_path, UPLOAD, scenario)


def test_a_tus_patch_gives_its_write_hold_back_before_the_204(tmp_path: Path) -> None:
    async def scenario(state: WatchedState, port: int, token: str, core: Any) -> None:
        owner = (await core.auth.authenticate(token)).identity.user_id
        upload = await core.files.resumables.create(owner, "part.bin", 10, "")
        client = request(
            port,
            state,
            f"PATCH /tus/{upload.tus_id} HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\n"
            "Tus-Resumable: 1.0.0\nContent-Type: application/offset+octet-stream\n"
            "Upload-Offset: 0\nContent-Length: 4\n",
            b"abcd",
        )
        with client:
            assert (await answer(client)).startswith(b"HTTP/1.1 204")
        assert state.answered_before_release == [False]

    serve(tmp_path, WRITING, scenario)
