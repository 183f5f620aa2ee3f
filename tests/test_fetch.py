"""vaultcli/fetch.py's direct body read: the bytes http.client's reader buffered with the headers
come first, whatever the size of the caller's buffer. The reader is Python's own BufferedReader;
the socket after it is a stand-in, because no real one can be made to leave an exact number of
body bytes in that reader (the end-to-end reads are in tests/test_cli.py)."""

import io

import pytest

from vaultcli import fetch

BODY = bytes(range(256)) * 100  # 25,600 bytes
BUFFERED = 8192  # what the reader took in with the headers


class Response:
    chunked = False
    status = 200
    headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.fp = io.BufferedReader(io.BytesIO(BODY[:BUFFERED]), BUFFERED)  # type: ignore[arg-type]
        self.length = len(BODY)


class Socket:
    def __init__(self) -> None:
        self.rest = BODY[BUFFERED:]

    def recv_into(self, buffer: memoryview) -> int:
        n = min(len(buffer), len(self.rest))
        buffer[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


@pytest.mark.parametrize("size", [1000, BUFFERED, 64 * 1024])
def test_the_body_arrives_whole_and_in_order_through_any_buffer(size: int) -> None:
    """A buffer smaller than what the reader held once lost the rest of it (the socket was read
    next): the body came out short of those bytes and the read then waited for them."""
    reply = fetch.Reply(Response(), Socket())  # type: ignore[arg-type]
    out = bytearray()
    buffer = memoryview(bytearray(size))
    while n := reply.readinto(buffer):
        out += buffer[:n]
    assert bytes(out) == BODY
