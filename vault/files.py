"""Files: the streaming upload and download pipelines on top of a :class:`Store`.

An upload cuts the incoming bytes into segments, seals each in the crypto thread pool (several
in flight, so both cores work) and writes it to the store as a STAGED file; the SHA-256 of the
plaintext is computed in order on a single hashing thread. ``finish`` then commits the
authenticated header in one transaction. A download verifies the header, then fetches, verifies
and decrypts only the segments a byte range needs, a few ahead of the client.
"""

import asyncio
import collections
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from vault import format as sfs
from vault.errors import (
    DigestMismatch,
    FileNotFound,
    InputError,
    IntegrityError,
    NotFound,
    OffsetMismatch,
    TooLarge,
)
from vault.keys import Keyring
from vault.names import check_filename
from vault.store import Resumable, Store, StoredFile

log = logging.getLogger(__name__)
T = TypeVar("T")
RESUMABLE_ID_BYTES = 16
OPEN_ATTEMPTS = 3


@dataclass(frozen=True)
class Limits:
    """What one user may store: ``quota`` None means no quota."""

    max_file_size: int
    quota: int | None


@dataclass(frozen=True)
class Usage:
    used: int
    files: int
    limits: Limits


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    sha256: str
    created: float
    etag: str

    @classmethod
    def of(cls, stored: StoredFile) -> "FileInfo":
        header = stored.header
        return cls(header.name, header.size, header.sha256.hex(), header.created, header.file_id.hex())


@dataclass
class ResumeState:
    """Where a resumable upload stands: its keys, the bytes stored so far, the plaintext of the
    partial segment and the SHA-256 of everything before it."""

    file_id: bytes
    file_key: bytes
    seg_size: int
    length: int
    offset: int
    tail: bytes
    sha: "hashlib._Hash"
    tags: bytes  # of the full segments before the offset, in index order


