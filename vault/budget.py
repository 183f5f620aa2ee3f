"""One bound for the decrypted download segments of the whole server.

A download holds plaintext only while its client takes it. Each decrypted segment a download
keeps (the one being sent, and those read ahead) counts against ``SegmentBudget.limit``; at
the limit a download waits for room instead of failing. Three rules keep that wait finite:

- a holder waits only while it holds nothing (``take``), and reads ahead only with room to
  spare (``try_take``, which never waits): no one waits while holding what another needs;
- a holder whose client is not reading (``idle``: it awaits its socket) gives its segments
  back as soon as someone waits (``Holder.revoke``), longest idle first; it decrypts them
  again when its client reads on, so a stalled client holds no plaintext that others need;
- waiters are served in order of arrival, and read-ahead never takes room while anyone waits.

So every segment held is either in active use, which ends, or reclaimable at once.
"""

import asyncio
import collections
from typing import Protocol


class Holder(Protocol):
    held: int  # segments counted for this holder (only SegmentBudget changes it)

    def revoke(self) -> None:
        """Drop every decrypted segment held (the budget takes the count back)."""


class SegmentBudget:
    """At most ``limit`` decrypted download segments held at once, server-wide."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the segment budget needs room for one segment")
        self.limit = limit
        self.held = 0
        self.reclaimed = 0  # segments taken back from idle holders (metrics, tests)
        self._waiters: collections.deque[tuple[asyncio.Future[None], Holder]] = collections.deque()
        self._idle: dict[Holder, None] = {}  # insertion order: longest idle first
        self._reclaim_soon = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_take(self, holder: Holder) -> bool:
        """One more segment for ``holder`` if there is room and no one waits; never waits."""
        if self.held < self.limit and not self._waiters:
            self._grant(holder)
            return True
        return False

    async def take(self, holder: Holder) -> None:
        """One segment for ``holder``, which holds none: waits (in order of arrival) until
        there is room, reclaiming from idle holders first."""
        if holder.held:
            raise RuntimeError("a holder waits for room only while it holds nothing")
        if self.try_take(holder):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, holder))
        self._reclaim()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give(holder)  # granted, but the waiter went away before it could use it
            else:
                self._waiters.remove((future, holder))
                self._wake()
            raise

    def give(self, holder: Holder, count: int = 1) -> None:
        """``holder`` dropped ``count`` segments."""
        count = min(count, holder.held)
        holder.held -= count
        self.held -= count
        if not holder.held:
            self._idle.pop(holder, None)
        self._wake()

    def idle(self, holder: Holder) -> None:
        """``holder`` waits for its client: what it holds may be reclaimed until ``busy``."""
        if holder.held:
            self._idle[holder] = None
            if self._waiters and not self._reclaim_soon:
                # Soon, not now: a client that takes the bytes at once makes its holder busy
                # again before this runs, and keeps its segments.
                self._reclaim_soon = True
                asyncio.get_running_loop().call_soon(self._reclaim)

    def busy(self, holder: Holder) -> None:
        self._idle.pop(holder, None)

    def _reclaim(self) -> None:
        self._reclaim_soon = False
        while self._waiters and self.held >= self.limit and self._idle:
            holder = next(iter(self._idle))
            del self._idle[holder]
            count = holder.held
            holder.revoke()
            self.reclaimed += count
            self.give(holder, count)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.limit:
            future, holder = self._waiters.popleft()
            if not future.done():
                self._grant(holder)
                future.set_result(None)

    def _grant(self, holder: Holder) -> None:
        holder.held += 1
        self.held += 1
