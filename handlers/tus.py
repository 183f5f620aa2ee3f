"""Resumable uploads: the tus 1.0.0 protocol (core, creation, creation-with-upload,
termination, expiration, checksum with sha256 or sha1) behind the same Bearer-token auth.

``POST /tus`` creates an upload (optionally with its first bytes), ``HEAD /tus/<id>`` tells
the offset, ``PATCH /tus/<id>`` appends, ``DELETE /tus/<id>`` abandons it. The upload becomes an
ordinary file, atomically, when its last byte is stored. See docs/FORMAT.md for how the partial
segment between two requests is kept encrypted.
"""

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import logging

from tornado.httputil import HTTPServerRequest

from handlers.base import BodyHandler
from handlers.files import CHUNK_ALLOWANCE, file_json
from handlers.headers import declared_length, parse_length
from vault.errors import (
    ChecksumMismatch,
    InputError,
    NotFound,
    OffsetMismatch,
    PreconditionFailed,
    UnsupportedMediaType,
)
from vault.records import UploadState
from vault.resumable import ResumedUpload

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
OVERRIDABLE = ("PATCH", "DELETE")  # X-HTTP-Method-Override on a POST (tus 1.0.0: a server MUST)
TUS_EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
OFFSET_TYPE = "application/offset+octet-stream"
MAX_METADATA_BYTES = 4096
# sha1 only because tuspy cannot send anything else; the checksum guards a chunk against
# corruption in transit, while TLS and the per-segment MACs guard against attackers.
CHECKSUM_ALGORITHMS = ("sha256", "sha1")


def parse_metadata(header: str | None) -> dict[str, bytes]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (the value is optional)."""
    if not header:
        return {}
    if len(header) > MAX_METADATA_BYTES:
        raise InputError("Upload-Metadata is too long")
    pairs: dict[str, bytes] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition(" ")
        if not key or not key.isascii() or " " in value.strip():
            raise InputError("Malformed Upload-Metadata")
        try:
            pairs[key] = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"Malformed Upload-Metadata: the value of {key!r} is not base64") from None
    return pairs


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64>`` of this request's body: (algorithm, digest)."""
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InputError("Unsupported Upload-Checksum algorithm: use sha256 (or sha1)")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise InputError(f"Malformed Upload-Checksum: not a {algorithm} digest in base64")
    return algorithm, digest


def apply_method_override(request: HTTPServerRequest) -> None:
    """A POST to an upload with ``X-HTTP-Method-Override: PATCH`` (or DELETE) is that method
    (tus 1.0.0: a server MUST honour it, for clients that can only send GET and POST). Done
    before routing, so the handler and its method checks see the real method."""
    override = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
    if request.method == "POST" and override in OVERRIDABLE and request.path.startswith("/tus/"):
        request.method = override


class TusHandler(BodyHandler):
    """Protocol headers, OPTIONS discovery, and the body streaming both write routes share."""

    DRAIN_AFTER_ERROR = True  # post() and patch() do nothing once failed
    session: ResumedUpload | None = None

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Tus-Resumable", TUS_VERSION)
        self.set_header("Tus-Version", TUS_VERSION)  # also on errors: send_error resets headers

    async def options(self, *args: str) -> None:
        self.set_header("Tus-Extension", TUS_EXTENSIONS)
        self.set_header("Tus-Max-Size", str(self.files.max_file_size))
        self.set_header("Tus-Checksum-Algorithm", ",".join(CHECKSUM_ALGORITHMS))
        self.set_status(204)
        self.finish()

    def check_protocol(self) -> None:
        if self.request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise PreconditionFailed(f"Send Tus-Resumable: {TUS_VERSION}")

    def expect_body(self, remaining: int) -> None:
        """Checks for a request that appends bytes, before any of it is read: content type,
        checksum, and a declared length that fits what the upload still expects."""
        if self.request.headers.get("Content-Type", "").split(";")[0].strip().lower() != OFFSET_TYPE:
            raise UnsupportedMediaType(f"Content-Type must be {OFFSET_TYPE}")
        declared = declared_length(self.request.headers)
        if declared is not None and declared > remaining:
            raise InputError(f"The body goes beyond the declared Upload-Length: {remaining} bytes remain")
        checksum = parse_checksum(self.request.headers.get("Upload-Checksum"))
        self.checksum = checksum[1] if checksum else None
        self.body_sha = hashlib.new(checksum[0]) if checksum else None
        self.connection.set_max_body_size(remaining + CHUNK_ALLOWANCE)

    async def take_chunk(self, chunk: bytes) -> None:
        if self.session is None:
            return
        if self.body_sha is not None:
            self.body_sha.update(chunk)
        await self.session.write(chunk)

    async def drop_body(self) -> None:
        if self.session is not None:
            await self.session.discard()

    async def save_body(self) -> int:
        """Keep what arrived (unless its checksum fails) and return the new offset."""
        assert self.session is not None
        if self.body_sha is not None and self.checksum is not None:
            if not hmac.compare_digest(self.body_sha.digest(), self.checksum):
                await self.session.discard()
                raise ChecksumMismatch()
        return await self.session.save()

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends the request: Tornado resolves the body future here
        if self.session is not None and not self.session.done:
            asyncio.ensure_future(self.interrupted(self.session))

    def on_finish(self) -> None:
        super().on_finish()
        if self.session is not None and not self.session.done:  # an error answer
            asyncio.ensure_future(self.session.discard())

    async def interrupted(self, session: ResumedUpload) -> None:
        """tus asks a server to keep what an interrupted request delivered; with a checksum
        the partial chunk cannot be verified, so it is dropped."""
        try:
            if self.body_sha is not None:
                await session.discard()
            else:
                await session.save()
        except Exception:
            log.exception("saving an interrupted resumable upload failed")
            await session.discard()

    def upload_headers(self, upload: UploadState, offset: int) -> None:
        self.set_header("Upload-Offset", str(offset))
        self.set_header("Upload-Expires", email.utils.formatdate(upload.expires, usegmt=True))


