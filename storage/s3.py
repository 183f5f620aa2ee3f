"""Segments in S3-compatible object storage, in front of any metadata store.

``blob_store: s3`` wraps the metadata store (SQLite, or any other :class:`vault.store.Store`):
each sealed segment becomes one object, and the store keeps the segment's row (file id, index,
tag, size) with an empty ``data``. The object key is derived from the file id, the index and the
tag, ``<prefix><file id>/<index>.<tag>`` (hex), so a rewritten segment (a resumed upload
re-sending a chunk) gets a new key and a reader, who asks for the tag the header committed to,
never meets a stale body. Order of writes: object first, then its row; the file commits in the
metadata store only after every row, so nothing half-written is ever visible. What can be left
behind (a crash between an object and its row, a discarded upload, replaced and deleted files
whose rows were purged) is an object no row names: :meth:`S3Segments.collect` removes those
older than a lease, and reports what it found (``run.py admin gc``).

Integrity needs nothing new: the header's segment root fixes every tag, and the pipeline checks
each object against its tag and its MAC (vault/pipeline.py), so a flipped, swapped, deleted or
replayed object is the same IntegrityError as a tampered row.

The HTTP client is aiohttp with a SigV4 signer of ours (storage/sigv4.py), chosen by
measurement (README, Object storage); it is imported only when ``blob_store`` is ``s3``.
"""

