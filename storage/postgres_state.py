"""vault.store.StateStore in PostgreSQL (``storage: postgres``): the holds, counters and leases
of every instance serving one database, on any number of machines, as rows of its ``state_*``
tables (storage/schema_postgres.sql), with the same rules as storage/sqlite_state.py.

Each check-and-update is one transaction that first takes a transaction-scoped advisory lock on
its (kind, key), so two instances checking the same limit take turns (READ COMMITTED alone would
let both read the same sum). Each process is a holder with a lease renewed every ``lease / 3``
seconds; the holds of a process that died count no longer once its lease lapses, and a STAGED
upload nobody pins is then a crashed one (purge). A mutex is a hold of one with a limit of one,
waited for by polling.
"""

import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from storage.postgres import PostgresStore, _translated
from vault.state import PolledMutex, new_hold_id, new_holder
from vault.store import Counter, Hold

log = logging.getLogger(__name__)

DEFAULT_LEASE = 10.0
COUNTER_GRACE = 60.0  # seconds expired counters are kept before renew() deletes them
_LIVE = (
    "FROM state_holds h JOIN state_holders p ON p.holder = h.holder"
    " WHERE h.kind = $1 AND h.key = $2 AND p.expires > $3"
)
_COUNTER = (
    "SELECT count, stamp, version, expires FROM state_counters WHERE kind = $1 AND key = $2"
    " AND (expires IS NULL OR expires > $3)"
)
_PUT_COUNTER = (
    "INSERT INTO state_counters (kind, key, count, stamp, version, expires) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (kind, key) DO UPDATE SET count = EXCLUDED.count, stamp = EXCLUDED.stamp,"
    " version = EXCLUDED.version, expires = EXCLUDED.expires"
)
# A counter of (kind, key) (NULLs if none) and the sum of the live holds, in one statement:
# one snapshot of both (StateStore.tally).
_TALLY = (
    f"SELECT c.count, c.stamp, c.version, (SELECT COALESCE(SUM(h.amount), 0) {_LIVE})"  # noqa: S608 (constants)
    " FROM (SELECT 1) AS one LEFT JOIN state_counters c"
    " ON c.kind = $1 AND c.key = $2 AND (c.expires IS NULL OR c.expires > $3)"
)