class TusCreateHandler(TusHandler):
    """``POST /tus``: Upload-Length and Upload-Metadata (``filename``) create an upload."""

    AUDITED = {"POST": "upload-create"}

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        self.check_protocol()
        identity = await self.authenticated()
        if "Upload-Defer-Length" in self.request.headers:
            raise InputError("Upload-Defer-Length is not supported: send Upload-Length")
        length = parse_length(self.request.headers.get("Upload-Length"), "Upload-Length")
        raw_metadata = self.request.headers.get("Upload-Metadata", "")
        metadata = parse_metadata(raw_metadata)
        name_bytes = metadata.get("filename", metadata.get("name"))
        if name_bytes is None:
            raise InputError("Upload-Metadata must carry the file name as 'filename'")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("The file name in Upload-Metadata must be UTF-8") from None
        has_body = self.request.headers.get("Content-Length", "0") != "0" or (
            "Transfer-Encoding" in self.request.headers
        )
        if has_body:
            self.expect_body(length)
            await self.take_upload_slot(identity.user_id)
        else:
            self.connection.set_max_body_size(0)
            self.body_sha = None
        try:
            self.upload = await self.files.resumables.create(identity.user_id, name, length, raw_metadata)
            if has_body or length == 0:
                self.session = await self.files.resumables.resume(identity.user_id, self.upload.tus_id, 0)
        except BaseException:
            await self.give_back_slot()  # refused: free before the answer (see UploadHandler.prepare)
            raise
        if has_body:
            self.watch_body(upload=True)

    async def interrupted(self, session: ResumedUpload) -> None:
        """The client never learnt the upload's URL, so it could not resume it: remove it."""
        await session.discard()
        await self._remove_created()

    def on_finish(self) -> None:
        super().on_finish()
        if self.get_status() >= 400 and getattr(self, "upload", None) is not None:
            asyncio.ensure_future(self._remove_created())

    async def _remove_created(self) -> None:
        try:
            await self.files.resumables.terminate(self.upload.owner, self.upload.tus_id)
        except NotFound:
            pass

    async def post(self) -> None:
        if self.failed:
            return
        offset = await self.save_body() if self.session is not None else 0
        self.set_header("Location", f"{self.request.protocol}://{self.request.host}/tus/{self.upload.tus_id}")
        self.upload_headers(self.upload, offset)
        body: dict[str, object] = {"message": "Upload created", "offset": offset}
        if self.session is not None and self.session.info is not None:
            body = {"message": "File uploaded successfully", **file_json(self.session.info)}
        await self.give_back_slot()
        self.write_json(201, body)


class TusUploadHandler(TusHandler):
    """``HEAD``, ``PATCH`` and ``DELETE /tus/<id>``."""

    AUDITED = {"PATCH": "upload-append", "DELETE": "upload-terminate"}

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        self.check_protocol()
        self.identity = await self.authenticated()
        if self.request.method == "PATCH":
            offset = parse_length(self.request.headers.get("Upload-Offset"), "Upload-Offset")
            upload = await self.files.resumables.state(self.identity.user_id, self.path_args[0])
            if offset != upload.offset:
                raise OffsetMismatch(f"Upload-Offset must be {upload.offset}")
            self.expect_body(upload.length - offset)
            await self.take_upload_slot(self.identity.user_id)
            try:
                self.session = await self.files.resumables.resume(
                    self.identity.user_id, self.path_args[0], offset
                )
            except BaseException:
                await self.give_back_slot()  # refused: free before the answer
                raise
            self.watch_body(upload=True)
        else:
            self.connection.set_max_body_size(0)

    async def head(self, tus_id: str) -> None:
        upload = await self.files.resumables.state(self.identity.user_id, tus_id)
        self.upload_headers(upload, upload.offset)
        self.set_header("Upload-Length", str(upload.length))
        if upload.metadata:
            self.set_header("Upload-Metadata", upload.metadata)
        self.set_status(200)
        self.finish()

    async def patch(self, tus_id: str) -> None:
        if self.failed or self.session is None:
            return
        offset = await self.save_body()
        await self.give_back_slot()
        self.upload_headers(self.session.state, offset)
        self.set_status(204)
        self.finish()

    async def delete(self, tus_id: str) -> None:
        await self.files.resumables.terminate(self.identity.user_id, tus_id)
        self.set_status(204)
        self.finish()


def routes() -> list[tuple[str, type]]:
    return [
        (r"/tus/?", TusCreateHandler),
        (r"/tus/([A-Za-z0-9_-]{1,64})", TusUploadHandler),
    ]
