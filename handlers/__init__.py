"""HTTP: Tornado handlers, the only code that knows HTTP. ``make_app`` joins the route tables."""

import tornado.web

from handlers import auth, files, tus
from handlers.base import Context, NotFoundHandler


def make_app(ctx: Context) -> tornado.web.Application:
    table = [*auth.routes(), *files.routes(), *tus.routes()]
    return tornado.web.Application(
        [(pattern, handler, {"ctx": ctx}) for pattern, handler in table],
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        xheaders=False,
        compress_response=False,
    )
