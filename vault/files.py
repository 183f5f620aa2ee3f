"""Files: the streaming upload and download pipelines on top of a :class:`Store`.

An upload (vault/upload.py) cuts the incoming bytes into segments, seals each in the crypto
thread pool (several in flight, so both cores work) and writes it to the store as a STAGED
file; the SHA-256 of the plaintext is computed in order on a single hashing thread. ``finish``
then commits the authenticated header in one transaction. A download (vault/download.py)
verifies the header, then fetches, verifies and decrypts only the segments a byte range needs,
a few ahead of the client. Resumable uploads are vault/resumable.py. Each gets the one
:class:`Pipeline` (vault/pipeline.py) this service builds; none of them knows this class.
"""

import asyncio
import builtins
import hmac
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor

from vault import format as sfs
from vault.budget import SegmentBudget
from vault.download import Download
from vault.errors import FileNotFound, IntegrityError
from vault.keys import Keyring
from vault.names import check_filename
from vault.pipeline import Pins, Pipeline
from vault.quota import Quotas
from vault.records import FileInfo, Page, Usage
from vault.resumable import Resumables
from vault.state import LocalState
from vault.store import FileStore, StateStore, StoredFile
from vault.upload import Upload

log = logging.getLogger(__name__)
OPEN_ATTEMPTS = 3


class FileService:
    def __init__(
        self,
        store: FileStore,
        keyring: Keyring,
        *,
        seg_size: int,
        max_file_size: int,
        pipeline_depth: int,
        crypto: Executor,
        hasher: Executor,
        resumable_ttl: int = 86400,
        segments_in_flight: int = 8,
        download_segments: int = 32,
        default_quota: int = 0,
        state: StateStore | None = None,
    ) -> None:
        sfs.check_seg_size(seg_size)
        self.store = store
        self.keyring = keyring
        self.max_file_size = max_file_size
        self.state: StateStore = LocalState() if state is None else state
        self.quotas = Quotas(
            store, default_quota=default_quota, max_file_size=max_file_size, state=self.state
        )
        self.pipe = Pipeline(
            store=store,
            keyring=keyring,
            crypto_pool=crypto,
            hash_pool=hasher,
            seg_size=seg_size,
            max_file_size=max_file_size,
            pipeline_depth=pipeline_depth,
            slots=asyncio.Semaphore(segments_in_flight),
            download_budget=SegmentBudget(download_segments),
            pins=Pins(self.state),
            quotas=self.quotas,
            state=self.state,
            committed=self.schedule_purge,
        )
        self.resumables = Resumables(self.pipe, resumable_ttl)
        self._purging: asyncio.Future[None] | None = None
        self._purge_again = False

    async def usage(self, owner: int) -> Usage:
        return await self.quotas.usage(owner)

    async def stored(self, owner: int) -> int:
        """Bytes of the owner's segments in the store (encrypted, uploads in progress too)."""
        return await self.store.stored_bytes(owner)

    async def begin_upload(self, owner: int, length: int | None, *, slack: int = 0) -> "Upload":
        """Admit a one-shot upload of ``length`` bytes (None: not known yet) against the
        owner's limits, or raise TooLarge (vault/quota.py), before any of it is read."""
        return Upload(self.pipe, await self.quotas.admit(owner, length, slack=slack))

    async def list(self, owner: int) -> list[FileInfo]:
        """The caller's files whose headers verify; a tampered row is left out (and logged)."""
        return [info for info in await self.verified(await self.store.list_files(owner)) if info]

    async def page(self, owner: int, after: str | None, limit: int) -> Page[FileInfo]:
        """``limit`` of the caller's files by name after the cursor ``after`` (a name), read and
        verified alone: a page costs its length, not the files before it."""
        rows = await self.store.files_after(owner, after, limit + 1)
        infos = await self.verified(rows[:limit])
        cursor = rows[limit - 1].header.name if len(rows) > limit else None
        return Page([info for info in infos if info], cursor)

    async def verified(self, rows: Sequence[StoredFile]) -> Sequence[FileInfo | None]:
        """Each row's info if its wrapped key and header verify, else None (logged); checked
        on the crypto pool in one go, so a long listing never holds up the event loop."""
        return await self.pipe.crypto(self._verify_all, rows) if rows else []

    def _verify_all(self, rows: Sequence[StoredFile]) -> Sequence[FileInfo | None]:
        infos: builtins.list[FileInfo | None] = []
        for stored in rows:
            try:
                self._file_keys(stored)
            except IntegrityError:
                infos.append(None)
                continue
            infos.append(FileInfo.of(stored))
        return infos

    async def delete(self, owner: int, name: str) -> None:
        if not await self.store.delete_file(owner, check_filename(name)):
            raise FileNotFound()
        await self.quotas.changed(owner)
        try:  # the delete is committed: a purge that fails now only leaves work for the next
            await self.purge()
        except Exception:
            log.exception("purge after a delete failed; the next one will retry")

    async def purge(self, staged_too: bool = False) -> int:
        """Remove replaced and deleted files, expired resumable uploads and (at start-up) uploads
        cut off by a crash, except those a transfer still uses."""
        now = time.time()
        self.resumables.prune(now)
        # Shared state: every upload in progress, in any process, pins its STAGED row, so one
        # that no live process pins was cut off (its process died, and with it its lease).
        staged_too = staged_too or self.state.shared
        return await self.store.purge(keep=self.pipe.pins, staged_too=staged_too, now=now)

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

    async def open(self, owner: int, name: str) -> "Download":
        """Find and verify a file (FORMAT.md steps 1-3) and pin it against purging."""
        name, pins = check_filename(name), self.pipe.pins
        for _ in range(OPEN_ATTEMPTS):
            stored = await self.store.get_file(owner, name)
            if stored is None:
                raise FileNotFound()
            await pins.pin(stored.header.file_id)
            # Pinned: no purge removes it from now on. Was it replaced (and so perhaps being
            # purged already) between the lookup and the pin? Then take the new version.
            again = await self.store.get_file(owner, name)
            if again is not None and again.header.file_id == stored.header.file_id:
                try:
                    keys, tags = await self.verify_stored(stored)
                    return Download(self.pipe, stored, keys, tags)
                except BaseException:
                    pins.release(stored.header.file_id)
                    raise
            pins.release(stored.header.file_id)
        raise FileNotFound()

    async def verify_stored(self, stored: StoredFile) -> tuple[sfs.KeyPair, bytes]:
        """The file's keys and its segment tags, once its wrapped key, header and segment list
        verify (FORMAT.md steps 2-4); IntegrityError if anything does not."""
        keys = self._file_keys(stored)
        tags = await self.pipe.segment_tags(stored.header.file_id, stored.header.seg_count)
        root = await self.pipe.crypto(sfs.segment_root, tags)  # 64 GiB: 2 MiB of tags to hash
        if not hmac.compare_digest(root, stored.header.seg_root):
            log.error("file %s: segment tags do not match the header", stored.header.file_id.hex())
            raise IntegrityError()
        return keys, tags

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
