"""Files: the streaming upload and download pipelines on top of a :class:`Store`.

An upload cuts the incoming bytes into segments, seals each in the crypto thread pool (several
in flight, so both cores work) and writes it to the store as a STAGED file; the SHA-256 of the
plaintext is computed in order on a single hashing thread. ``finish`` then commits the
authenticated header in one transaction. A download verifies the header, then fetches, verifies
and decrypts only the segments a byte range needs, a few ahead of the client.
"""

import asyncio
import collections
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from vault import format as sfs
from vault.errors import FileNotFound, IntegrityError
from vault.keys import Keyring
from vault.names import check_filename
from vault.quota import Quotas
from vault.records import FileInfo, Limits, ResumeState, Usage
from vault.resumable import Resumables, ResumedUpload
from vault.store import Store, StoredFile
from vault.upload import Upload

log = logging.getLogger(__name__)
T = TypeVar("T")
OPEN_ATTEMPTS = 3

__all__ = ["Download", "FileInfo", "FileService", "Limits", "ResumeState", "ResumedUpload", "Upload", "Usage"]


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
        self.quotas = Quotas(store, default_quota=default_quota, max_file_size=max_file_size)
        self.resumables = Resumables(self, resumable_ttl)
        # One bound for all uploads together: a sealed segment waiting for the database holds
        # two segment-sized buffers, so memory stays flat however many clients upload at once.
        self.slots = asyncio.Semaphore(segments_in_flight)
        self._pinned: collections.Counter[bytes] = collections.Counter()
        self._purging: asyncio.Future[None] | None = None
        self._purge_again = False  # resumable uploads a request is writing to right now

    def crypto(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._crypto, fn, *args)

    def hash(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._hasher, fn, *args)

    async def usage(self, owner: int) -> Usage:
        return await self.quotas.usage(owner)

    async def begin_upload(self, owner: int, length: int | None, *, slack: int = 0) -> "Upload":
        """Admit a one-shot upload of ``length`` bytes (None: not known yet) against the
        owner's limits, or raise TooLarge (vault/quota.py), before any of it is read."""
        return Upload(self, await self.quotas.admit(owner, length, slack=slack))

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
        self.quotas.changed(owner)
        try:  # the delete is committed: a purge that fails now only leaves work for the next
            await self.purge()
        except Exception:
            log.exception("purge after a delete failed; the next one will retry")

    async def purge(self, staged_too: bool = False) -> int:
        """Remove replaced and deleted files, expired resumable uploads and (at start-up) uploads
        cut off by a crash, except those a transfer still uses."""
        now = time.time()
        self.resumables.prune(now)
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

    def pin(self, file_id: bytes) -> None:
        self._pinned[file_id] += 1

    async def open(self, owner: int, name: str) -> "Download":
        """Find and verify a file (FORMAT.md steps 1-3) and pin it against purging."""
        name = check_filename(name)
        for _ in range(OPEN_ATTEMPTS):
            stored = await self.store.get_file(owner, name)
            if stored is None:
                raise FileNotFound()
            self.pin(stored.header.file_id)
            # Pinned: no purge removes it from now on. Was it replaced (and so perhaps being
            # purged already) between the lookup and the pin? Then take the new version.
            again = await self.store.get_file(owner, name)
            if again is not None and again.header.file_id == stored.header.file_id:
                try:
                    keys = self._file_keys(stored)
                    tags = await self.segment_tags(stored.header.file_id, stored.header.seg_count)
                    if not hmac.compare_digest(sfs.segment_root(tags), stored.header.seg_root):
                        log.error(
                            "file %s: segment tags do not match the header", stored.header.file_id.hex()
                        )
                        raise IntegrityError()
                    return Download(self, stored, keys, tags)
                except BaseException:
                    self.release(stored.header.file_id)
                    raise
            self.release(stored.header.file_id)
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

    async def segment_tags(self, file_id: bytes, count: int) -> bytes:
        """The tags of segments 0..count-1, concatenated; a gap or a stray row is an error."""
        rows = await self.store.read_tags(file_id, count)
        if len(rows) != count or any(i != n or len(t) != sfs.TAG_LEN for n, (i, t) in enumerate(rows)):
            log.error("file %s: segments missing", file_id.hex())
            raise IntegrityError()
        return b"".join(tag for _, tag in rows)

    def release(self, file_id: bytes) -> None:
        self._pinned[file_id] -= 1
        if self._pinned[file_id] <= 0:
            del self._pinned[file_id]


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
            self._svc.release(self.header.file_id)

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