def key_lock(kind: str, key: str) -> int:
    digest = hashlib.sha256(b"vault-state\0" + kind.encode() + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresState(PolledMutex):
    """StateStore on the tables ``state_holders``, ``state_holds`` and ``state_counters``."""

    shared = True

    def __init__(self, store: PostgresStore, holder: str, lease: float) -> None:
        self._pool: Any = store.pool
        self.holder = holder
        self.lease = lease
        self._joined = False

    @classmethod
    async def open(cls, store: PostgresStore, lease: float = DEFAULT_LEASE) -> "PostgresState":
        """Join the instances sharing the store's database (its pool, its schema)."""
        state = cls(store, new_holder(), lease)
        await state.renew()
        return state

    @asynccontextmanager
    async def _locked(self, kind: str, key: str) -> AsyncIterator[Any]:
        """A transaction holding the advisory lock of (kind, key)."""
        with _translated():
            async with self._pool.acquire() as db, db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock($1)", key_lock(kind, key))
                yield db

    async def _version(self, db: Any, kind: str, key: str, now: float) -> int:
        row = await db.fetchrow(_COUNTER, kind, key, now)
        return int(row[2]) if row else 0

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
        async with self._locked(kind, key) as db:
            if version is not None and await self._version(db, kind, key, now) != version:
                return None
            granted = amount
            if limit is not None:
                held = await db.fetchval(f"SELECT COALESCE(SUM(h.amount), 0) {_LIVE}", kind, key, now)
                granted = min(amount, max(limit - int(held), 0))
            if granted < (amount if need is None else need):
                return None
            hold = Hold(new_hold_id(), kind, key, granted)
            await db.execute(
                "INSERT INTO state_holds (id, kind, key, holder, amount) VALUES ($1, $2, $3, $4, $5)",
                hold.id,
                kind,
                key,
                self.holder,
                granted,
            )
        return hold

    async def resize(
        self, hold: Hold, amount: int, limit: int | None, *, version: int | None = None
    ) -> Hold | None:
        now = time.time()
        async with self._locked(hold.kind, hold.key) as db:
            current = await db.fetchval("SELECT amount FROM state_holds WHERE id = $1", hold.id)
            if current is None:
                return None
            if version is not None and await self._version(db, hold.kind, hold.key, now) != version:
                return None
            if limit is not None and amount > int(current):
                held = await db.fetchval(
                    f"SELECT COALESCE(SUM(h.amount), 0) {_LIVE} AND h.id <> $4",
                    hold.kind,
                    hold.key,
                    now,
                    hold.id,
                )
                if int(held) + amount > limit:
                    return None
            await db.execute("UPDATE state_holds SET amount = $1 WHERE id = $2", amount, hold.id)
        return Hold(hold.id, hold.kind, hold.key, amount)

    async def release(self, hold: Hold) -> None:
        with _translated():
            await self._pool.execute("DELETE FROM state_holds WHERE id = $1", hold.id)

    async def held(self, kind: str, key: str) -> int:
        with _translated():
            held = await self._pool.fetchval(
                f"SELECT COALESCE(SUM(h.amount), 0) {_LIVE}", kind, key, time.time()
            )
        return int(held)

    async def held_keys(self, kind: str) -> set[str]:
        with _translated():
            rows = await self._pool.fetch(
                "SELECT DISTINCT h.key FROM state_holds h JOIN state_holders p ON p.holder = h.holder"
                " WHERE h.kind = $1 AND p.expires > $2",
                kind,
                time.time(),
            )
        return {str(row[0]) for row in rows}

    async def counter(self, kind: str, key: str) -> Counter:
        with _translated():
            row = await self._pool.fetchrow(_COUNTER, kind, key, time.time())
        return Counter(int(row[0]), float(row[1]), int(row[2])) if row else Counter()

    async def set_counter(
        self, kind: str, key: str, count: int, stamp: float, *, version: int, expires: float | None
    ) -> Counter | None:
        async with self._locked(kind, key) as db:
            if await self._version(db, kind, key, time.time()) != version:
                return None
            await db.execute(_PUT_COUNTER, kind, key, count, stamp, version + 1, expires)
        return Counter(count, stamp, version + 1)

    async def bump(self, kind: str, key: str) -> int:
        async with self._locked(kind, key) as db:
            return await self._add(db, kind, key, 0, time.time())

    async def settle(self, hold: Hold, amount: int) -> int:
        async with self._locked(hold.kind, hold.key) as db:
            await db.execute("DELETE FROM state_holds WHERE id = $1", hold.id)
            return await self._add(db, hold.kind, hold.key, amount, time.time())

    async def tally(self, kind: str, key: str) -> tuple[Counter, int]:
        with _translated():
            row = await self._pool.fetchrow(  # one statement: one snapshot of both
                _TALLY,
                kind,
                key,
                time.time(),
            )
        count, stamp, version, held = tuple(row)
        counter = Counter() if version is None else Counter(int(count), float(stamp), int(version))
        return counter, int(held)

    async def _add(self, db: Any, kind: str, key: str, amount: int, now: float) -> int:
        """Add ``amount`` to the counter's count and raise its version (bump, settle)."""
        row = await db.fetchrow(_COUNTER, kind, key, now)
        count, stamp, version, expires = tuple(row) if row else (0, 0.0, 0, None)
        await db.execute(_PUT_COUNTER, kind, key, int(count) + amount, stamp, int(version) + 1, expires)
        return int(version) + 1

    async def renew(self) -> None:
        """Extend this process's lease; forget dead holders, their holds and expired counters."""
        now = time.time()
        async with self._locked("renew", "") as db:
            changed = await db.execute(
                "UPDATE state_holders SET expires = $1 WHERE holder = $2 AND expires > $3",
                now + self.lease,
                self.holder,
                now,
            )
            if changed != "UPDATE 1":
                await self._join(db, now)
            await db.execute(
                "DELETE FROM state_holds h WHERE NOT EXISTS"
                " (SELECT 1 FROM state_holders p WHERE p.holder = h.holder AND p.expires > $1)",
                now,
            )
            await db.execute("DELETE FROM state_holders WHERE expires <= $1", now)
            await db.execute("DELETE FROM state_counters WHERE expires < $1", now - COUNTER_GRACE)

    async def _join(self, db: Any, now: float) -> None:
        """A new lease. If this process had one that lapsed (it stalled past it), others may
        have taken what it held: it starts again with nothing held."""
        if self._joined:
            log.error("this process's lease lapsed (stalled over %.0f s): its holds are void", self.lease)
            await db.execute("DELETE FROM state_holds WHERE holder = $1", self.holder)
        self._joined = True
        await db.execute(
            "INSERT INTO state_holders (holder, pid, expires) VALUES ($1, $2, $3)"
            " ON CONFLICT (holder) DO UPDATE SET pid = EXCLUDED.pid, expires = EXCLUDED.expires",
            self.holder,
            os.getpid(),
            now + self.lease,
        )

    async def close(self) -> None:
        """Give up the lease and everything held under it (the pool is the store's to close)."""
        try:
            with _translated():
                async with self._pool.acquire() as db, db.transaction():
                    await db.execute("DELETE FROM state_holds WHERE holder = $1", self.holder)
                    await db.execute("DELETE FROM state_holders WHERE holder = $1", self.holder)
        except Exception:
            log.exception("shared state: the lease was not given up (it lapses by itself)")
