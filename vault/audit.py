"""The audit log: an append-only, hash-chained record of who did what.

Each entry is (seq, time, actor, client address, action, target, outcome) and carries
``mac = HMAC-SHA256(K_row, "audit" || previous mac || entry)`` under the master-derived row key,
so someone who can write the database can neither edit, drop, insert nor reorder entries
without ``verify_chain`` finding the first broken one. Truncating the newest entries is only
detectable against a copy of the last mac kept elsewhere (``run.py admin audit-verify`` prints
it). Entries are appended in order by one background writer, so recording never delays a
request.
"""

import asyncio
import hmac
import logging
import time

from vault.keys import Keyring, row_tag
from vault.store import AuditEntry, Store

log = logging.getLogger(__name__)

GENESIS = bytes(32)
WRITER_TASK = "audit-writer"  # long-lived: shutdown does not wait for it, but closes it last
QUEUE_LIMIT = 10_000  # entries waiting to be written before new ones are dropped (and logged)


def entry_mac(keyring: Keyring, previous: bytes, entry: AuditEntry) -> bytes:
    return row_tag(
        keyring, entry.key_id, b"audit", previous, entry.seq, entry.at, entry.actor, entry.address,
        entry.action, entry.target, entry.outcome,
    )  # fmt: skip


class AuditLog:
    def __init__(self, store: Store, keyring: Keyring) -> None:
        self._store, self._keyring = store, keyring
        self._queue: asyncio.Queue[tuple[float, str, str, str, str, str]] = asyncio.Queue(QUEUE_LIMIT)
        self._writer: asyncio.Task[None] | None = None
        self._seq, self._mac = 0, GENESIS

    async def start(self) -> None:
        last = await self._store.last_audit()
        if last is not None:
            self._seq, self._mac = last.seq, last.mac
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name=WRITER_TASK)

    def record(self, actor: str, address: str, action: str, target: str, outcome: str) -> None:
        try:
            self._queue.put_nowait((time.time(), actor, address, action, target, outcome))
        except asyncio.QueueFull:
            log.error("audit queue full: dropped %s %s by %s", action, outcome, actor)

    async def _write_forever(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._append(*item)
            except Exception:
                log.exception("audit entry not written")
            finally:
                self._queue.task_done()

    async def _append(
        self, at: float, actor: str, address: str, action: str, target: str, outcome: str
    ) -> None:
        seq, key_id = self._seq + 1, self._keyring.primary
        draft = AuditEntry(seq, at, actor, address, action, target, outcome, key_id, b"")
        mac = entry_mac(self._keyring, self._mac, draft)
        await self._store.append_audit(
            AuditEntry(seq, at, actor, address, action, target, outcome, key_id, mac)
        )
        self._seq, self._mac = seq, mac

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)


async def verify_chain(
    store: Store, keyring: Keyring, batch: int = 1000
) -> tuple[int, AuditEntry | None, bytes]:
    """(entries that verify, the first broken entry or None, the last good mac).

    A gap in seq, an edited field or a reordered entry all break the chain at that entry."""
    previous, expected, checked = GENESIS, 1, 0
    while True:
        entries = await store.audit_entries(after=expected - 1, limit=batch)
        if not entries:
            return checked, None, previous
        for entry in entries:
            try:
                good = entry.seq == expected and hmac.compare_digest(
                    entry.mac, entry_mac(keyring, previous, entry)
                )
            except Exception:
                good = False
            if not good:
                return checked, entry, previous
            previous, expected, checked = entry.mac, expected + 1, checked + 1
