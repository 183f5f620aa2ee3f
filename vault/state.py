"""The one-process :class:`~vault.store.StateStore`: holds, counters and mutexes in memory.

This is what a single server uses (``workers: 1``, the default): nothing is shared, so every
operation checks and updates with no await in between, and nothing outlives the process. Holds
need no lease (they die with the process); ``renew`` has nothing to do. Counters are bounded:
past ``max_counters`` the expired ones go first, then the least recently set.
"""

import asyncio
import collections
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from vault.store import Counter, Hold

MAX_COUNTERS = 200_000  # ~300 bytes each: login failures of two kinds, registration windows
HOLDER_BYTES = 8


MUTEX_POLL = 0.02  # seconds between tries of a mutex busy in another process


class PolledMutex:
    """``StateStore.mutex`` for a store shared by processes, none of which can tell another
    when it lets go: a hold of one with a limit of one, tried every MUTEX_POLL seconds."""

    async def hold(self, kind: str, key: str, amount: int, limit: int | None) -> Hold | None:
        raise NotImplementedError

    async def release(self, hold: Hold) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def mutex(self, kind: str, key: str) -> AsyncIterator[None]:
        while (hold := await self.hold(kind, key, 1, 1)) is None:  # noqa: ASYNC110
            await asyncio.sleep(MUTEX_POLL)
        try:
            yield
        finally:
            await self.release(hold)


def new_holder() -> str:
    """An id for one process's lease: random, so a restarted process with the same pid is new."""
    return secrets.token_hex(HOLDER_BYTES)


def new_hold_id() -> str:
    return secrets.token_hex(12)


@dataclass
class _Mutex:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # tasks holding or awaiting the lock


class LocalState:
    """StateStore in this process's memory (the contract: vault/store.py)."""

    shared = False

    def __init__(self, max_counters: int = MAX_COUNTERS, clock: Callable[[], float] = time.time) -> None:
        self.holder = new_holder()
        self._holds: dict[tuple[str, str], dict[str, int]] = {}
        self._counters: collections.OrderedDict[tuple[str, str], tuple[Counter, float | None]] = (
            collections.OrderedDict()
        )
        self._mutexes: dict[tuple[str, str], _Mutex] = {}
        self._max_counters = max_counters
        self._clock = clock

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
        if version is not None and self._counter(kind, key).version != version:
            return None
        holds = self._holds.get((kind, key), {})
        granted = amount if limit is None else min(amount, max(limit - sum(holds.values()), 0))
        if granted < (amount if need is None else need):
            return None
        hold = Hold(new_hold_id(), kind, key, granted)
        self._holds.setdefault((kind, key), {})[hold.id] = hold.amount
        return hold

    async def resize(
        self, hold: Hold, amount: int, limit: int | None, *, version: int | None = None
    ) -> Hold | None:
        holds = self._holds.get((hold.kind, hold.key), {})
        if hold.id not in holds:
            return None
        if version is not None and self._counter(hold.kind, hold.key).version != version:
            return None
        if (
            limit is not None
            and amount > hold.amount
            and sum(holds.values()) - holds[hold.id] + amount > limit
        ):
            return None
        holds[hold.id] = amount
        return Hold(hold.id, hold.kind, hold.key, amount)

    async def release(self, hold: Hold) -> None:
        holds = self._holds.get((hold.kind, hold.key))
        if holds is not None and holds.pop(hold.id, None) is not None and not holds:
            del self._holds[(hold.kind, hold.key)]

    async def held(self, kind: str, key: str) -> int:
        return sum(self._holds.get((kind, key), {}).values())

    async def held_keys(self, kind: str) -> set[str]:
        return {key for (k, key) in self._holds if k == kind}

    def _counter(self, kind: str, key: str) -> Counter:
        entry = self._counters.get((kind, key))
        if entry is None:
            return Counter()
        counter, expires = entry
        if expires is not None and expires <= self._clock():
            del self._counters[(kind, key)]
            return Counter()
        return counter

    async def counter(self, kind: str, key: str) -> Counter:
        return self._counter(kind, key)

    async def set_counter(
        self, kind: str, key: str, count: int, stamp: float, *, version: int, expires: float | None
    ) -> Counter | None:
        current = self._counter(kind, key)
        if current.version != version:
            return None
        counter = Counter(count, stamp, version + 1)
        self._counters[(kind, key)] = (counter, expires)
        self._counters.move_to_end((kind, key))
        self._make_room()
        return counter

    async def bump(self, kind: str, key: str) -> int:
        return self._add(kind, key, 0)

    async def settle(self, hold: Hold, amount: int) -> int:
        await self.release(hold)
        return self._add(hold.kind, hold.key, amount)

    async def tally(self, kind: str, key: str) -> tuple[Counter, int]:
        return self._counter(kind, key), sum(self._holds.get((kind, key), {}).values())

    def _add(self, kind: str, key: str, amount: int) -> int:
        current = self._counter(kind, key)
        expires = self._counters[(kind, key)][1] if (kind, key) in self._counters else None
        counter = Counter(current.count + amount, current.stamp, current.version + 1)
        self._counters[(kind, key)] = (counter, expires)
        self._counters.move_to_end((kind, key))
        self._make_room()
        return counter.version

    def _make_room(self) -> None:
        """Expired counters first, then the least recently set, but never one with live holds
        (a link's count of bytes served while its downloads run: settle adds to it)."""
        if len(self._counters) <= self._max_counters:
            return
        now = self._clock()
        for key in [
            k for k, (_, expires) in self._counters.items() if expires is not None and expires <= now
        ]:
            del self._counters[key]
        excess = len(self._counters) - self._max_counters
        if excess > 0:
            idle = (k for k in self._counters if k not in self._holds)
            for key in list(itertools.islice(idle, excess)):
                del self._counters[key]

    @asynccontextmanager
    async def mutex(self, kind: str, key: str) -> AsyncIterator[None]:
        """In turn, first come first served. The entry stays while anyone holds or awaits it
        (a new lock beside a busy one would let two in at once)."""
        entry = self._mutexes.setdefault((kind, key), _Mutex())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._mutexes[(kind, key)]

    async def renew(self) -> None:
        """Nothing to renew: this state dies with the process."""

    async def close(self) -> None:
        self._holds.clear()
