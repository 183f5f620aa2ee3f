"""The HTTPS server's socket reads: every TLS record that is ready, in one read.

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


class BatchedSSLIOStream(tornado.iostream.SSLIOStream):
    """An SSLIOStream whose reads fill the buffer with as many ready TLS records as fit."""

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        first = super().read_from_fd(buf)
        if not first:  # nothing ready (None), or the end of the stream (0)
            return first
        total = first
        with memoryview(buf) as view:
            while total < len(view):
                try:
                    with view[total:] as rest:
                        got = self.socket.recv_into(rest, len(rest))
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                except OSError:
                    # What was read is delivered; the next read meets the error (a failed TLS
                    # connection or a reset socket fails again) and closes the stream.
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
