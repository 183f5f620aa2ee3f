"""The base handler: collaborators, JSON responses, the one error mapping, and Bearer auth."""

import asyncio
import json
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import tornado.ioloop
import tornado.web
from tornado.http1connection import HTTP1Connection

from handlers.headers import declared_length
from handlers.redact import safe_path
from vault.auth import Access, Authenticator, Identity
from vault.config import Settings
from vault.core import Core
from vault.errors import (
    AuthError,
    BodyTimeout,
    Busy,
    ChecksumMismatch,
    ConfigError,
    Conflict,
    ExpiredToken,
    Forbidden,
    Gone,
    InputError,
    IntegrityError,
    InvalidJSON,
    InvalidToken,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageFull,
    TooLarge,
    TooManyAttempts,
    TooManyDownloads,
    TooManyUploads,
    UnsupportedMediaType,
    VaultError,
)
from vault.files import FileService
from vault.metrics import Metrics
from vault.sharing import Sharing
from vault.store import Hold
from vault.throttle import Throttle

log = logging.getLogger(__name__)

UPLOAD_BODY_DEADLINE = 10 * 365 * 86400.0  # an upload that keeps sending is never cut off
DRAIN_LIMIT = 16 * 1024 * 1024  # body bytes read and dropped after an early answer, then close
STATUS: dict[type[VaultError], int] = {
    InputError: 400,
    AuthError: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PreconditionFailed: 412,
    UnsupportedMediaType: 415,
    ChecksumMismatch: 460,  # tus checksum extension
    TooLarge: 413,
    RangeNotSatisfiable: 416,
    Gone: 410,
    TooManyAttempts: 429,
    TooManyUploads: 429,
    TooManyDownloads: 429,
    BodyTimeout: 408,
    Busy: 503,
    StorageFull: 507,
    IntegrityError: 500,
    ConfigError: 500,
}
NOT_UTF8 = "[not UTF-8]"  # the audit target of a request whose path did not decode
REASONS = {405: "Method not allowed", 404: "Not found", 400: "Bad request", 413: "Request body too large"}


def status_for(exc: VaultError) -> int:
    """The status of the most specific mapped class in the error's MRO."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


class InFlight:
    """The requests being answered now, so a graceful stop can wait until none is left. A
    request counts from its handler's start until its response is sent or its connection
    closes, whichever comes first."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()


@dataclass(frozen=True)
class Context:
    """What every handler receives through ``initialize``: the core (vault/core.py) plus the
    parts that only HTTP needs (the login throttle, which also reads X-Forwarded-For, and the
    requests in flight, for a graceful stop)."""

    core: Core
    throttle: Throttle
    requests: InFlight = field(default_factory=InFlight)
    metrics: Metrics = field(default_factory=Metrics)
    worker: int = 0  # with workers > 1: this worker's pid, sent as X-Vault-Worker