import asyncio
import dataclasses
import datetime
import email.utils
import hmac
import logging
import os
import re
import time
import warnings
import xml.etree.ElementTree as ET  # nosec B405  # parses only the configured object store's answers
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from storage import sigv4
from vault.errors import ConfigError, IntegrityError, ObjectStoreError
from vault.store import Collected, Store

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)
REQUIREMENTS = "requirements-s3.txt"
CONNECTIONS = 64  # open connections to the object store, all transfers together
MAX_OBJECT = 16 * 1024 * 1024 + 64  # the largest sealed segment (16 MiB) and its IV, padding, tag
LIST_PAGE = 1000
DELETE_PARALLEL = 8
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_KEY = re.compile(r"([0-9a-f]{32})/([0-9]{12})\.([0-9a-f]{64})")
ACCESS_KEY_VARIABLES = ("VAULT_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
SECRET_KEY_VARIABLES = ("VAULT_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        raise ConfigError(
            f"blob_store: s3 needs the package aiohttp: pip install -r {REQUIREMENTS}"
        ) from None
    return aiohttp


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # http(s)://host[:port], path-style requests
    bucket: str
    prefix: str
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)

    @classmethod
    def from_settings(
        cls, endpoint: str, bucket: str, prefix: str, region: str, environ: Mapping[str, str]
    ) -> "S3Config":
        """Credentials come from the environment only (they are secrets): ``VAULT_S3_*`` or the
        usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``)."""
        access = next((environ[v] for v in ACCESS_KEY_VARIABLES if environ.get(v)), "")
        secret = next((environ[v] for v in SECRET_KEY_VARIABLES if environ.get(v)), "")
        if not access or not secret:
            raise ConfigError(
                "blob_store: s3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            )
        return cls(
            endpoint.rstrip("/"), bucket, prefix, region, access, secret, environ.get("AWS_SESSION_TOKEN", "")
        )


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch, by the object store's clock


class S3Client:
    """The five S3 calls vault needs (PUT, GET, DELETE, list, HEAD bucket), path-style."""

    def __init__(self, config: S3Config, session: "aiohttp.ClientSession") -> None:
        self.config = config
        self._session = session
        self._host = urlsplit(config.endpoint).netloc

    @classmethod
    async def open(cls, config: S3Config, connections: int = CONNECTIONS) -> "S3Client":
        aiohttp = _import_aiohttp()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            auto_decompress=False,
        )
        return cls(config, session)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> "S3Client":
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    def _path(self, key: str = "") -> str:
        return f"/{self.config.bucket}/{key}" if key else f"/{self.config.bucket}"

    async def _request(
        self,
        method: str,
        key: str = "",
        query: Mapping[str, str] | None = None,
        body: bytes | bytearray = b"",
    ) -> tuple[int, Mapping[str, str], bytes | None]:
        """(status, headers, body); the body is None if it is larger than any segment (it is
        then never read). A network failure is ObjectStoreError."""
        path, query = self._path(key), dict(query or {})
        c = self.config
        headers = sigv4.sign(
            method,
            self._host,
            path,
            query,
            access_key=c.access_key,
            secret_key=c.secret_key,
            region=c.region,
            session_token=c.session_token,
        )
        headers["accept-encoding"] = "identity"
        url = c.endpoint + sigv4.quote_path(path)
        if query:
            url += "?" + sigv4.canonical_query(query)
        aiohttp = _import_aiohttp()
        try:
            async with self._session.request(
                method,
                url,
                data=_payload(aiohttp, body) if method == "PUT" else None,
                headers=headers,
                skip_auto_headers=("Content-Type",),
            ) as resp:
                return resp.status, resp.headers, await _read_capped(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.error("object store: %s %s failed: %s", method, key or c.bucket, exc)
            raise ObjectStoreError() from None

    def _refused(self, method: str, key: str, status: int, body: bytes | None) -> ObjectStoreError:
        log.error("object store: %s %s answered %d: %s", method, key, status, (body or b"")[:300])
        return ObjectStoreError()

    async def put(self, key: str, body: bytes | bytearray) -> None:
        status, _, answer = await self._request("PUT", key, body=body)
        if status != 200:
            raise self._refused("PUT", key, status, answer)

    async def get(self, key: str) -> bytes | None:
        """The object's body; None if there is none (or it is too big to be a segment)."""
        status, headers, body = await self._request("GET", key)
        if status == 404:
            return None
        if status != 200:
            raise self._refused("GET", key, status, body)
        if body is None:
            log.error("object store: %s is larger than any segment", key)
        return body

    async def delete(self, key: str) -> None:
        status, _, answer = await self._request("DELETE", key)
        if status not in (200, 204, 404):
            raise self._refused("DELETE", key, status, answer)

    async def check_bucket(self) -> None:
        status, _, answer = await self._request("HEAD")
        if status != 200:
            raise self._refused("HEAD", self.config.bucket, status, answer)

    async def list(self, prefix: str) -> AsyncIterator[tuple[ObjectInfo, float]]:
        """Every object under ``prefix``, each with the store's clock when its page was listed."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(LIST_PAGE)}
            if token:
                query["continuation-token"] = token
            status, headers, body = await self._request("GET", query=query)
            if status != 200 or body is None:
                raise self._refused("LIST", prefix, status, body)
            now = _http_date(headers.get("Date", "")) or time.time()
            # The configured object store's answer, not a client's; expat refuses entity bombs.
            root = ET.fromstring(body)  # noqa: S314  # nosec B314
            for item in root.iter(_NS + "Contents"):
                yield (
                    ObjectInfo(
                        item.findtext(_NS + "Key", ""),
                        int(item.findtext(_NS + "Size", "0")),
                        _iso_time(item.findtext(_NS + "LastModified", "")),
                    ),
                    now,
                )
            token = root.findtext(_NS + "NextContinuationToken", "")
            if root.findtext(_NS + "IsTruncated", "false") != "true" or not token:
                return


def _payload(aiohttp: Any, body: bytes | bytearray) -> Any:
    """The body as it is. aiohttp warns about any body over 1 MiB ("might lock the event
    loop"), but asyncio's transport writes what the socket takes and buffers the rest, and a
    sealed segment is already in memory: copying it into a BytesIO would only cost CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return aiohttp.BytesPayload(body)


async def _read_capped(resp: "aiohttp.ClientResponse") -> bytes | None:
    """The body, or None if it is larger than any segment: nothing bigger is held."""
    if resp.content_length is not None:
        return None if resp.content_length > MAX_OBJECT else await resp.read()
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > MAX_OBJECT:
            return None
    return bytes(body)


def _http_date(text: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


def _iso_time(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return time.time()  # unknown age: treated as new, so kept for another lease


@dataclass
class _Tally:
    objects: int = 0
    referenced: int = 0
    removed: int = 0
    removed_bytes: int = 0
    young: int = 0
    foreign: int = 0


class S3Segments:
    """A :class:`Store` whose segment bytes live in S3; every other call goes to ``inner``."""

    def __init__(self, inner: Store, client: S3Client, lease: float) -> None:
        self._inner = inner
        self.client = client
        self.lease = lease
        self._prefix = client.config.prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def inner(self) -> Store:
        """The metadata store (the shared state of several instances opens on it)."""
        return self._inner

    def key(self, file_id: bytes, index: int, tag: bytes) -> str:
        return f"{self._prefix}{file_id.hex()}/{index:012d}.{tag.hex()}"

    async def put_segment(
        self, file_id: bytes, index: int, tag: bytes, blob: bytes | bytearray, size: int | None = None
    ) -> None:
        key = self.key(file_id, index, tag)
        await self.client.put(key, blob)
        try:
            await self._inner.put_segment(file_id, index, tag, b"", len(blob))
        except Exception:
            await self._forget([key])  # its row was refused: the object is an orphan already
            raise

    async def read_segment(self, file_id: bytes, index: int, tag: bytes) -> bytes | None:
        """The object; if there is none, the row's own bytes, if it has any (a vault whose
        segments are still in the database reads on while ``admin migrate`` moves them)."""
        blob = await self.client.get(self.key(file_id, index, tag))
        if blob is None:
            in_row = await self._inner.read_segment(file_id, index, tag)
            return in_row or None
        return blob

    async def move_segment(self, file_id: bytes, index: int, tag: bytes, to_objects: bool) -> bool:
        """Row to object: PUT, then empty the row. Object to row: fill the row, then DELETE.
        Either way a crash in between leaves both copies, and the next run finishes the move."""
        in_row = await self._inner.read_segment(file_id, index, tag)
        if in_row is None:
            raise IntegrityError()
        key = self.key(file_id, index, tag)
        if to_objects == (not in_row):
            return False
        blob = in_row if to_objects else await self.client.get(key)
        if blob is None or not hmac.compare_digest(blob[-len(tag) :], tag):
            log.error("file %s: segment %d is missing or not the one committed", file_id.hex(), index)
            raise IntegrityError()
        if to_objects:
            await self.client.put(key, blob)
            await self._inner.put_segment(file_id, index, tag, b"", len(blob))
        else:
            await self._inner.put_segment(file_id, index, tag, blob)
            await self.client.delete(key)
        return True

    async def discard_file(self, file_id: bytes) -> None:
        rows = await self._inner.read_tags(file_id, 2**62)
        await self._inner.discard_file(file_id)
        await self._forget([self.key(file_id, index, tag) for index, tag in rows])

    async def purge(self, keep: Collection[bytes], staged_too: bool = False, now: float = 0.0) -> int:
        """Purge rows as the inner store does; their objects go at the next collection."""
        return await self._inner.purge(keep, staged_too, now)

    async def healthy(self) -> bool:
        if not await self._inner.healthy():
            return False
        try:
            await self.client.check_bucket()
        except ObjectStoreError:
            return False
        return True

    async def close(self) -> None:
        try:
            await self.client.close()
        finally:
            await self._inner.close()

    async def _forget(self, keys: list[str]) -> None:
        """Delete objects now, best effort: what fails is an orphan for the next collection."""
        for key in keys:
            try:
                await self.client.delete(key)
            except ObjectStoreError:
                return

    async def collect(self, lease: float | None = None) -> Collected:
        """Delete every object under the prefix that no segment row names and that is older
        than the lease (an upload writes its object just before the row). Safe beside a running
        server: a row is never written for an object older than the lease."""
        lease = self.lease if lease is None else lease
        found = _Tally()
        batch: list[ObjectInfo] = []
        file_id: bytes | None = None
        now = time.time()
        async for info, now in self.client.list(self._prefix):
            found.objects += 1
            parsed = _KEY.fullmatch(info.key[len(self._prefix) :])
            if parsed is None:
                found.foreign += 1
                continue
            fid = bytes.fromhex(parsed.group(1))
            if fid != file_id and batch:
                await self._collect_file(file_id or b"", batch, found, now - lease)
                batch = []
            file_id = fid
            batch.append(info)
        if batch:
            await self._collect_file(file_id or b"", batch, found, now - lease)
        if found.removed:
            log.info(
                "object store: removed %d orphan object(s), %d bytes", found.removed, found.removed_bytes
            )
        return Collected(**dataclasses.asdict(found))

    async def _collect_file(
        self, file_id: bytes, objects: list[ObjectInfo], found: _Tally, before: float
    ) -> None:
        named = {self.key(file_id, index, tag) for index, tag in await self._inner.read_tags(file_id, 2**62)}
        doomed = []
        for info in objects:
            if info.key in named:
                found.referenced += 1
            elif info.modified > before:
                found.young += 1
            else:
                doomed.append(info)
        for start in range(0, len(doomed), DELETE_PARALLEL):
            chunk = doomed[start : start + DELETE_PARALLEL]
            await asyncio.gather(*(self.client.delete(info.key) for info in chunk))
            found.removed += len(chunk)
            found.removed_bytes += sum(info.size for info in chunk)


async def open_s3_segments(
    inner: Store,
    *,
    endpoint: str,
    bucket: str,
    prefix: str,
    region: str,
    lease: float,
    environ: Mapping[str, str] | None = None,
) -> Store:
    """``inner`` with its segments in the bucket (checked to answer before anything is served)."""
    config = S3Config.from_settings(
        endpoint, bucket, prefix, region, os.environ if environ is None else environ
    )
    client = await S3Client.open(config)
    try:
        await client.check_bucket()
    except BaseException:
        await client.close()
        raise
    return cast(Store, S3Segments(inner, client, lease))
