"""What every piece of the file pipeline shares, passed down to each as one parameter object
(the way tornado hands ``HTTP1ConnectionParameters`` to each connection): the store, the
keyring, the crypto and hashing pools, the segment limits, the pins and the quotas. Upload,
Download and Resumables take a :class:`Pipeline` and never reach back into FileService.
"""

import asyncio
import collections
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from vault import format as sfs
from vault.budget import SegmentBudget
from vault.errors import IntegrityError
from vault.keys import Keyring
from vault.quota import Quotas
from vault.store import FileStore, Hold, StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")


PIN = "pin"  # the hold kind of a pinned file, keyed by the file id in hex


class Pins:
    """Files a transfer still reads or writes: purging leaves them alone, in every process
    (each pin is also a hold in the shared state, which a SQL store's purge consults), and a
    STAGED row nobody pins is an upload cut off by a crash. Counted, so each ``pin`` pairs
    with exactly one ``release``. Iterating gives this process's pins: the live view that
    ``FileStore.purge`` checks as ``keep``."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._count: collections.Counter[bytes] = collections.Counter()
        self._holds: dict[bytes, list[Hold]] = {}

    async def pin(self, file_id: bytes) -> None:
        self._count[file_id] += 1  # at once: a purge running meanwhile in this process sees it
        try:
            hold = await self._state.hold(PIN, file_id.hex(), 1, None)
        except BaseException:
            self._unpin(file_id)
            raise
        assert hold is not None  # an unlimited hold is always granted
        self._holds.setdefault(file_id, []).append(hold)

    def release(self, file_id: bytes) -> None:
        """Unpin (the shared hold goes in the background: a task's first step)."""
        self._unpin(file_id)
        holds = self._holds.get(file_id)
        if holds:
            hold = holds.pop()
            if not holds:
                del self._holds[file_id]
            asyncio.ensure_future(self._state.release(hold))

    def _unpin(self, file_id: bytes) -> None:
        self._count[file_id] -= 1
        if self._count[file_id] <= 0:
            del self._count[file_id]

    def __contains__(self, file_id: object) -> bool:
        return file_id in self._count

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._count)

    def __len__(self) -> int:
        return len(self._count)


@dataclass(frozen=True)
class Pipeline:
    store: FileStore
    keyring: Keyring
    crypto_pool: Executor
    hash_pool: Executor  # one thread: each file's SHA-256 is fed in order
    seg_size: int  # for new files
    max_file_size: int  # the configured default; users may have their own (Quotas)
    pipeline_depth: int  # segments in flight per transfer
    # One bound for all uploads together: a sealed segment waiting for the database holds
    # two segment-sized buffers, so memory stays flat however many clients upload at once.
    slots: asyncio.Semaphore
    # And one for all downloads: the decrypted segments they hold (vault/budget.py).
    download_budget: SegmentBudget
    pins: Pins
    quotas: Quotas
    state: StateStore  # what every process serving this vault shares
    committed: Callable[[], None]  # called after each commit (a replaced version is purged)

    def crypto(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self.crypto_pool, fn, *args)

    def hash(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self.hash_pool, fn, *args)

    async def segment_tags(self, file_id: bytes, count: int) -> bytes:
        """The tags of segments 0..count-1, concatenated; a gap or a stray row is an error."""
        rows = await self.store.read_tags(file_id, count)
        if len(rows) != count or any(i != n or len(t) != sfs.TAG_LEN for n, (i, t) in enumerate(rows)):
            log.error("file %s: segments missing", file_id.hex())
            raise IntegrityError()
        return b"".join(tag for _, tag in rows)

    async def open_segment(
        self,
        keys: sfs.KeyPair,
        file_id: bytes,
        seg_size: int,
        index: int,
        length: int,
        final: bool,
        tag: bytes,
    ) -> bytes:
        """Read segment ``index``, check it is the one whose ``tag`` was committed, verify and
        decrypt it (``length`` plaintext bytes)."""
        blob = await self.store.read_segment(file_id, index, tag)
        if blob is None or not hmac.compare_digest(blob[-sfs.TAG_LEN :], tag):
            log.error("file %s: segment %d is missing or not the one committed", file_id.hex(), index)
            raise IntegrityError()
        try:
            return await self.crypto(sfs.open_segment, keys, file_id, seg_size, index, final, length, blob)
        except IntegrityError:
            log.error("file %s: segment %d failed verification", file_id.hex(), index)
            raise
