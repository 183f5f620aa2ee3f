"""Pages: the web app's one page and its static assets, read once from ``handlers/web/``, and
the headers every page carries (a strict CSP, no referrer, no framing)."""

import functools
import hashlib
import html
import string
from dataclasses import dataclass
from pathlib import Path

import tornado.web

from handlers.base import BaseHandler

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSET_TYPES = {
    ".js": "text/javascript; charset=UTF-8",
    ".css": "text/css; charset=UTF-8",
    ".svg": "image/svg+xml",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Assets:
    """The static folder, read once: ``version`` (a hash of every asset) goes in their URLs."""

    version: str
    files: dict[str, tuple[bytes, str]]
    templates: dict[str, string.Template]


@functools.cache
def assets() -> Assets:
    files: dict[str, tuple[bytes, str]] = {}
    templates: dict[str, string.Template] = {}
    digest = hashlib.sha256()
    for path in sorted(WEB_DIR.iterdir()):
        data = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + data + b"\0")
        if path.suffix == ".html":
            templates[path.stem] = string.Template(data.decode("utf-8"))
        elif path.suffix in ASSET_TYPES:
            files[path.name] = (data, ASSET_TYPES[path.suffix])
    return Assets(digest.hexdigest()[:16], files, templates)


def render(template: str, /, **fields: str) -> str:
    """A page from ``handlers/web/<template>.html``; every field is HTML-escaped here."""
    a = assets()
    values = {key: html.escape(value) for key, value in fields.items()}
    return a.templates[template].substitute(values, static=f"/static/{a.version}")


def human_size(size: int) -> str:
    """1536 -> "1.5 KiB" (binary units, as the web app shows them)."""
    value, unit = float(size), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


class PageHeaders(BaseHandler):
    """Headers every page and asset carries: a strict CSP, no referrer, no framing."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cross-Origin-Opener-Policy", "same-origin")

    def write_page(self, status: int, page: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(page)


class IndexHandler(PageHeaders):
    """``GET /``: the app's one page; revalidated on every load so a new version shows at once."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.write_page(200, render("index"))

    def head(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish()


class AssetHandler(PageHeaders):
    """``GET /static/<version>/<name>``: cached for a year under the current version; another
    version (a page loaded before an upgrade) gets today's file, not cached."""

    def get(self, version: str, name: str) -> None:
        self._send(version, name, body=True)

    def head(self, version: str, name: str) -> None:
        self._send(version, name, body=False)

    def _send(self, version: str, name: str, body: bool) -> None:
        a = assets()
        if name not in a.files:
            raise tornado.web.HTTPError(404, "Not found")
        data, content_type = a.files[name]
        self.set_header("Cache-Control", IMMUTABLE if version == a.version else "no-cache")
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", str(len(data)))
        self.finish(data if body else None)


def routes() -> list[tuple[str, type]]:
    return [
        (r"/", IndexHandler),
        (r"/static/([A-Za-z0-9]{1,64})/([A-Za-z0-9_.-]{1,64})", AssetHandler),  # names: a lookup
    ]
