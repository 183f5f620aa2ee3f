"""The lean path for a download's body: one GET over the standard library's http.client.

httpx hands a response body over one TLS record (16 KiB at most) at a time, each through
httpcore's and h11's event machinery: on a 1 GiB download that is 65,536 trips through a few
dozen Python calls, about as much CPU as the TLS itself. Here http.client sends the request
and reads the headers, and ``Reply.readinto`` fills the caller's buffer straight from the TLS
socket, one ``recv_into`` per record and nothing copied on the way. Everything else (small
requests, token renewal, uploads) stays on httpx.

What httpx did for this request is done here as well: the base URL's path prefix, the
User-Agent, the same TLS context (``--cacert``), a 20 s connect and 120 s read timeout, and the
proxy variables (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``; an
``http://`` proxy, tunnelled with CONNECT). Every network failure is a ``FetchError``, so the
caller retries it like httpx's transport errors.
"""

import base64
import contextlib
import http.client
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from vaultcli.errors import CliError

CONNECT_TIMEOUT = 20.0
READ_TIMEOUT = 120.0
NETWORK_ERRORS = (OSError, http.client.HTTPException)  # ssl.SSLError and timeouts are OSErrors


class FetchError(Exception):
    """The connection failed, was cut or timed out: worth another try."""


def basic_auth(password: str) -> str:
    """A link's password as HTTP Basic with an empty user name (what httpx.BasicAuth sends)."""
    return "Basic " + base64.b64encode(b":" + password.encode()).decode()


def _proxy_for(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies_environment()
    # NO_PROXY as urllib reads it (documented, but missing from typeshed)
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxies.get(scheme) or proxies.get("all")


def _connection(base_url: str, tls: ssl.SSLContext) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """A connection to ``base_url``'s server, or to its proxy; what the request's target starts
    with (the base URL's path; the whole URL for a plain-HTTP server through a proxy); headers
    the request adds (a plain-HTTP proxy's credentials)."""
    target = urlsplit(base_url)
    host, port = target.hostname or "", target.port
    proxy = _proxy_for(target.scheme, host)
    if target.scheme not in ("https", "http"):
        raise CliError(f"{base_url}: not an http(s) URL")
    if proxy is None:
        if target.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT), target.path, {}
        return http.client.HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT, context=tls), target.path, {}
    via = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if via.scheme != "http":
        raise CliError(f"{proxy}: only http:// proxies are supported for downloads")
    auth: dict[str, str] = {}
    if via.username is not None:
        credentials = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    if target.scheme == "http":  # a proxy forwards plain HTTP itself
        conn = http.client.HTTPConnection(via.hostname or "", via.port or 80, timeout=CONNECT_TIMEOUT)
        return conn, f"http://{target.netloc}{target.path}", auth
    conn = http.client.HTTPSConnection(
        via.hostname or "", via.port or 80, timeout=CONNECT_TIMEOUT, context=tls
    )
    conn.set_tunnel(host, port or 443, headers=auth)
    return conn, target.path, {}


class Reply:
    """A response whose body is read with ``readinto``.

    A body of known length (``Content-Length``, not chunked) is read from the socket itself
    once http.client's reader has handed over the bytes it buffered with the headers: each TLS
    record then costs one call less (``SSLSocket.recv_into`` instead of the reader's
    ``SocketIO.readinto`` on top of it). Any other body goes through http.client."""

    def __init__(self, response: http.client.HTTPResponse, sock: socket.socket | None) -> None:
        self.response = response
        self.status_code = response.status
        self.headers = response.headers
        direct = sock is not None and not response.chunked and response.length is not None
        self._sock = sock if direct else None
        self._left = response.length or 0
        self._buffered = True  # http.client's reader may hold the body's first bytes

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` as far as the body goes; 0 at its end. A cut body is a FetchError."""
        if self._sock is None:
            return self._readinto_http(buffer)
        want = min(len(buffer), self._left)
        got = 0
        try:
            if want and self._buffered:
                # readinto1 hands over what the reader holds (or, holding nothing, makes one
                # read straight into ``buffer``). Only a short answer shows that the reader is
                # empty and the socket is next; a full one may have left bytes: ask it again.
                got = self.response.fp.readinto1(buffer[:want])
                self._buffered = got == want
            while got < want:
                n = self._sock.recv_into(buffer[got:want])
                if not n:  # also ssl's end without close_notify: the length says it was cut
                    raise FetchError(f"the connection closed {self._left - got:,} bytes before the end")
                got += n
        except NETWORK_ERRORS as exc:
            raise FetchError(str(exc) or type(exc).__name__) from None
        self._left -= got
        return got

    def _readinto_http(self, buffer: memoryview) -> int:
        try:
            n = self.response.readinto(buffer)
        except NETWORK_ERRORS as exc:
            raise FetchError(str(exc) or type(exc).__name__) from None
        # http.client ends a body cut short as if it were complete, and so does ssl without
        # the peer's close_notify: a body is whole only when all of Content-Length arrived.
        if not n and buffer and self.response.length:
            raise FetchError(f"the connection closed {self.response.length:,} bytes before the end")
        return n

    def error_body(self) -> bytes:
        """The start of an error answer's body (for its message), never the file."""
        try:
            return self.response.read(65536)
        except NETWORK_ERRORS:
            return b""

    @property
    def reason_phrase(self) -> str:
        return self.response.reason


@contextlib.contextmanager
def get(base_url: str, tls: ssl.SSLContext, path: str, headers: dict[str, str]) -> Iterator[Reply]:
    """``GET path`` on ``base_url``; the connection is closed when the block ends."""
    conn, prefix, extra = _connection(base_url, tls)
    try:
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(READ_TIMEOUT)
            conn.request("GET", prefix.rstrip("/") + path, headers={**headers, **extra})
            response = conn.getresponse()
        except NETWORK_ERRORS as exc:
            raise FetchError(str(exc) or type(exc).__name__) from None
        yield Reply(response, conn.sock)
    finally:
        conn.close()
