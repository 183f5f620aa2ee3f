"""HTTP: Tornado handlers, the only code that knows HTTP. ``make_app`` joins the route tables."""

import logging

import tornado.web

from handlers import auth, files, openapi, pages, sharing, tus, web
from handlers.base import Context, NotFoundHandler
from handlers.redact import safe_path

access_log = logging.getLogger("tornado.access")


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
    return tornado.web.Application(
        [(pattern, handler, {"ctx": ctx}) for pattern, handler in table],
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        xheaders=False,
        log_function=log_request,
        compress_response=False,
    )
