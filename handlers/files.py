"""Files: streaming uploads (multipart POST and raw PUT), downloads, listing and deletion."""

import asyncio
import base64
import binascii
import contextlib
import datetime
import email.utils
import logging
import mimetypes
import re
import urllib.parse
from collections.abc import AsyncGenerator
from typing import Any

import tornado.iostream
import tornado.web

from handlers.base import BaseHandler, BodyHandler
from handlers.headers import declared_length
from handlers.paging import page_json, page_query
from handlers.ranges import if_range_holds, none_match, parse_range
from handlers.redact import safe_path
from handlers.stream import send_now
from vault.auth import Identity
from vault.download import PIECE, Abandoned, Download
from vault.errors import InputError, IntegrityError, MalformedUpload
from vault.multipart import MultipartParser, PartData, PartEnd, PartStart, boundary_from_content_type
from vault.names import check_filename, check_new_filename
from vault.records import FileInfo
from vault.store import Hold
from vault.upload import Upload

log = logging.getLogger(__name__)
CHUNK_ALLOWANCE = 1024 * 1024
DOWNLOAD_CSP = "sandbox; default-src 'none'"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
_DIGEST_RE = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]+):", re.IGNORECASE)


def file_json(info: FileInfo) -> dict[str, Any]:
    created = datetime.datetime.fromtimestamp(info.created, datetime.UTC)
    return {
        "filename": info.name,
        "size": info.size,
        "sha256": info.sha256,
        "created": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback plus ``filename*`` whenever the name is not plain ASCII."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + urllib.parse.quote(name, safe="")
    return value


def expected_digest(headers: Any) -> bytes | None:
    """The sha-256 a client declared in Repr-Digest or Content-Digest (RFC 9530), if any."""
    for header in ("Repr-Digest", "Content-Digest"):
        value = headers.get(header)
        if value is None:
            continue
        match = _DIGEST_RE.search(value)
        if not match:
            raise InputError(f"Unsupported {header}: send sha-256=:<base64>:")
        try:
            digest = base64.b64decode(match.group(1), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            raise InputError(f"Malformed {header}: sha-256 must be 32 bytes in base64")
        return digest
    return None


class UploadHandler(BodyHandler):
    """Shared by both upload routes: auth and admission in ``prepare``, clean-up on failure."""

    DRAIN_AFTER_ERROR = True  # put() and post() do nothing once failed
    upload: Upload | None = None
    slack = 0

    async def prepare(self) -> None:
        self.identity: Identity = await self.authenticated()
        self.check_request()
        length = declared_length(self.request.headers)
        self.digest = expected_digest(self.request.headers)
        # The slot before the reservation, and nothing that can fail after it: a request
        # refused here holds no quota while its body drains (see BodyHandler.send_error).
        await self.take_upload_slot(self.identity.user_id)
        try:
            self.upload = await self.files.begin_upload(self.identity.user_id, length, slack=self.slack)
        except BaseException:
            # Refused (413 over quota, ...): the slot is free before the answer goes out, so a
            # client's next upload, on any worker or instance, does not find it taken (429).
            await self.give_back_slot()
            raise
        limit = self.upload.max_size
        assert limit is not None
        # Tornado's own cap (a bare 400) sits one chunk above ours, so ours answers first: 413.
        self.connection.set_max_body_size(limit + self.slack + CHUNK_ALLOWANCE)
        self.watch_body(upload=True)

    def check_request(self) -> None:
        """Route-specific checks made before any of the body is read."""

    async def write_body(self, data: bytes | bytearray | memoryview) -> None:
        assert self.upload is not None
        await self.upload.write(data)

    async def drop_body(self) -> None:
        if self.upload is not None:
            await self.upload.abort()

    async def commit(self, name: str) -> None:
        assert self.upload is not None
        info = await self.upload.finish(name, self.digest)  # on failure, on_finish removes it
        await self.give_back_slot()
        self.write_json(201, {"message": "File uploaded successfully", **file_json(info)})

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends the request: Tornado resolves the body future here
        self._remove_uncommitted()

    def on_finish(self) -> None:
        """Whatever the answer was, an upload that did not commit is removed (a no-op otherwise)."""
        super().on_finish()
        self._remove_uncommitted()

    def _remove_uncommitted(self) -> None:
        if self.upload is not None:
            asyncio.ensure_future(self.upload.abort())


class RawUploadHandler(UploadHandler):
    """``PUT /upload/<filename>`` with the file as the body (``curl -T``)."""

    AUDITED = {"PUT": "upload"}

    SUPPORTED_METHODS = ("PUT",)  # anything else is 405 before prepare() reads a thing

    def check_request(self) -> None:
        check_new_filename(self.path_args[0])

    async def take_chunk(self, chunk: bytes) -> None:
        await self.write_body(chunk)

    async def put(self, name: str) -> None:
        if not self.failed:
            await self.commit(name)


class MultipartUploadHandler(UploadHandler):
    """``POST /upload`` with multipart/form-data, the file in the field ``file`` (``curl -F``)."""

    AUDITED = {"POST": "upload"}

    SUPPORTED_METHODS = ("POST",)

    slack = MULTIPART_SLACK

    async def prepare(self) -> None:
        await super().prepare()
        self.parser = MultipartParser(
            boundary_from_content_type(self.request.headers.get("Content-Type", ""))
        )
        self.filename: str | None = None
        self.in_file = False

    async def take_chunk(self, chunk: bytes) -> None:
        for event in self.parser.feed(chunk):
            await self._event(event)

    async def _event(self, event: object) -> None:
        if isinstance(event, PartStart):
            params = event.disposition
            if params.get("name") != "file":
                return
            if self.filename is not None:
                raise MalformedUpload("Malformed multipart upload: send exactly one part named 'file'")
            if "filename" not in params:
                raise MalformedUpload("Malformed multipart upload: the 'file' part needs a filename")
            self.filename = check_new_filename(params["filename"])
            self.in_file = True
        elif isinstance(event, PartData) and self.in_file:
            await self.write_body(event.data)
        elif isinstance(event, PartEnd):
            self.in_file = False

    async def post(self) -> None:
        if self.failed:
            return
        self.parser.finish()
        if self.filename is None:
            raise MalformedUpload("Malformed multipart upload: missing the field 'file'")
        await self.commit(self.filename)


class FileSender(BaseHandler):
    """Sends a verified file: streamed segment by segment, with a single byte range,
    conditional requests, a strong ETag and an RFC 9530 Repr-Digest. Subclasses find the file
    and may meter the body through ``before_body`` and ``chunk_sent``."""

    range_start = 0  # the first byte the response sends (set before before_body)

    async def before_body(self, nbytes: int, size: int) -> None:
        """Called with the body's length (what a GET would send, for HEAD too) and the file's
        size before any header is sent; may refuse by raising."""

    def chunk_sent(self, nbytes: int) -> None:
        """Called after each chunk reached the socket."""

    def body_done(self) -> None:
        """Called when the whole body was sent."""

    _abandoned = False  # the response was cut short (the client left, or a segment failed)
    _download_slots: tuple[Hold, ...] | None = None
    _ended = False
    _sending: Download | None = None

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> "asyncio.Future[None]":
        """As Tornado's, except for a response cut short: that one is over, not finished."""
        if self._abandoned:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return super().finish(chunk)

    async def send_file(
        self,
        download: Download,
        send_body: bool | None = None,
        *,
        user: int | None = None,
        link: str | None = None,
    ) -> None:
        """Send ``download`` (then close it); without ``send_body``, HEAD gets no body. A body
        takes a download slot of ``user`` or ``link`` and of the client's address (429 beyond
        the caps) until the request ends."""
        if send_body is None:
            send_body = self.request.method != "HEAD"
        self._sending = download
        try:
            await self._send(download, send_body, user, link)
        finally:
            download.close()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._sending is not None:
            self._sending.abandon()  # its memory now; its pin when send_file ends

    def end_request(self) -> None:
        super().end_request()
        self._ended = True
        self._release_download_slots()

    def _release_download_slots(self) -> None:
        if self._download_slots is not None:
            # Free from here on: a one-process state gives them back in the task's first step.
            asyncio.ensure_future(self.core.downloads.release(self._download_slots))
            self._download_slots = None

    async def _send(self, download: Download, send_body: bool, user: int | None, link: str | None) -> None:
        info, headers = download.info, self.request.headers
        etag = f'"{info.etag}"'
        last_modified = email.utils.formatdate(info.created, usegmt=True)
        self.set_header("ETag", etag)
        self.set_header("Last-Modified", last_modified)
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Cache-Control", "private, no-store")
        if none_match(headers.get("If-None-Match"), etag):
            self.set_status(304)
            self.finish()
            return
        byte_range = None
        if if_range_holds(headers.get("If-Range"), etag, last_modified):
            byte_range = parse_range(headers.get("Range"), info.size)
        start, end = byte_range or (0, info.size)
        if byte_range is not None:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{info.size}")
        self.set_header("Content-Type", mimetypes.guess_type(info.name)[0] or "application/octet-stream")
        self.set_header("Content-Disposition", content_disposition(info.name))
        # Opened in a browser tab anyway (a link to it, a plugin): never runs as vault's origin.
        self.set_header("Content-Security-Policy", DOWNLOAD_CSP)
        self.set_header("Content-Length", str(end - start))
        self.set_header(
            "Repr-Digest", "sha-256=:" + base64.b64encode(bytes.fromhex(info.sha256)).decode() + ":"
        )
        self.range_start = start
        if send_body and self._download_slots is None:
            self._download_slots = await self.core.downloads.acquire(
                user=user, link=link, address=self.client_address()
            )
            if self._ended:  # the connection closed while the shared state was asked
                self._release_download_slots()
                self._abandoned = True
                return
        await self.before_body(end - start, info.size)
        if send_body:
            await self._stream(download.read(start, end))
        if not self._abandoned and not self._finished:
            self.body_done()
            self.finish()

    async def _stream(self, views: AsyncGenerator[memoryview, int | None]) -> None:
        """The body, a segment's view at a time (``Download.read``). What the socket takes at
        once goes to it straight from the decrypted segment, a PIECE at a time, with no copy
        and no write future (``send_now``). The first piece (with the headers), and a piece
        the socket has no room for, is copied out and written through Tornado, and the view
        is dropped before waiting for the client (the download reads ahead only meanwhile):
        a stalled client holds that copy alone, and its segments can be reclaimed. A client
        that takes none of it for ``send_timeout`` seconds is cut off, which frees the
        download's slot, pin and memory."""
        try:
            async with contextlib.aclosing(views):
                taken: int | None = None
                while True:
                    try:
                        view = await views.asend(taken)
                    except StopAsyncIteration:
                        break
                    sent, size, piece = 0, len(view), b""
                    while sent < size:
                        # The first piece goes out with the headers, through Tornado (so a
                        # segment that fails before it still gets an error status).
                        headed = self._headers_written
                        count = send_now(self.connection, view[sent : sent + PIECE]) if headed else 0
                        if not count:  # the socket is full: these same bytes, through Tornado
                            piece = bytes(view[sent : sent + PIECE])
                            break
                        sent += count
                    del view  # the segment is the download's again (reclaimable) while we wait
                    if sent:
                        self.chunk_sent(sent)
                    taken = sent
                    if piece:
                        self.write(piece)
                        await self._flushed(self.flush())
                        self.chunk_sent(len(piece))
                        taken += len(piece)
        except (tornado.iostream.StreamClosedError, Abandoned):
            self._abandoned = True  # the client went away
        except IntegrityError:
            if not self._headers_written:
                raise
            # Headers are out: abort so the client sees a short body, never altered bytes.
            self._cut()

    async def _flushed(self, flushed: "asyncio.Future[None]") -> None:
        if not flushed.done():
            await self._drained(flushed)
        flushed.result()

    async def _drained(self, flushed: "asyncio.Future[None]") -> None:
        """Wait for ``flushed``, at most ``send_timeout`` seconds; then close the connection."""
        timeout = self.config.send_timeout
        try:
            await asyncio.wait_for(asyncio.shield(flushed), timeout)
        except TimeoutError:
            flushed.add_done_callback(lambda f: f.cancelled() or f.exception())  # fails at the close
            log.info(
                "%s %s: the client took nothing for %d s (send_timeout): closed",
                self.request.method,
                safe_path(self.request.path),
                timeout,
            )
            self.ctx.metrics.send_timeouts += 1
            self._cut()
            raise tornado.iostream.StreamClosedError() from None

    def _cut(self) -> None:
        """Close the connection under the response. Tornado tells the handler only when the
        client closes, so the request ends here as it would then (slots, memory, in flight)."""
        self._abandoned = True
        self.connection.close()
        self.on_connection_close()


class DownloadHandler(FileSender):
    """``GET``/``HEAD /download/<filename>``: the caller's own file."""

    AUDITED = {"GET": "download"}

    async def get(self, name: str) -> None:
        identity = await self.authenticated()
        await self.send_file(await self.files.open(identity.user_id, name), user=identity.user_id)

    async def head(self, name: str) -> None:
        await self.get(name)  # as GET, without the body (send_file looks at the method)


class ListHandler(BaseHandler):
    async def get(self) -> None:
        identity = await self.authenticated()
        query = page_query(self)
        if query is None:
            self.write_json(
                200, {"files": [file_json(info) for info in await self.files.list(identity.user_id)]}
            )
        else:
            self.write_json(
                200, page_json("files", await self.files.page(identity.user_id, *query), file_json)
            )


class MeHandler(BaseHandler):
    """``GET /me``: who the token speaks for, storage used, quota and largest file allowed."""

    async def get(self) -> None:
        identity = await self.authenticated()
        usage = await self.files.usage(identity.user_id)
        self.write_json(
            200,
            {
                "username": identity.username,
                "files": usage.files,
                "usage": usage.used,
                "stored": await self.files.stored(identity.user_id),
                "quota": usage.limits.quota,
                "max_file_size": usage.limits.max_file_size,
            },
        )


class DeleteHandler(BaseHandler):
    AUDITED = {"DELETE": "delete"}

    async def delete(self, name: str) -> None:
        identity = await self.authenticated()
        await self.files.delete(identity.user_id, name)
        self.write_json(200, {"message": "File deleted", "filename": check_filename(name)})


def routes() -> list[tuple[str, type]]:
    return [
        (r"/upload", MultipartUploadHandler),
        (r"/upload/(.*)", RawUploadHandler),  # an empty name is answered "Invalid filename"
        (r"/download/(.+)", DownloadHandler),
        (r"/files", ListHandler),
        (r"/me", MeHandler),
        (r"/files/([^/]+)", DeleteHandler),
    ]