class BaseHandler(tornado.web.RequestHandler):
    # Methods whose every answer goes in the audit log, with the action to record them as.
    AUDITED: dict[str, str] = {}

    _in_flight = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A handler supports the methods it implements (unless it names them itself), so
        Tornado answers any other with 405 and its Allow header before ``prepare()``
        authenticates, checks protocol headers or reads a byte (RFC 9110 15.5.5)."""
        super().__init_subclass__(**kwargs)
        if "SUPPORTED_METHODS" not in cls.__dict__:
            base = tornado.web.RequestHandler
            cls.SUPPORTED_METHODS = tuple(
                m for m in base.SUPPORTED_METHODS if getattr(cls, m.lower()) is not getattr(base, m.lower())
            )

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        if ctx.worker:
            self.set_header("X-Vault-Worker", str(ctx.worker))
        self.audit_actor = "-"
        ctx.requests.enter()
        self._in_flight = True

    def _left(self, *_: object) -> None:
        """The request is over for a graceful stop (exactly once)."""
        if self._in_flight:
            self._in_flight = False
            self.ctx.requests.leave()

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> "asyncio.Future[None]":
        """Count the request as over once its response is sent, not when it is only queued."""
        future = super().finish(chunk)
        future.add_done_callback(self._left)
        return future

    def end_request(self) -> None:
        """Hook: the request is over (answered, or its connection closed); may run twice."""

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.end_request()
        self._left()

    @property
    def core(self) -> Core:
        return self.ctx.core

    @property
    def files(self) -> FileService:
        return self.ctx.core.files

    @property
    def sharing(self) -> Sharing:
        return self.ctx.core.sharing

    @property
    def auth(self) -> Authenticator:
        return self.ctx.core.auth

    @property
    def throttle(self) -> Throttle:
        return self.ctx.throttle

    @property
    def config(self) -> Settings:
        return self.ctx.core.settings

    def set_default_headers(self) -> None:
        worker = getattr(getattr(self, "ctx", None), "worker", 0)  # after initialize (errors)
        if worker:
            self.set_header("X-Vault-Worker", str(worker))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Strict-Transport-Security", "max-age=31536000")

    @property
    def connection(self) -> HTTP1Connection:
        return cast(HTTP1Connection, self.request.connection)

    def write_json(self, status: int, body: dict[str, Any] | list[Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    def bearer_token(self) -> str:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("Authentication required: send Authorization: Bearer <token>")
        return token.strip()

    async def access(self) -> Access:
        """The JWT middleware: a valid, unrevoked access token in ``Authorization: Bearer``, or
        an AuthError. Every protected endpoint comes through here (or ``authenticated()``)."""
        access = await self.auth.authenticate(self.bearer_token())
        self.audit_actor = access.identity.username
        return access

    def on_finish(self) -> None:
        self.end_request()
        action = self.AUDITED.get(self.request.method or "")
        if action:
            # No path_args: Tornado refused to decode them (400 before prepare()).
            path_args = getattr(self, "path_args", None)
            target = "/".join(path_args) if path_args else "" if path_args is not None else NOT_UTF8
            if self.request.path.startswith("/s/"):
                target = "[link secret]"
            self.core.audit.record(
                self.audit_actor, self.client_address(), action, target, str(self.get_status())
            )

    def client_address(self) -> str:
        """The client's address: the peer's, or X-Forwarded-For's from a trusted proxy."""
        return self.ctx.throttle.client_address(
            self.request.remote_ip or "", self.request.headers.get("X-Forwarded-For")
        )

    async def authenticated(self) -> Identity:
        return (await self.access()).identity

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, IntegrityError):
            self.ctx.metrics.integrity_failures += 1
        if isinstance(exc, VaultError):
            status_code, message = status_for(exc), exc.message
            if isinstance(exc, AuthError):
                self.set_header("WWW-Authenticate", self.auth_challenge(exc))
            if isinstance(exc, (TooManyAttempts, TooManyUploads, TooManyDownloads)):
                self.set_header("Retry-After", str(exc.retry_after))
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = REASONS.get(
                status_code, "Internal server error" if status_code >= 500 else self._reason
            )
        for header in ("Content-Disposition", "Content-Range", "Content-Length", "ETag", "Repr-Digest"):
            self.clear_header(header)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if not getattr(self.connection, "_read_finished", True):
            # Answered before the body was read (Tornado then closes the connection): say so,
            # so the client does not send its next request down a closing connection.
            self.set_header("Connection", "close")
        if isinstance(exc, Busy):
            self.set_header("Retry-After", "5")
        if isinstance(exc, RangeNotSatisfiable):
            self.set_header("Content-Range", f"bytes */{exc.size}")
        self.write_json(status_code, {"message": message, "status": status_code})

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (RFC 9110: a 405 lists them in Allow)."""
        return list(self.SUPPORTED_METHODS)

    def auth_challenge(self, exc: AuthError) -> str:
        # RFC 6750 3.1: no error code when the request carried no credentials at all.
        presented = "Authorization" in self.request.headers
        error = "invalid_token" if presented and isinstance(exc, (InvalidToken, ExpiredToken)) else None
        return f'Bearer error="{error}"' if error else "Bearer"

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, VaultError):
            status = status_for(value)
            level = logging.ERROR if status >= 500 else logging.DEBUG  # the access log has the 4xx
            log.log(
                level,
                "%s %s -> %d %s",
                self.request.method,
                safe_path(self.request.path),
                status,
                type(value).__name__,
            )
        else:
            super().log_exception(typ, value, tb)

    def fail(self, exc: BaseException) -> None:
        """Answer now with the error for ``exc`` (used where exceptions cannot propagate)."""
        if isinstance(exc, VaultError):
            self.log_exception(type(exc), exc, None)
        else:
            log.error("%s %s failed", self.request.method, safe_path(self.request.path), exc_info=exc)
        if not self._finished and not self._headers_written:
            self.send_error(500, exc_info=(type(exc), exc, exc.__traceback__))


class NotFoundHandler(BaseHandler):
    """Unknown routes answer JSON 404 like every other error."""

    SUPPORTED_METHODS = tornado.web.RequestHandler.SUPPORTED_METHODS  # all: 404 in prepare()

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "Not found")


@tornado.web.stream_request_body
class HeadersTooLargeHandler(BaseHandler):
    """Any request whose headers are over the limit: 431, before anything else looks at it."""

    SUPPORTED_METHODS = tornado.web.RequestHandler.SUPPORTED_METHODS  # all: 431 in prepare()

    def prepare(self) -> None:
        raise tornado.web.HTTPError(431, "Request header fields too large: the limit is 16 KiB")


@tornado.web.stream_request_body
class BodyHandler(BaseHandler):
    """A handler that takes a request body, streamed as it arrives (Tornado's
    ``stream_request_body``). It owns what every such handler needs, once:

    - the one ``data_received`` error path: a chunk's error cannot reach ``write_error``
      (Tornado would log it and drop the connection), so it is answered at once with the one
      error mapping, ``drop_body`` undoes what was stored, and the rest of the body is ignored
      (``failed``; the request method then does nothing);
    - the body timer (``watch_body``): a body that sends nothing for ``body_timeout`` seconds
      is answered 408 (or cut, once a reply started), and the request's slot and timer are
      given back exactly once when it ends;
    - the upload slot (``take_upload_slot``).

    Override points: ``take_chunk`` (consume one chunk) and ``drop_body`` (after a failure).
    Handlers without a body are not streamed: Tornado reads their (small, ``max_body_size``)
    body itself within the server-wide ``body_timeout`` (run.py).
    """

    failed = False  # a chunk failed and was answered: ignore the rest of the body
    _upload_slot: Hold | None = None
    _ended = False
    _body_timer: object | None = None
    _body_busy = False
    _body_seen = 0.0

    # Set where every request method does nothing once ``failed`` (the upload handlers): an
    # error answered while the body is still coming is then followed by draining the body.
    DRAIN_AFTER_ERROR = False
    _answered_early = False
    _drained = 0

    async def take_chunk(self, chunk: bytes) -> None:
        """Consume one chunk of the body (override)."""

    async def drop_body(self) -> None:
        """Undo what the body stored so far, after a failure (override)."""

    async def data_received(self, chunk: bytes) -> None:
        if self.failed:
            self._drained += len(chunk)
            if self._drained > DRAIN_LIMIT:
                self.connection.close()  # the client had the answer and went on sending
            return
        self._body_busy = True  # storing a chunk is the server's time, not the client's
        try:
            await self.take_chunk(chunk)
        except Exception as exc:
            self.failed = True
            try:
                await self.drop_body()
            finally:
                self.fail(exc)
        finally:
            self._body_busy = False
            self._body_seen = tornado.ioloop.IOLoop.current().time()

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """An error while the client is still sending the body it did not announce with
        ``Expect: 100-continue``: closing now would reset the connection under the answer
        (curl: exit 55, status 000). So the answer goes out whole, the rest of the body is
        read and dropped (at most DRAIN_LIMIT bytes, and within the body timer), and the
        request ends when the body does or when the client, answered, closes."""
        if self.DRAIN_AFTER_ERROR and self._body_coming() and not self._headers_written:
            self._answered_early = self.failed = True
            self._release_slot()  # only draining is left: the next upload may start now
            # Tornado would refuse a body over the small default cap outright: the drain,
            # not that cap, bounds what is read now.
            self.connection.set_max_body_size(2**63 - 1)
            if self._body_timer is None:
                self.watch_body()
        super().send_error(status_code, **kwargs)

    def _body_coming(self) -> bool:
        unread = not getattr(self.connection, "_read_finished", True)
        return unread and self.request.headers.get("Expect", "").lower() != "100-continue"

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> "asyncio.Future[None]":
        if self._answered_early and self._body_coming():
            # Out now, complete (Content-Length), but the request goes on reading its body.
            if not self._headers_written:
                body = json.dumps(chunk) if isinstance(chunk, dict) else chunk or b""
                body = body.encode() if isinstance(body, str) else body
                self.set_header("Content-Length", str(len(body)))
                self.write(body)
            return self.flush()
        return super().finish(chunk)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._answered_early and not self._finished:
            super().finish()  # the client closed once answered: log and audit the answer

    def watch_body(self, *, upload: bool = False) -> None:
        """Answer 408 if the body sends nothing for ``body_timeout`` seconds. An upload may
        then take as long as it keeps sending; any other body must also arrive whole within
        twice that (Tornado's own deadline, which closes without an answer)."""
        timeout = self.config.body_timeout
        self.connection.set_body_timeout(UPLOAD_BODY_DEADLINE if upload else 2.0 * timeout)
        loop = tornado.ioloop.IOLoop.current()
        self._body_seen = loop.time()
        self._body_timer = loop.call_at(self._body_seen + timeout, self._check_body)

    async def take_upload_slot(self, user_id: int) -> None:
        """Count this request among the user's uploads in progress (429 beyond the limit)
        until it ends; ``end_request`` gives the slot back exactly once."""
        if self._upload_slot is None:
            self._upload_slot = await self.core.uploads.acquire(user_id)
            if self._ended:  # the connection closed while a shared state was asked
                self._release_slot()

    async def give_back_slot(self) -> None:
        """Give the upload slot back before the answer is written: a client that starts its
        next upload as soon as it reads this one's answer finds the slot free, on any worker or
        instance (given back only in ``on_finish``, a shared state's write could land after it)."""
        slot, self._upload_slot = self._upload_slot, None
        if slot is not None:
            try:
                await self.core.uploads.release(slot)
            except VaultError:
                log.exception("an upload slot could not be given back; its lease will free it")

    def _check_body(self) -> None:
        self._body_timer = None
        if self._finished or getattr(self.connection, "_read_finished", True):
            return  # the whole body arrived
        loop = tornado.ioloop.IOLoop.current()
        deadline = self._body_seen + self.config.body_timeout
        if self._body_busy or loop.time() < deadline:
            # Storing a chunk is the server's time, not the client's: look again shortly.
            self._body_timer = loop.call_at(max(deadline, loop.time() + 0.5), self._check_body)
            return
        self.failed = True
        exc = BodyTimeout(f"Request body timed out: nothing arrived for {self.config.body_timeout} seconds")
        self.log_exception(type(exc), exc, None)
        if not self._headers_written:
            self.send_error(408, exc_info=(type(exc), exc, None))  # the connection then closes
        else:
            self.connection.close()

    def end_request(self) -> None:
        self._ended = True
        if self._body_timer is not None:
            tornado.ioloop.IOLoop.current().remove_timeout(self._body_timer)
            self._body_timer = None
        self._release_slot()

    def _release_slot(self) -> None:
        if self._upload_slot is not None:
            # From here on the slot is free: a one-process state gives it back in the task's
            # first step, before the loop reads another request.
            asyncio.ensure_future(self.core.uploads.release(self._upload_slot))
            self._upload_slot = None


class JSONBodyHandler(BodyHandler):
    """Reads a small JSON object body, refusing one over ``max_json_size`` before reading it."""

    def prepare(self) -> None:
        limit = self.config.max_json_size
        declared = declared_length(self.request.headers)
        if declared is not None and declared > limit:
            raise TooLarge(f"Request body too large: JSON bodies are limited to {limit} bytes")
        self.connection.set_max_body_size(limit)
        self._body = bytearray()
        self.watch_body()

    async def take_chunk(self, chunk: bytes) -> None:
        self._body += chunk

    def json_body(self, empty_ok: bool = False) -> dict[str, Any]:
        """The body as a JSON object; an empty body is ``{}`` where every field is optional."""
        if empty_ok and not self._body.strip():
            return {}
        try:
            body = json.loads(self._body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidJSON("Malformed JSON: the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise InvalidJSON()
        try:  # "\ud800" parses to a lone surrogate, which no later encode() accepts
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJSON("Malformed JSON: a string holds a lone surrogate (\\uD800-\\uDFFF)") from None
        return body
