"""``GET /metrics`` (Prometheus text format) on its own loopback listener (``metrics_port``),
never on the public one; and the per-request accounting that feeds it."""

import tornado.web

from handlers.base import Context
from handlers.files import FileSender, MultipartUploadHandler, RawUploadHandler
from handlers.tus import TusCreateHandler, TusUploadHandler

UPLOADS = (RawUploadHandler, MultipartUploadHandler, TusCreateHandler, TusUploadHandler)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def declared_length(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def account(ctx: Context, handler: tornado.web.RequestHandler, route: str) -> None:
    """Record one finished request: no path, only its route pattern."""
    request, status = handler.request, handler.get_status()
    metrics = ctx.metrics
    metrics.request(route, request.method or "", status)
    metrics.transfer("in", declared_length(request.headers.get("Content-Length")))
    if request.method != "HEAD":
        metrics.transfer("out", declared_length(handler._headers.get("Content-Length")))
    if status < 400:
        if isinstance(handler, UPLOADS) and request.method in ("PUT", "POST", "PATCH"):
            metrics.duration("upload", request.request_time())
        elif isinstance(handler, FileSender) and request.method == "GET":
            metrics.duration("download", request.request_time())


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    async def get(self) -> None:
        core = self.ctx.core
        gauges = {
            "vault_uploads_in_progress": ("Uploads in progress.", float(core.uploads.total())),
            "vault_downloads_in_progress": ("Downloads in progress.", float(core.downloads.total())),
            "vault_download_segments_held": (
                "Decrypted download segments in memory (at most download_segments).",
                float(core.files.pipe.download_budget.held),
            ),
            "vault_bcrypt_queue_depth": ("bcrypt calls queued or running.", float(core.auth.pending_hashes)),
            "vault_database_bytes": ("Size of the database file.", float(await core.store.database_size())),
        }
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.ctx.metrics.render(gauges))


def make_metrics_app(ctx: Context) -> tornado.web.Application:
    return tornado.web.Application([(r"/metrics", MetricsHandler, {"ctx": ctx})])
