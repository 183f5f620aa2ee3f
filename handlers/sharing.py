"""Sharing: grants to other users, their "shared with me" view, and public links."""

import asyncio
import base64
import binascii
import datetime
import fcntl
import struct
import termios
import urllib.parse
from typing import Any

import tornado.web
from tornado.http1connection import HTTP1Connection

from handlers.base import BaseHandler, JSONBodyHandler, status_for
from handlers.files import FileSender, file_json
from handlers.pages import PageHeaders, human_size, render
from handlers.paging import page_json, page_query
from vault.errors import AuthError, TooLarge, VaultError
from vault.sharing import LinkInfo, Reservation, SharedFile
from vault.store import Link

MAX_FORM_BYTES = 4096  # the landing page's password form


def unacknowledged(connection: HTTP1Connection) -> int:
    """Bytes handed to the socket that the client has not acknowledged yet (Linux SIOCOUTQ),
    as close to delivery as TCP tells; 0 where it cannot be read."""
    try:
        sock = connection.stream.socket
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (AttributeError, OSError, ValueError):
        return 0
    return max(int(struct.unpack("i", raw)[0]), 0)


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
        identity = await self.authenticated()
        query = page_query(self)
        if query is None:
            whole = await self.sharing.shared_with(identity)
            self.write_json(200, {"files": [shared_json(s) for s in whole]})
        else:
            self.write_json(
                200, page_json("files", await self.sharing.shared_page(identity, *query), shared_json)
            )


def shared_json(shared: SharedFile) -> dict[str, Any]:
    return {"owner": shared.owner, **file_json(shared.info)}


class SharedDownloadHandler(FileSender):
    """``GET``/``HEAD /shared/<owner>/<name>``: a file shared with the caller (Range included)."""

    AUDITED = {"GET": "download-shared"}

    async def get(self, owner: str, name: str) -> None:
        identity = await self.authenticated()
        await self.send_file(
            await self.sharing.open_shared(identity, owner, name), send_body=True, user=identity.user_id
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
        identity = await self.authenticated()
        query = page_query(self)
        if query is None:
            self.write_json(200, {"links": [link_json(info) for info in await self.sharing.links(identity)]})
        else:
            self.write_json(
                200, page_json("links", await self.sharing.links_page(identity, *query), link_json)
            )


class LinkRevokeHandler(BaseHandler):
    AUDITED = {"DELETE": "link-revoke"}

    async def delete(self, link_id: str) -> None:
        await self.sharing.revoke_link(await self.authenticated(), link_id)
        self.write_json(200, {"message": "Link revoked", "id": link_id})


@tornado.web.stream_request_body
class PublicLinkHandler(PageHeaders, FileSender):
    """``GET``/``HEAD /s/<token>``: no account needed. curl gets the file; a browser or a
    link-preview bot (``Accept: text/html``) gets a page, which costs no download: the file's
    name, size, expiry and SHA-256 and a button that adds ``?dl=1``. A password comes as HTTP
    Basic (``curl -u :PASSWORD``) or, from the page, as ``POST /s/<token>`` (a form:
    ``password``, and ``dl`` to download), so a browser never shows its Basic-auth dialog."""

    AUDITED = {"GET": "link-download", "POST": "link-download"}

    reservation: Reservation | None = None
    charge_whole = False  # an empty file: one budget byte per download
    page = False  # errors are answered as a page (a browser asked)
    _closed = False  # the connection closed

    def prepare(self) -> None:
        limit = MAX_FORM_BYTES if self.request.method == "POST" else 0
        declared = self.request.headers.get("Content-Length", "0")
        self.page = self.request.method == "POST" or "text/html" in self.request.headers.get("Accept", "")
        if not declared.isdigit() or int(declared) > limit:
            raise TooLarge(f"Request body too large: at most {limit} bytes")
        self.connection.set_max_body_size(limit)
        self._form = bytearray()

    def data_received(self, chunk: bytes) -> None:
        self._form += chunk

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
        if self.page and self.get_argument("dl", None) is None:
            await self._landing_page(token, None)
            return
        await self._download(token, self._password())

    async def post(self, token: str) -> None:
        form = urllib.parse.parse_qs(self._form.decode("utf-8", "replace"))  # unknown fields: ignored
        password = form.get("password", [""])[0]
        if "dl" in form:
            await self._download(token, password)
        else:
            await self._landing_page(token, password)

    async def head(self, token: str) -> None:
        link, download = await self.sharing.open_link(token, self._password())
        self.link = link
        await self.send_file(download, send_body=False)

    async def _download(self, token: str, password: str | None) -> None:
        link, download = await self.sharing.open_link(token, password)
        self.audit_actor = f"link {link.id}"
        self.link = link
        await self.send_file(download, send_body=True, link=link.id)

    async def before_body(self, nbytes: int, size: int) -> None:
        if self.request.method == "HEAD":  # costs nothing, but answers what a GET would: 410
            await self.sharing.check_left(self.link, size, 1 if size == 0 else nbytes, self.range_start)
            return
        self.charge_whole = size == 0
        nbytes = 1 if self.charge_whole else nbytes
        self.reservation = await self.sharing.reserve(self.link, size, nbytes, self.range_start)
        if self._closed:  # the client left while the shared state was asked
            self._settle()

    def body_done(self) -> None:
        if self.reservation is not None and self.charge_whole:
            self.reservation.sent = 1

    def chunk_sent(self, nbytes: int) -> None:
        if self.reservation is not None:
            self.reservation.sent += nbytes
            self.reservation.unacked = unacknowledged(self.connection)

    def on_finish(self) -> None:
        super().on_finish()
        self._settle()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._closed = True
        self._settle()

    def _settle(self) -> None:
        if self.reservation is not None:
            reservation, self.reservation = self.reservation, None
            asyncio.ensure_future(reservation.close())

    async def _landing_page(self, token: str, password: str | None) -> None:
        try:
            link, download = await self.sharing.open_link(token, password)
        except AuthError:
            if password:
                raise
            self.write_page(200, link_page(locked=True))
            return
        download.close()
        self.audit_actor = f"link {link.id}"
        self.write_page(200, link_page(link, download.info, password=password or ""))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not self.page or not isinstance(exc, VaultError):
            super().write_error(status_code, **kwargs)
            return
        if isinstance(exc, AuthError):  # a wrong password: the form again (403: no Basic dialog)
            self.write_page(403, link_page(locked=True, message="Wrong password: try again."))
            return
        retry = getattr(exc, "retry_after", None)
        if retry is not None:
            self.set_header("Retry-After", str(retry))
        self.write_page(status_for(exc), link_page(message=exc.message))


def readable(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def link_page(
    link: Link | None = None,
    info: Any = None,
    *,
    password: str = "",
    locked: bool = False,
    message: str = "",
) -> str:
    """The landing page: the file (``link`` and ``info``), the password form (``locked``), or
    only ``message``; the template shows the parts that have content."""
    shown = info is not None
    return render(
        "link",
        title=info.name if shown else "A file shared with vault",
        message=message,
        name=info.name if shown else "",
        size=human_size(info.size) if shown else "",
        bytes=f"{info.size:,} bytes" if shown else "",
        expires=readable(link.expires) if shown and link is not None else "",
        sha256=info.sha256 if shown else "",
        password=password,
        info_class="" if shown else "hidden",
        get_class="" if shown and not password else "hidden",
        post_class="" if shown and password else "hidden",
        form_class="" if locked else "hidden",
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
