"""HTTP: Tornado handlers, the only code that knows HTTP. ``make_app`` joins the route tables."""

import logging

import tornado.web

from handlers import auth, files, sharing, tus
from handlers.base import Context, NotFoundHandler

access_log = logging.getLogger("tornado.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: 5xx are errors; a 4xx is the client's business, logged at INFO."""
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.INFO
    millis = 1000.0 * handler.request.request_time()
    access_log.log(level, "%d %s %.2fms", status, handler._request_summary(), millis)


def make_app(ctx: Context) -> tornado.web.Application:
    table = [*auth.routes(), *files.routes(), *sharing.routes(), *tus.routes()]
    return tornado.web.Application(
        [(pattern, handler, {"ctx": ctx}) for pattern, handler in table],
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        xheaders=False,
        log_function=log_request,
        compress_response=False,
    )
