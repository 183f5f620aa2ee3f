"""The HTTPS server's socket I/O: reads take every TLS record that is ready, and a response
body may go to the socket without passing through Tornado's write buffer (``send_now``).

A TLS socket's ``recv_into`` returns at most one record (16 KiB) per call, and Tornado hands a
streamed request body to its handler one socket read at a time: a 1 GiB upload was 65 536
``data_received`` calls, each through Tornado's read future, the handler's coroutine and the
upload's lock, which cost more on the event loop than the TLS decryption itself. A read here
goes on taking the records that are ready (in the SSL object or the kernel's buffer) until
the buffer is full or none is left, so a body arrives in chunks of up to the read size
whenever the client is ahead of the server. Nothing waits for more to arrive: a read returns
what was ready, as before.
"""

import ssl
from typing import Any

import tornado.httpserver
import tornado.iostream
from tornado.http1connection import HTTP1Connection

from vault.memory import uninitialized

# A body read smaller than this is copied as Tornado does (a short read, a chunk's CRLF).
LEND_MIN = 2048


class BatchedSSLIOStream(tornado.iostream.SSLIOStream):
    """An SSLIOStream whose reads fill the buffer with as many ready TLS records as fit, and
    whose body reads hand that buffer on instead of copying it.

    Tornado reads into a fresh buffer, appends it to its read buffer (a copy) and hands a
    ``read_bytes`` caller ``bytes`` of it (a second copy): on an upload, two copies of every
    byte on the event loop before the handler's own. Here a read made while the read buffer
    is empty goes into a fresh buffer that *becomes* the read buffer, and a body read
    (``read_bytes``) that takes all of it gets that very ``bytearray``, which the stream then
    forgets: no copy, and nothing else holds or changes it (vault/upload.py keeps the chunk
    itself until its segment is sealed).
    """

    _lend_whole = False  # the read being finished is a read_bytes

    def _read_to_buffer(self) -> int | None:
        if self._user_read_buffer or self._read_buffer:
            return super()._read_to_buffer()  # bytes already wait: Tornado appends to them
        # Tornado's read, but the fresh buffer becomes the read buffer instead of being
        # appended to it. Errors as Tornado's: a reset closes quietly, anything else closes and
        # raises. (The read size is at most half of max_buffer_size: Tornado's cap holds.)
        # Not zeroed first: it is cut to what was read before anything else sees it.
        buf = uninitialized(self.read_chunk_size)
        try:
            got = self.read_from_fd(buf)
        except OSError as exc:  # ssl.SSLError is one
            self.close(exc_info=exc)
            if self._is_connreset(exc):
                return None
            raise
        if got is None:  # nothing ready
            return 0
        if got == 0:  # the end of the stream
            self.close()
            return 0
        del buf[got:]
        self._read_buffer = buf
        self._read_buffer_size = got
        return got

    def _read_from_buffer(self, pos: int) -> None:
        self._lend_whole = self._read_bytes is not None
        super()._read_from_buffer(pos)

    def _consume(self, loc: int) -> bytes:
        lend, self._lend_whole = self._lend_whole, False
        buf = self._read_buffer
        if lend and loc == len(buf) > LEND_MIN:
            self._read_buffer = bytearray()
            self._read_buffer_size = 0
            return buf  # type: ignore[return-value]  # a bytearray: only the reader holds it
        return super()._consume(loc)

    _failed: OSError | None = None  # met after the first record of a read: the next one raises it

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        first = super().read_from_fd(buf)
        if not first:  # nothing ready (None), or the end of the stream (0)
            return first
        total = first
        # Straight to the SSL object (what SSLSocket.recv_into calls through two Python frames
        # per 16 KiB record); a clean or ragged end raises here and is met by the next read.
        read = self.socket._sslobj.read  # type: ignore[attr-defined]  # noqa: SLF001
        with memoryview(buf) as view:
            while total < len(view):
                try:
                    got = read(len(view) - total, view[total:])
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                except ssl.SSLEOFError:
                    break  # a ragged end: the next read (Tornado's) meets it as Tornado does
                except OSError as exc:
                    # What was read is delivered and the next read raises this: a failed TLS
                    # connection does not fail again (OpenSSL then reads an end), so the error
                    # would otherwise close the stream as if the client had ended cleanly.
                    self._failed = exc
                    break
                if not got:  # the end: the next read returns 0 again
                    break
                total += got
        return total


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer, its TLS connections read through :class:`BatchedSSLIOStream`."""

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        if type(stream) is tornado.iostream.SSLIOStream:
            # TCPServer builds the stream itself (before the handshake, which has not begun):
            # only how it reads changes.
            stream.__class__ = BatchedSSLIOStream
        super().handle_stream(stream, address)


def send_now(connection: HTTP1Connection, data: memoryview) -> int:
    """Hand the socket what it takes of ``data`` at once, past Tornado's write buffer: the
    number of bytes sent, 0 if none.

    For a response body whose headers went out and whose Content-Length was given: the bytes
    sent count against it as Tornado's ``write`` counts them, so ``finish`` checks the length
    as usual. Nothing is sent (0) while Tornado still buffers a write (the bytes would
    overtake it), for a chunked response, or when the socket takes nothing now: it is full,
    or it failed. The caller then writes through Tornado, which waits for room, or meets the
    same failure and closes the stream. Python's ``ssl`` sends all of ``data`` or raises
    (no partial writes); after a refusal OpenSSL may keep the records it began, and the next
    write must offer the same bytes from the same start (Tornado's write of a copy of
    ``data`` does).

    What this saves against ``write`` + ``flush``: per call, Tornado's write future, its
    callbacks and the buffer's bookkeeping, and the copy of a piece the caller made so that a
    stalled write holds only that piece (vault/download.py)."""
    stream = connection.stream
    remaining = connection._expected_content_remaining  # noqa: SLF001  # Tornado's Content-Length count
    if remaining is None or len(data) > remaining or stream.writing() or stream.closed():
        return 0
    try:
        sent: int = stream.socket.send(data)
    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return 0  # Tornado's write meets it again, and closes the stream
    connection._expected_content_remaining = remaining - sent  # noqa: SLF001
    return sent
