"""HTTP: Tornado handlers, the only code that knows HTTP. ``make_app`` joins the route tables."""

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest

from handlers import auth, files, openapi, pages, sharing, tus, web
from handlers.base import Context, HeadersTooLargeHandler, NotFoundHandler
from handlers.metrics import account, declared_length
from handlers.redact import safe_path

access_log = logging.getLogger("tornado.access")
MAX_HEADER_BYTES = 16 * 1024  # larger request headers are answered 431
# What Tornado reads before it gives up on a request without answering (run.py): room above
# MAX_HEADER_BYTES so that headers a little too large still get their 431.
READ_HEADER_BYTES = 4 * MAX_HEADER_BYTES


def header_bytes(request: HTTPServerRequest) -> int:
    """About the size of the request line and headers as sent."""
    return len(request.uri or "") + sum(len(k) + len(v) + 4 for k, v in request.headers.get_all())


class VaultApplication(tornado.web.Application):
    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> tornado.web._HandlerDelegate:
        if header_bytes(request) > MAX_HEADER_BYTES:
            return self.get_handler_delegate(request, HeadersTooLargeHandler, {"ctx": self.settings["ctx"]})
        tus.apply_method_override(request)
        return super().find_handler(request, **kwargs)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: 5xx are errors; a 4xx is the client's business, logged at INFO. The secret
    of a public link (the path after /s/) is never written: logs are not secrets."""
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.INFO
    millis = 1000.0 * handler.request.request_time()
    request = handler.request
    path = safe_path(request.path)
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, path, request.remote_ip, millis)


def log_json(handler: tornado.web.RequestHandler, route: str) -> None:
    """``access_log: json``: one object per line, the same fields (the path made safe)."""
    request, status = handler.request, handler.get_status()
    entry = {
        "time": round(time.time(), 3),
        "status": status,
        "method": request.method,
        "path": safe_path(request.path),
        "route": route,
        "client": request.remote_ip,
        "ms": round(1000.0 * request.request_time(), 2),
        "bytes_in": declared_length(request.headers.get("Content-Length")),
    }
    access_log.log(logging.ERROR if status >= 500 else logging.INFO, "%s", json.dumps(entry))


def request_logger(ctx: Context, routes: dict[type, str]) -> Callable[[tornado.web.RequestHandler], None]:
    """The application's log_function: metrics by route pattern, then the access log line."""

    def finished(handler: tornado.web.RequestHandler) -> None:
        route = routes.get(type(handler), "(unmatched)")
        account(ctx, handler, route)
        if ctx.core.settings.access_log == "json":
            log_json(handler, route)
        else:
            log_request(handler)

    return finished


def make_app(ctx: Context) -> tornado.web.Application:
    table = [
        *auth.routes(),
        *files.routes(),
        *sharing.routes(),
        *tus.routes(),
        *openapi.routes(),
        *pages.routes(),
        *web.routes(),
    ]
    return VaultApplication(
        [(pattern, handler, {"ctx": ctx}) for pattern, handler in table],
        ctx=ctx,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        xheaders=False,
        log_function=request_logger(ctx, {handler: pattern for pattern, handler in table}),
        compress_response=False,
    )
