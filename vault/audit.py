"""The audit log: an append-only, hash-chained record of who did what.

Each entry is (seq, time, actor, client address, action, target, outcome) and carries
``mac = HMAC-SHA256(K_row, "audit" || previous mac || entry)`` under the master-derived row key,
so someone who can write the database can neither edit, drop, insert nor reorder entries
without ``verify_chain`` finding the first broken one. Truncating the newest entries is only
detectable against a copy of the last mac kept elsewhere (``run.py admin audit-verify`` prints
it). Entries are appended in order by one background writer, so recording never delays a
request; each takes its seq and previous mac inside its insert transaction, so ``run.py admin``
writing beside a running server continues the same chain. An entry that cannot be written
(the queue is full, the database fails) is counted, and the next entry written is an
``audit-lost`` entry with that count, so the loss is in the chain itself.
"""

import asyncio
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vault.keys import Keyring, row_tag
from vault.store import AuditEntry, AuditStore

log = logging.getLogger(__name__)

GENESIS = bytes(32)
WRITER_TASK = "audit-writer"  # long-lived: shutdown does not wait for it, but closes it last
QUEUE_LIMIT = 10_000  # entries waiting to be written before new ones are dropped (and logged)


LOST_ACTION = "audit-lost"  # an entry in the chain saying that entries before it were not written


def entry_mac(keyring: Keyring, previous: bytes, entry: AuditEntry) -> bytes:
    return row_tag(
        keyring, entry.key_id, b"audit", previous, entry.seq, entry.at, entry.actor, entry.address,
        entry.action, entry.target, entry.outcome,
    )  # fmt: skip


class AuditLog:
    def __init__(self, store: AuditStore, keyring: Keyring) -> None:
        self._store, self._keyring = store, keyring
        self._queue: asyncio.Queue[tuple[float, str, str, str, str, str]] = asyncio.Queue(QUEUE_LIMIT)
        self._writer: asyncio.Task[None] | None = None
        self._lost = 0  # entries not written since the last one that was

    async def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name=WRITER_TASK)

    def record(self, actor: str, address: str, action: str, target: str, outcome: str) -> None:
        try:
            self._queue.put_nowait((time.time(), actor, address, action, target, outcome))
        except asyncio.QueueFull:
            self._lost += 1
            log.error("audit queue full: dropped %s %s by %s", action, outcome, actor)

    async def _write_forever(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._write(item)
            finally:
                self._queue.task_done()

    async def _write(self, item: tuple[float, str, str, str, str, str]) -> None:
        """Append one entry; first, if entries were lost, an entry that says how many, so
        ``verify_chain`` reports the loss instead of an intact log."""
        try:
            await self._note_lost()
            await self._append(*item)
        except Exception:
            self._lost += 1
            log.exception("audit entry not written")

    async def _note_lost(self) -> None:
        if self._lost:
            await self._append(time.time(), "vault", "-", LOST_ACTION, "", str(self._lost))
            self._lost = 0

    async def _append(
        self, at: float, actor: str, address: str, action: str, target: str, outcome: str
    ) -> None:
        key_id = self._keyring.primary

        def build(seq: int, previous: bytes) -> AuditEntry:
            draft = AuditEntry(seq, at, actor, address, action, target, outcome, key_id, b"")
            return dataclasses.replace(draft, mac=entry_mac(self._keyring, previous, draft))

        await self._store.append_audit(build)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        try:
            await self._note_lost()
        except Exception:
            log.exception("audit: %d lost entries not noted", self._lost)


@dataclass(frozen=True)
class ChainCheck:
    """What ``verify_chain`` found: entries that verify, the first broken entry (None: none),
    the mac of the last good entry, and how many entries the log says it could not write."""

    checked: int
    broken: AuditEntry | None
    last_mac: bytes
    lost: int


async def _walk(store: AuditStore, keyring: Keyring, batch: int) -> AsyncIterator[tuple[AuditEntry, bool]]:
    """Each entry from the first with whether it verifies, up to and including the first
    that does not."""
    previous, expected = GENESIS, 1
    while True:
        entries = await store.audit_entries(after=expected - 1, limit=batch)
        if not entries:
            return
        for entry in entries:
            try:
                good = entry.seq == expected and hmac.compare_digest(
                    entry.mac, entry_mac(keyring, previous, entry)
                )
            except Exception:
                good = False
            yield entry, good
            if not good:
                return
            previous, expected = entry.mac, expected + 1


async def verify_chain(store: AuditStore, keyring: Keyring, batch: int = 1000) -> ChainCheck:
    """Walk the chain from the first entry. A gap in seq, an edited field or a reordered entry
    all break it at that entry; entries the server failed to write show as ``lost``."""
    checked, lost, previous = 0, 0, GENESIS
    async for entry, good in _walk(store, keyring, batch):
        if not good:
            return ChainCheck(checked, entry, previous, lost)
        if entry.action == LOST_ACTION and entry.outcome.isdigit():
            lost += int(entry.outcome)
        checked, previous = checked + 1, entry.mac
    return ChainCheck(checked, None, previous, lost)


async def rechain(store: AuditStore, keyring: Keyring, batch: int = 1000) -> ChainCheck:
    """After a new primary master key (server stopped): re-MAC every entry that verifies under
    the primary key, so the old key can be retired. A broken entry and those after it keep
    their old key (and so keep that key in use). The chain's last mac changes."""
    primary, checked, previous, lost = keyring.primary, 0, GENESIS, 0
    async for entry, good in _walk(store, keyring, batch):
        if not good:
            return ChainCheck(checked, entry, previous, lost)
        moved = dataclasses.replace(entry, key_id=primary)
        previous = entry_mac(keyring, previous, moved)
        await store.set_audit_mac(entry.seq, primary, previous)
        checked += 1
    return ChainCheck(checked, None, previous, lost)