class FileService:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        *,
        seg_size: int,
        max_file_size: int,
        pipeline_depth: int,
        crypto: Executor,
        hasher: Executor,
        resumable_ttl: int = 86400,
        segments_in_flight: int = 8,
        default_quota: int = 0,
    ) -> None:
        sfs.check_seg_size(seg_size)
        self.store = store
        self.keyring = keyring
        self.seg_size = seg_size
        self.max_file_size = max_file_size
        self.pipeline_depth = pipeline_depth
        self._crypto = crypto
        self._hasher = hasher
        self.resumable_ttl = resumable_ttl
        self.default_quota = default_quota  # 0: none
        self._writing: collections.Counter[int] = collections.Counter()  # owner -> bytes in one-shot uploads
        # One bound for all uploads together: a sealed segment waiting for the database holds
        # two segment-sized buffers, so memory stays flat however many clients upload at once.
        self.slots = asyncio.Semaphore(segments_in_flight)
        self._pinned: collections.Counter[bytes] = collections.Counter()
        self._busy: set[str] = set()
        self._purging: asyncio.Future[None] | None = None
        self._purge_again = False  # resumable uploads a request is writing to right now
        # tus_id -> (offset, SHA-256 of the segments before it, last used): saves re-reading them
        self._hashes: dict[str, tuple[int, hashlib._Hash, float]] = {}

    def crypto(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._crypto, fn, *args)

    def hash(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._hasher, fn, *args)

    async def limits(self, owner: int) -> Limits:
        quota, max_file_size = await self.store.get_limits(owner)
        quota = self.default_quota if quota is None else quota
        return Limits(self.max_file_size if max_file_size is None else max_file_size, quota or None)

    async def usage(self, owner: int) -> Usage:
        used, files = await self.store.usage(owner)
        return Usage(used + self._writing[owner], files, await self.limits(owner))

    async def room(self, owner: int) -> int | None:
        """Bytes the owner may still store (None: no quota). Uploads under way count."""
        usage = await self.usage(owner)
        return None if usage.limits.quota is None else max(usage.limits.quota - usage.used, 0)

    def begin_upload(self, owner: int, max_size: int | None = None) -> "Upload":
        limit = self.max_file_size if max_size is None else min(max_size, self.max_file_size)
        return Upload(self, owner, limit)

    async def list(self, owner: int) -> list[FileInfo]:
        """The caller's files whose headers verify; a tampered row is left out (and logged)."""
        listed = []
        for stored in await self.store.list_files(owner):
            try:
                self._file_keys(stored)
            except IntegrityError:
                continue
            listed.append(FileInfo.of(stored))
        return listed

    async def delete(self, owner: int, name: str) -> None:
        if not await self.store.delete_file(owner, check_filename(name)):
            raise FileNotFound()
        await self.purge()

    async def purge(self, staged_too: bool = False) -> int:
        """Remove replaced and deleted files, expired resumable uploads and (at start-up) uploads
        cut off by a crash, except those a transfer still uses."""
        now = time.time()
        for tus_id in [t for t, (_, _, used) in self._hashes.items() if used < now - self.resumable_ttl]:
            del self._hashes[tus_id]
        return await self.store.purge(keep=self._pinned, staged_too=staged_too, now=now)

    async def close(self) -> None:
        """Let a background purge finish (it is safe to cut short, but tidier not to)."""
        if self._purging is not None:
            await asyncio.gather(self._purging, return_exceptions=True)

    def schedule_purge(self) -> None:
        """Purge soon, in the background; calls while one runs fold into one more pass."""
        if self._purging is None or self._purging.done():
            self._purging = asyncio.ensure_future(self._purge_in_background())
        else:
            self._purge_again = True

    async def _purge_in_background(self) -> None:
        self._purge_again = True
        while self._purge_again:
            self._purge_again = False
            try:
                await self.purge()
            except Exception:
                log.exception("background purge failed; the next one will retry")

    def _pin(self, file_id: bytes) -> None:
        self._pinned[file_id] += 1

    async def open(self, owner: int, name: str) -> "Download":
        """Find and verify a file (FORMAT.md steps 1-3) and pin it against purging."""
        name = check_filename(name)
        for _ in range(OPEN_ATTEMPTS):
            stored = await self.store.get_file(owner, name)
            if stored is None:
                raise FileNotFound()
            self._pin(stored.header.file_id)
            # Pinned: no purge removes it from now on. Was it replaced (and so perhaps being
            # purged already) between the lookup and the pin? Then take the new version.
            again = await self.store.get_file(owner, name)
            if again is not None and again.header.file_id == stored.header.file_id:
                try:
                    keys = self._file_keys(stored)
                    tags = await self._segment_tags(stored.header.file_id, stored.header.seg_count)
                    if not hmac.compare_digest(sfs.segment_root(tags), stored.header.seg_root):
                        log.error(
                            "file %s: segment tags do not match the header", stored.header.file_id.hex()
                        )
                        raise IntegrityError()
                    return Download(self, stored, keys, tags)
                except BaseException:
                    self._release(stored.header.file_id)
                    raise
            self._release(stored.header.file_id)
        raise FileNotFound()

    def _file_keys(self, stored: StoredFile) -> sfs.KeyPair:
        """Unwrap the file key and verify the header (FORMAT.md steps 2-3)."""
        header = stored.header
        kek = self.keyring.kek(stored.key_id)
        if (header.version, header.suite) not in sfs.SUPPORTED or kek is None:
            log.error("file %s: unknown format or key id %s", header.file_id.hex(), stored.key_id)
            raise IntegrityError()
        try:
            file_key = sfs.unwrap_file_key(kek, stored.key_id, header.file_id, stored.wrapped_key)
            keys = sfs.derive_file_keys(file_key, header.file_id)
            sfs.verify_header(keys, header, stored.header_tag)
        except IntegrityError:
            log.error("file %s: wrapped key or header failed verification", header.file_id.hex())
            raise
        return keys

    async def _segment_tags(self, file_id: bytes, count: int) -> bytes:
        """The tags of segments 0..count-1, concatenated; a gap or a stray row is an error."""
        rows = await self.store.read_tags(file_id, count)
        if len(rows) != count or any(i != n or len(t) != sfs.TAG_LEN for n, (i, t) in enumerate(rows)):
            log.error("file %s: segments missing", file_id.hex())
            raise IntegrityError()
        return b"".join(tag for _, tag in rows)

    async def create_resumable(self, owner: int, name: str, length: int, metadata: str) -> Resumable:
        """Register a resumable upload of ``length`` bytes; its key is wrapped at once so the
        upload survives a restart."""
        name = check_filename(name)
        limits = await self.limits(owner)
        if length > limits.max_file_size:
            raise TooLarge(f"File too large: the limit is {limits.max_file_size} bytes")
        room = await self.room(owner)
        if room is not None and length > room:
            raise TooLarge(f"Quota exceeded: {room} bytes of your quota are left")
        file_id, file_key, now = sfs.new_file_id(), sfs.new_file_key(), time.time()
        primary, tus_id = self.keyring.primary, secrets.token_urlsafe(RESUMABLE_ID_BYTES)
        ticket = sfs.UploadTicket(self.seg_size, file_id, owner, length, now, tus_id, name)
        upload = Resumable(
            tus_id=tus_id,
            file_id=file_id,
            owner=owner,
            name=name,
            length=length,
            offset=0,
            seg_size=self.seg_size,
            key_id=primary,
            wrapped_key=sfs.wrap_file_key(self.keyring.keks[primary], primary, file_id, file_key),
            tail=None,
            expires=now + self.resumable_ttl,
            metadata=metadata,
            created=now,
            tag=sfs.upload_tag(sfs.derive_file_keys(file_key, file_id), ticket),
        )
        await self.store.create_resumable(upload)
        return upload

    async def get_resumable(self, owner: int, tus_id: str) -> Resumable:
        upload = await self.store.get_resumable(owner, tus_id)
        if upload is None or upload.expires < time.time():
            raise NotFound("Upload not found")
        self._upload_keys(upload)
        return upload

    def _upload_keys(self, upload: Resumable) -> tuple[bytes, sfs.KeyPair]:
        """Unwrap a resumable upload's key and check its tag: (file key, derived keys)."""
        kek = self.keyring.kek(upload.key_id)
        try:
            if kek is None:
                raise IntegrityError()
            file_key = sfs.unwrap_file_key(kek, upload.key_id, upload.file_id, upload.wrapped_key)
            keys = sfs.derive_file_keys(file_key, upload.file_id)
            ticket = sfs.UploadTicket(
                upload.seg_size,
                upload.file_id,
                upload.owner,
                upload.length,
                upload.created,
                upload.tus_id,
                upload.name,
            )
            sfs.verify_upload(keys, ticket, upload.tag)
        except IntegrityError:
            log.error("resumable upload %s failed its integrity check", upload.file_id.hex())
            raise
        return file_key, keys

    async def resume(self, owner: int, tus_id: str, offset: int) -> "ResumedUpload":
        """Open a resumable upload for one request that appends at ``offset``."""
        upload = await self.get_resumable(owner, tus_id)
        if tus_id in self._busy:
            raise OffsetMismatch("Another request is writing to this upload; retry with HEAD")
        if offset != upload.offset:
            raise OffsetMismatch(f"Upload-Offset must be {upload.offset}")
        self._busy.add(tus_id)
        self._pin(upload.file_id)
        try:
            state = await self._resume_state(upload)
        except BaseException:
            self._busy.discard(tus_id)
            self._release(upload.file_id)
            raise
        return ResumedUpload(self, upload, Upload(self, owner, self.max_file_size, state))

    async def _resume_state(self, upload: Resumable) -> ResumeState:
        file_key, keys = self._upload_keys(upload)
        tags = await self._segment_tags(upload.file_id, upload.offset // upload.seg_size)
        tail = b""
        if upload.tail is not None:
            root = sfs.segment_root(tags)
            tail = sfs.open_tail(keys, upload.file_id, upload.seg_size, upload.offset, root, upload.tail)
        elif upload.offset:
            raise IntegrityError()
        cached = self._hashes.get(upload.tus_id)
        if cached is not None and cached[0] == upload.offset:
            sha = cached[1].copy()  # a copy: a failed request must not spoil the cached state
        else:
            sha = await self._rehash(upload, keys, tags)
        return ResumeState(
            upload.file_id, file_key, upload.seg_size, upload.length, upload.offset, tail, sha, tags
        )

    async def _rehash(self, upload: Resumable, keys: sfs.KeyPair, tags: bytes) -> "hashlib._Hash":
        """After a restart the running SHA-256 is gone: hash the stored full segments once."""
        sha = hashlib.sha256()
        for index in range(upload.offset // upload.seg_size):
            rows = await self.store.read_segments(upload.file_id, index, 1)
            tag = tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
            if (
                len(rows) != 1
                or rows[0][0] != index
                or not hmac.compare_digest(rows[0][1][-sfs.TAG_LEN :], tag)
            ):
                raise IntegrityError()
            plaintext = await self.crypto(
                sfs.open_segment,
                keys,
                upload.file_id,
                upload.seg_size,
                index,
                False,
                upload.seg_size,
                rows[0][1],
            )
            await self.hash(sha.update, plaintext)
        return sha

    async def terminate(self, owner: int, tus_id: str) -> None:
        upload = await self.get_resumable(owner, tus_id)
        if tus_id in self._busy:
            raise OffsetMismatch("Another request is writing to this upload")
        self._busy.add(tus_id)  # no PATCH may start while its segments are being deleted
        try:
            self._hashes.pop(tus_id, None)
            await self.store.discard_file(upload.file_id)
        finally:
            self._busy.discard(tus_id)

    def _release(self, file_id: bytes) -> None:
        self._pinned[file_id] -= 1
        if self._pinned[file_id] <= 0:
            del self._pinned[file_id]


class Upload:
    """One file being written. Call ``write`` with body bytes, then ``finish`` or ``abort``.

    A one-shot upload learns its size at the end, so a full segment is sealed only once a
    further byte shows it is not the last. A resumed upload knows its length in advance.
    """

    def __init__(
        self, service: FileService, owner: int, max_size: int, resume: ResumeState | None = None
    ) -> None:
        self._svc = service
        self.owner = owner
        self.max_size = max_size
        self.file_id = resume.file_id if resume else sfs.new_file_id()
        self._file_key = resume.file_key if resume else sfs.new_file_key()
        self._keys = sfs.derive_file_keys(self._file_key, self.file_id)
        self._seg_size = resume.seg_size if resume else service.seg_size
        self.length = resume.length if resume else None
        self._segment = bytearray(resume.tail) if resume else bytearray()
        self.size = resume.offset if resume else 0
        self._index = self.size // self._seg_size
        self._sha = resume.sha if resume else hashlib.sha256()
        self._prefix_tags = resume.tags if resume else b""  # segments sealed by earlier requests
        self._tags: dict[int, bytes] = {}  # index -> tag of the segments this object sealed
        self._hashed: Awaitable[None] | None = None
        self._inflight: collections.deque[asyncio.Future[None]] = collections.deque()
        self._staged = resume is not None
        self._quota_base: int | None = None
        self._counted = 0
        self._closed = False
        self._committed = False
        self._lock = asyncio.Lock()  # write, finish and abort never interleave

    async def write(self, data: bytes | memoryview) -> None:
        async with self._lock:
            await self._write(data)

    async def _write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise RuntimeError("upload already finished or aborted")
        if self.size + len(data) > self.max_size:
            raise TooLarge(f"File too large: the limit is {self.max_size} bytes")
        if self.length is not None and self.size + len(data) > self.length:
            raise InputError("The body goes beyond the declared Upload-Length")
        if not self._staged:
            await self._svc.store.stage_file(self.file_id, self.owner, time.time())
            self._staged = True
            if self.length is None:  # a resumable upload reserved its whole length when created
                self._quota_base = await self._quota_base_now()
        self._count_quota(len(data))
        self.size += len(data)
        view = memoryview(data)
        while view:
            # A full segment is only sealed once a further byte proves it is not the last.
            if len(self._segment) == self._seg_size:
                await self._emit(final=False)
            room = self._seg_size - len(self._segment)
            self._segment += view[:room]
            view = view[room:]
        if self.length is not None and len(self._segment) == self._seg_size and self.size < self.length:
            await self._emit(final=False)  # the declared length says more follows

    async def _quota_base_now(self) -> int | None:
        """The owner's quota less what is stored; one-shot uploads under way share the rest."""
        limits = await self._svc.limits(self.owner)
        if limits.quota is None:
            return None
        stored, _ = await self._svc.store.usage(self.owner)
        return limits.quota - stored

    def _count_quota(self, nbytes: int) -> None:
        if self._quota_base is None:
            return
        writing = self._svc._writing
        if writing[self.owner] + nbytes > self._quota_base:
            left = max(self._quota_base - writing[self.owner] + self._counted, 0)
            raise TooLarge(f"Quota exceeded: this upload could use {left} more bytes of your quota")
        writing[self.owner] += nbytes
        self._counted += nbytes

    def _uncount_quota(self) -> None:
        writing = self._svc._writing
        writing[self.owner] -= self._counted
        if writing[self.owner] <= 0:
            del writing[self.owner]
        self._counted = 0

    async def _emit(self, final: bool) -> None:
        segment, self._segment = self._segment, bytearray()
        index, self._index = self._index, self._index + 1
        self._hashed = self._svc.hash(self._sha.update, segment)
        await self._limit_inflight(self._svc.pipeline_depth)
        await self._svc.slots.acquire()
        task = asyncio.ensure_future(self._store_segment(index, final, segment))
        task.add_done_callback(lambda _: self._svc.slots.release())
        self._inflight.append(task)

    async def _limit_inflight(self, limit: int) -> None:
        while len(self._inflight) > limit - 1 and self._inflight:
            await self._inflight.popleft()

    async def _drain(self) -> None:
        """Wait until every sealed segment is stored and hashed."""
        while self._inflight:
            await self._inflight.popleft()
        if self._hashed is not None:
            await self._hashed
            self._hashed = None

    async def checkpoint(self) -> ResumeState:
        """Store everything but the partial segment; return the state to resume from."""
        async with self._lock:
            await self._drain()
            return ResumeState(
                self.file_id,
                self._file_key,
                self._seg_size,
                self.length or 0,
                self.size,
                bytes(self._segment),
                self._sha,
                self._all_tags(),
            )

    def _all_tags(self) -> bytes:
        first = len(self._prefix_tags) // sfs.TAG_LEN
        return self._prefix_tags + b"".join(self._tags[i] for i in range(first, self._index))

    async def _store_segment(self, index: int, final: bool, segment: bytearray) -> None:
        blob = await self._svc.crypto(
            sfs.seal_segment, self._keys, self.file_id, self._seg_size, index, final, segment
        )
        tag = bytes(blob[-sfs.TAG_LEN :])
        await self._svc.store.put_segment(self.file_id, index, tag, blob)
        self._tags[index] = tag

    async def finish(self, name: str, expected_sha256: bytes | None = None) -> FileInfo:
        """Seal the last segment, wait for every write, check the digest and commit atomically."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("upload already finished or aborted")
            info = await self._finish(check_filename(name), expected_sha256)
        self._svc.schedule_purge()  # a replaced version goes in the background, not before the reply
        return info

    async def _finish(self, name: str, expected_sha256: bytes | None) -> FileInfo:
        if not self._staged:
            await self._svc.store.stage_file(self.file_id, self.owner, time.time())
            self._staged = True
        if self.length is not None and self.size != self.length:
            raise InputError("The upload is not complete")
        await self._emit(final=True)
        self._closed = True
        await self._drain()
        digest = self._sha.digest()
        if expected_sha256 is not None and expected_sha256 != digest:
            raise DigestMismatch()
        header = sfs.Header(
            version=sfs.VERSION,
            suite=sfs.SUITE_AES256CBC_HMACSHA256,
            seg_size=self._seg_size,
            file_id=self.file_id,
            owner=self.owner,
            name=name,
            size=self.size,
            seg_count=self._index,
            sha256=digest,
            created=time.time(),
            seg_root=sfs.segment_root(self._all_tags()),
        )
        keyring = self._svc.keyring
        stored = StoredFile(
            header=header,
            key_id=keyring.primary,
            wrapped_key=sfs.wrap_file_key(
                keyring.keks[keyring.primary], keyring.primary, self.file_id, self._file_key
            ),
            header_tag=sfs.header_tag(self._keys, header),
        )
        await self._svc.store.commit_file(stored)
        self._committed = True
        self._uncount_quota()
        return FileInfo.of(stored)

    async def abort(self) -> None:
        """Stop and remove everything staged, unless it committed. Safe to call more than once."""
        self._closed = True  # no new write begins; one under way ends within its chunk
        async with self._lock:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            self._inflight.clear()
            self._uncount_quota()
            if self._staged and not self._committed:
                self._staged = False
                await self._svc.store.discard_file(self.file_id)


class ResumedUpload:
    """One request's worth of appending to a resumable upload: ``write``, then ``save`` (which
    completes the file when the last byte arrived) or ``discard``."""

    def __init__(self, service: FileService, resumable: Resumable, upload: Upload) -> None:
        self._svc = service
        self.resumable = resumable
        self._upload = upload
        self._done = False
        self.info: FileInfo | None = None

    @property
    def offset(self) -> int:
        return self._upload.size

    @property
    def done(self) -> bool:
        return self._done

    async def write(self, data: bytes) -> None:
        await self._upload.write(data)

    async def save(self) -> int:
        """Make what arrived durable and return the new offset; commit the file if complete."""
        if self._done:
            raise RuntimeError("resumed upload already saved or discarded")
        svc, r = self._svc, self.resumable
        try:
            if self._upload.size == r.length:
                self.info = await self._upload.finish(r.name)
                svc._hashes.pop(r.tus_id, None)
                return r.length
            state = await self._upload.checkpoint()
            tail = await svc.crypto(sfs.seal_tail, *self._tail_args(state))
            expires = time.time() + svc.resumable_ttl
            if not await svc.store.save_progress(r.file_id, r.offset, state.offset, tail, expires):
                raise OffsetMismatch()
            svc._hashes[r.tus_id] = (state.offset, state.sha, time.time())
            return state.offset
        finally:
            self._close()

    def _tail_args(self, state: ResumeState) -> tuple[sfs.KeyPair, bytes, int, int, bytes, bytes]:
        keys = sfs.derive_file_keys(state.file_key, state.file_id)
        return keys, state.file_id, state.seg_size, state.offset, sfs.segment_root(state.tags), state.tail

    async def discard(self) -> None:
        """Forget what this request sent: the stored offset stays where it was."""
        if not self._done:
            try:
                await self._upload.checkpoint()  # let segment writes under way finish first
            finally:
                self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self._svc._busy.discard(self.resumable.tus_id)
            self._svc._release(self.resumable.file_id)


class Download:
    """A verified, pinned file. Read byte ranges with ``read``; always ``close`` it."""

    def __init__(self, service: FileService, stored: StoredFile, keys: sfs.KeyPair, tags: bytes) -> None:
        self._svc = service
        self.header = stored.header
        self.info = FileInfo.of(stored)
        self._keys = keys
        self._tags = tags  # verified against the header's seg_root
        self._closed = False

    @property
    def size(self) -> int:
        return self.header.size

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._svc._release(self.header.file_id)

    async def _segment(self, index: int) -> bytes:
        header = self.header
        rows = await self._svc.store.read_segments(header.file_id, index, 1)
        tag = self._tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
        if len(rows) != 1 or rows[0][0] != index or not hmac.compare_digest(rows[0][1][-sfs.TAG_LEN :], tag):
            log.error("file %s: segment %d is missing or not the one committed", header.file_id.hex(), index)
            raise IntegrityError()
        final = index == header.seg_count - 1
        length = sfs.final_segment_len(header.size, header.seg_size) if final else header.seg_size
        try:
            return await self._svc.crypto(
                sfs.open_segment,
                self._keys,
                header.file_id,
                header.seg_size,
                index,
                final,
                length,
                rows[0][1],
            )
        except IntegrityError:
            log.error("file %s: segment %d failed verification", header.file_id.hex(), index)
            raise

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the plaintext of bytes [start, end), verifying each segment before it is used."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise ValueError("range outside the file")
        if start == end:
            return
        seg_size = self.header.seg_size
        first, last = start // seg_size, (end - 1) // seg_size
        pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        next_index = first
        try:
            for index in range(first, last + 1):
                while next_index <= last and len(pending) < self._svc.pipeline_depth:
                    pending.append(asyncio.ensure_future(self._segment(next_index)))
                    next_index += 1
                plaintext = await pending.popleft()
                offset = index * seg_size
                lo, hi = max(start - offset, 0), min(end - offset, len(plaintext))
                yield plaintext if (lo, hi) == (0, len(plaintext)) else plaintext[lo:hi]
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
