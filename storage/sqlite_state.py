"""vault.store.StateStore in the SQLite database itself, for several processes on one machine
(``workers: N``): holds, counters and leases are rows of the ``state_*`` tables of vault.db.

Every call is one transaction on a connection of its own (``BEGIN IMMEDIATE`` for a check and
update, so no other process writes between them). Each process is a *holder* with a lease
(``state_holders``), renewed every ``lease / 3`` seconds; its holds count only while its lease
runs, so the upload slots, quota bytes, pins and locks of a process that died free themselves
once its lease lapses, and the first renewal after that deletes them. A mutex is a hold with a
limit of one, waited for by polling every MUTEX_POLL seconds.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage.sqlite import DEFAULT_BUSY_TIMEOUT, _connect, _prepare, _translated
from vault.state import PolledMutex, new_hold_id, new_holder
from vault.store import Counter, Hold

log = logging.getLogger(__name__)

DEFAULT_LEASE = 10.0  # seconds a process's holds outlive its last renewal
COUNTER_GRACE = 60.0  # seconds expired counters are kept before renew() deletes them
# The live holds of (kind, key): those whose holder's lease still runs.
_LIVE = (
    "FROM state_holds h JOIN state_holders p ON p.holder = h.holder"
    " WHERE h.kind = ? AND h.key = ? AND p.expires > ?"
)
# A counter of (kind, key) (NULLs if none) and the sum of the live holds, in one statement:
# one snapshot of both (StateStore.tally).
_TALLY = (
    f"SELECT c.count, c.stamp, c.version, (SELECT COALESCE(SUM(h.amount), 0) {_LIVE})"  # noqa: S608 (constants)
    " FROM (SELECT 1) LEFT JOIN state_counters c"
    " ON c.kind = ? AND c.key = ? AND (c.expires IS NULL OR c.expires > ?)"
)


class SQLiteState(PolledMutex):
    """StateStore on the tables ``state_holders``, ``state_holds`` and ``state_counters``."""

    shared = True

    def __init__(self, db: aiosqlite.Connection, holder: str, lease: float) -> None:
        self._db = db
        self.holder = holder
        self.lease = lease
        self._lock = asyncio.Lock()
        self._joined = False

    @classmethod
    async def open(
        cls, path: Path, lease: float = DEFAULT_LEASE, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> "SQLiteState":
        """Join the processes sharing the database at ``path`` (creating its tables)."""
        opened: list[aiosqlite.Connection] = []
        try:
            with _translated():
                db = await _connect(path, busy_timeout, opened)
                await _prepare(db)
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        state = cls(db, new_holder(), lease)
        await state.renew()
        return state

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            with _translated():
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        await self._db.execute("ROLLBACK")
                    raise
                await self._db.execute("COMMIT")

    async def _one(self, db: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> Any:
        async with db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        async with self._lock:
            with _translated():
                return list(await self._db.execute_fetchall(sql, params))

    async def _version(self, db: aiosqlite.Connection, kind: str, key: str, now: float) -> int:
        row = await self._one(
            db,
            "SELECT version FROM state_counters WHERE kind = ? AND key = ?"
            " AND (expires IS NULL OR expires > ?)",
            (kind, key, now),
        )
        return int(row[0]) if row else 0

    async def hold(
        self,
        kind: str,
        key: str,
        amount: int,
        limit: int | None,
        *,
        need: int | None = None,
        version: int | None = None,
    ) -> Hold | None:
        now = time.time()
        async with self._transaction() as db:
            if version is not None and await self._version(db, kind, key, now) != version:
                return None
            granted = amount
            if limit is not None:
                (held,) = await self._one(db, f"SELECT COALESCE(SUM(h.amount), 0) {_LIVE}", (kind, key, now))
                granted = min(amount, max(limit - int(held), 0))
            if granted < (amount if need is None else need):
                return None
            hold = Hold(new_hold_id(), kind, key, granted)
            await db.execute(
                "INSERT INTO state_holds (id, kind, key, holder, amount) VALUES (?, ?, ?, ?, ?)",
                (hold.id, kind, key, self.holder, granted),
            )
        return hold

    async def resize(
        self, hold: Hold, amount: int, limit: int | None, *, version: int | None = None
    ) -> Hold | None:
        now = time.time()
        async with self._transaction() as db:
            row = await self._one(db, "SELECT amount FROM state_holds WHERE id = ?", (hold.id,))
            if row is None:
                return None
            if version is not None and await self._version(db, hold.kind, hold.key, now) != version:
                return None
            if limit is not None and amount > int(row[0]):
                (held,) = await self._one(
                    db,
                    f"SELECT COALESCE(SUM(h.amount), 0) {_LIVE} AND h.id != ?",
                    (hold.kind, hold.key, now, hold.id),
                )
                if int(held) + amount > limit:
                    return None
            await db.execute("UPDATE state_holds SET amount = ? WHERE id = ?", (amount, hold.id))
        return Hold(hold.id, hold.kind, hold.key, amount)

    async def release(self, hold: Hold) -> None:
        async with self._lock:
            with _translated():
                await self._db.execute("DELETE FROM state_holds WHERE id = ?", (hold.id,))

    async def held(self, kind: str, key: str) -> int:
        rows = await self._read(f"SELECT COALESCE(SUM(h.amount), 0) {_LIVE}", (kind, key, time.time()))
        return int(rows[0][0])

    async def held_keys(self, kind: str) -> set[str]:
        rows = await self._read(
            "SELECT DISTINCT h.key FROM state_holds h JOIN state_holders p ON p.holder = h.holder"
            " WHERE h.kind = ? AND p.expires > ?",
            (kind, time.time()),
        )
        return {str(row[0]) for row in rows}

    async def counter(self, kind: str, key: str) -> Counter:
        rows = await self._read(
            "SELECT count, stamp, version FROM state_counters WHERE kind = ? AND key = ?"
            " AND (expires IS NULL OR expires > ?)",
            (kind, key, time.time()),
        )
        if not rows:
            return Counter()
        count, stamp, version = rows[0]
        return Counter(int(count), float(stamp), int(version))

    async def set_counter(
        self, kind: str, key: str, count: int, stamp: float, *, version: int, expires: float | None
    ) -> Counter | None:
        async with self._transaction() as db:
            if await self._version(db, kind, key, time.time()) != version:
                return None
            await db.execute(
                "INSERT OR REPLACE INTO state_counters (kind, key, count, stamp, version, expires)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (kind, key, count, stamp, version + 1, expires),
            )
        return Counter(count, stamp, version + 1)

    async def bump(self, kind: str, key: str) -> int:
        async with self._transaction() as db:
            return await self._add(db, kind, key, 0, time.time())

    async def settle(self, hold: Hold, amount: int) -> int:
        async with self._transaction() as db:
            await db.execute("DELETE FROM state_holds WHERE id = ?", (hold.id,))
            return await self._add(db, hold.kind, hold.key, amount, time.time())

    async def tally(self, kind: str, key: str) -> tuple[Counter, int]:
        now = time.time()
        rows = await self._read(  # one statement: one snapshot of both
            _TALLY,
            (kind, key, now, kind, key, now),
        )
        count, stamp, version, held = rows[0]
        counter = Counter() if version is None else Counter(int(count), float(stamp), int(version))
        return counter, int(held)

    async def _add(self, db: aiosqlite.Connection, kind: str, key: str, amount: int, now: float) -> int:
        """Add ``amount`` to the counter's count and raise its version (bump, settle)."""
        row = await self._one(
            db,
            "SELECT count, stamp, version, expires FROM state_counters WHERE kind = ? AND key = ?"
            " AND (expires IS NULL OR expires > ?)",
            (kind, key, now),
        )
        count, stamp, version, expires = row if row else (0, 0.0, 0, None)
        await db.execute(
            "INSERT OR REPLACE INTO state_counters (kind, key, count, stamp, version, expires)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (kind, key, int(count) + amount, stamp, int(version) + 1, expires),
        )
        return int(version) + 1

    async def renew(self) -> None:
        """Extend this process's lease; forget dead holders, their holds and expired counters."""
        now = time.time()
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE state_holders SET expires = ? WHERE holder = ? AND expires > ?",
                (now + self.lease, self.holder, now),
            )
            if cursor.rowcount != 1:
                await self._join(db, now)
            await db.execute(
                "DELETE FROM state_holds WHERE holder NOT IN"
                " (SELECT holder FROM state_holders WHERE expires > ?)",
                (now,),
            )
            await db.execute("DELETE FROM state_holders WHERE expires <= ?", (now,))
            await db.execute("DELETE FROM state_counters WHERE expires < ?", (now - COUNTER_GRACE,))

    async def _join(self, db: aiosqlite.Connection, now: float) -> None:
        """A new lease. If this process had one that lapsed (it stalled past it), others may
        have taken what it held: it starts again with nothing held."""
        if self._joined:
            log.error("this process's lease lapsed (stalled over %.0f s): its holds are void", self.lease)
            await db.execute("DELETE FROM state_holds WHERE holder = ?", (self.holder,))
        self._joined = True
        await db.execute(
            "INSERT OR REPLACE INTO state_holders (holder, pid, expires) VALUES (?, ?, ?)",
            (self.holder, os.getpid(), now + self.lease),
        )

    async def close(self) -> None:
        """Give up the lease and everything held under it."""
        try:
            async with self._transaction() as db:
                await db.execute("DELETE FROM state_holds WHERE holder = ?", (self.holder,))
                await db.execute("DELETE FROM state_holders WHERE holder = ?", (self.holder,))
        except Exception:
            log.exception("shared state: the lease was not given up (it lapses by itself)")
        finally:
            await self._db.close()
