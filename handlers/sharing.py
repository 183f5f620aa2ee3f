"""Sharing: grants to other users, their "shared with me" view, and public links."""

import asyncio
import base64
import binascii
import datetime
import html
from typing import Any

from handlers.base import BaseHandler, JSONBodyHandler
from handlers.files import FileSender, file_json
from vault.errors import AuthError
from vault.sharing import LinkInfo, Reservation

LANDING_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def link_json(info: LinkInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "filename": info.name,
        "created": iso(info.created),
        "expires": iso(info.expires),
        "password": info.has_password,
        "max_downloads": info.max_downloads,
        "downloads_left": info.downloads_left,
    }


class SharesHandler(JSONBodyHandler):
    """``POST /files/<name>/shares`` {"username"} grants read access; ``GET`` lists grantees."""

    AUDITED = {"POST": "share"}

    async def post(self, name: str) -> None:
        identity = await self.authenticated()
        stored, username = await self.sharing.grant(identity, name, self.json_body().get("username"))
        self.write_json(201, {"message": "File shared", "filename": stored, "username": username})

    async def get(self, name: str) -> None:
        identity = await self.authenticated()
        stored, grantees = await self.sharing.grantees(identity, name)
        self.write_json(200, {"filename": stored, "shared_with": grantees})


class ShareHandler(BaseHandler):
    """``DELETE /files/<name>/shares/<username>`` revokes at once."""

    AUDITED = {"DELETE": "unshare"}

    async def delete(self, name: str, username: str) -> None:
        stored, user = await self.sharing.revoke(await self.authenticated(), name, username)
        self.write_json(200, {"message": "Share revoked", "filename": stored, "username": user})


class SharedListHandler(BaseHandler):
    """``GET /shared``: files other users shared with the caller."""

    async def get(self) -> None:
        shared = await self.sharing.shared_with(await self.authenticated())
        self.write_json(200, {"files": [{"owner": s.owner, **file_json(s.info)} for s in shared]})


class SharedDownloadHandler(FileSender):
    """``GET``/``HEAD /shared/<owner>/<name>``: a file shared with the caller (Range included)."""

    AUDITED = {"GET": "download-shared"}

    async def get(self, owner: str, name: str) -> None:
        await self.send_file(
            await self.sharing.open_shared(await self.authenticated(), owner, name), send_body=True
        )

    async def head(self, owner: str, name: str) -> None:
        await self.send_file(
            await self.sharing.open_shared(await self.authenticated(), owner, name), send_body=False
        )


class LinksHandler(JSONBodyHandler):
    """``POST /files/<name>/links`` {"expires_in", "password", "max_downloads"} (all optional)."""

    AUDITED = {"POST": "link-create"}

    async def post(self, name: str) -> None:
        identity = await self.authenticated()
        body = self.json_body(empty_ok=True)
        info, token = await self.sharing.create_link(
            identity, name, body.get("expires_in"), body.get("password"), body.get("max_downloads")
        )
        base = self.config.public_url or f"{self.request.protocol}://{self.request.host}"
        self.write_json(201, {"message": "Link created", "url": f"{base}/s/{token}", **link_json(info)})


class LinkListHandler(BaseHandler):
    """``GET /links``: the caller's links, with expiry and downloads left."""

    async def get(self) -> None:
        links = await self.sharing.links(await self.authenticated())
        self.write_json(200, {"links": [link_json(info) for info in links]})


class LinkRevokeHandler(BaseHandler):
    AUDITED = {"DELETE": "link-revoke"}

    async def delete(self, link_id: str) -> None:
        await self.sharing.revoke_link(await self.authenticated(), link_id)
        self.write_json(200, {"message": "Link revoked", "id": link_id})


class PublicLinkHandler(FileSender):
    """``GET``/``HEAD /s/<token>``: no account needed. curl gets the file; a browser or a
    link-preview bot (``Accept: text/html``) gets a small page, which costs no download; its
    button adds ``?dl=1``. A password comes as HTTP Basic (``curl -u :PASSWORD``)."""

    AUDITED = {"GET": "link-download"}

    reservation: Reservation | None = None
    charge_whole = False  # an empty file: one budget byte per download

    def auth_challenge(self, exc: AuthError) -> str:
        return 'Basic realm="vault link", charset="UTF-8"'

    def _password(self) -> str | None:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(":")[2]

    async def get(self, token: str) -> None:
        wants_page = (
            "text/html" in self.request.headers.get("Accept", "") and self.get_argument("dl", None) is None
        )
        link, download = await self.sharing.open_link(token, self._password())
        self.audit_actor = f"link {link.id}"
        if wants_page:
            download.close()
            self._landing_page(download.info.name, download.size)
            return
        self.link = link
        await self.send_file(download, send_body=True)

    async def head(self, token: str) -> None:
        link, download = await self.sharing.open_link(token, self._password())
        self.link = link
        await self.send_file(download, send_body=False)

    def before_body(self, nbytes: int, size: int) -> None:
        self.charge_whole = size == 0 and self.request.method == "GET"
        self.reservation = self.sharing.reserve(self.link, size, 1 if self.charge_whole else nbytes)

    def body_done(self) -> None:
        if self.reservation is not None and self.charge_whole:
            self.reservation.sent = 1

    def chunk_sent(self, nbytes: int) -> None:
        if self.reservation is not None:
            self.reservation.sent += nbytes

    def on_finish(self) -> None:
        super().on_finish()
        self._settle()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._settle()

    def _settle(self) -> None:
        if self.reservation is not None:
            reservation, self.reservation = self.reservation, None
            asyncio.ensure_future(reservation.close())

    def _landing_page(self, name: str, size: int) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", LANDING_CSP)
        self.set_header("X-Robots-Tag", "noindex")
        title = html.escape(name)
        self.finish(
            "<!doctype html><html><head><meta charset=utf-8><meta name=robots content=noindex>"
            f"<title>{title}</title></head><body style='font-family:sans-serif;margin:3em'>"
            f"<h1>{title}</h1><p>{size:,} bytes, shared with vault.</p>"
            "<p><a href='?dl=1' download>Download</a></p></body></html>\n"
        )


def routes() -> list[tuple[str, type]]:
    return [
        (r"/files/([^/]+)/shares", SharesHandler),
        (r"/files/([^/]+)/shares/([^/]+)", ShareHandler),
        (r"/shared", SharedListHandler),
        (r"/shared/([^/]+)/([^/]+)", SharedDownloadHandler),
        (r"/files/([^/]+)/links", LinksHandler),
        (r"/links", LinkListHandler),
        (r"/links/([A-Za-z0-9_-]{1,32})", LinkRevokeHandler),
        (r"/s/([A-Za-z0-9_-]{16,64})", PublicLinkHandler),
    ]
