"""HTTP: Tornado handlers, the only code that knows HTTP. ``make_app`` joins the route tables."""

import logging
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest

from handlers import auth, files, openapi, pages, sharing, tus, web
from handlers.base import Context, HeadersTooLargeHandler, NotFoundHandler
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
        log_function=log_request,
        compress_response=False,
    )
