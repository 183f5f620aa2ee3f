"""The server-wide bound on decrypted download segments (vault/budget.py), in-process: a reader
that stops holds nothing another download needs, waiting never deadlocks, nothing leaks; and
the download caps (vault/limits.py DownloadSlots)."""

import asyncio
import random
from pathlib import Path

import pytest

from tests import incore
from vault.budget import SegmentBudget
from vault.download import PIECE
from vault.errors import TooManyDownloads
from vault.limits import DownloadSlots

S = 4 * PIECE  # four pieces a segment
DATA = random.Random(4).randbytes(9 * S + 123)


class Reader:
    held = 0
    revoked = 0

    def revoke(self) -> None:
        self.revoked += 1


def test_an_idle_holder_gives_way_and_takes_its_turn_again() -> None:
    async def main() -> None:
        budget, a, b = SegmentBudget(1), Reader(), Reader()
        await budget.take(a)
        waiting = asyncio.ensure_future(budget.take(b))
        await asyncio.sleep(0)
        assert not waiting.done() and budget.waiting == 1  # a is busy: b waits
        budget.idle(a)  # a's client stopped reading: b must not wait on it
        await waiting
        assert (a.held, a.revoked, b.held, budget.held, budget.reclaimed) == (0, 1, 1, 1, 1)
        budget.busy(a)
        again = asyncio.ensure_future(budget.take(a))  # a's client reads on
        await asyncio.sleep(0)
        assert not again.done()
        budget.idle(b)
        await again
        assert (a.held, b.held, b.revoked, budget.held) == (1, 0, 1, 1)
        budget.give(a)
        assert budget.held == 0

    asyncio.run(main())


def test_read_ahead_never_waits_and_never_jumps_the_queue() -> None:
    async def main() -> None:
        budget, a, b = SegmentBudget(2), Reader(), Reader()
        assert budget.try_take(a) and budget.try_take(a) and not budget.try_take(a)
        waiting = asyncio.ensure_future(budget.take(b))
        await asyncio.sleep(0)
        budget.give(a)  # the freed room goes to the waiter, not to a's read-ahead
        await waiting
        assert not budget.try_take(a) and (a.held, b.held) == (1, 1)

    asyncio.run(main())


def test_a_waiter_that_goes_away_leaves_nothing_behind() -> None:
    async def main() -> None:
        budget, a, b, c = SegmentBudget(1), Reader(), Reader(), Reader()
        await budget.take(a)
        gone = asyncio.ensure_future(budget.take(b))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert budget.waiting == 0
        budget.give(a)
        assert budget.try_take(c) and budget.held == 1 and b.held == 0

    asyncio.run(main())


def test_a_holder_may_wait_only_when_it_holds_nothing() -> None:
    async def main() -> None:
        budget, a = SegmentBudget(2), Reader()
        await budget.take(a)
        with pytest.raises(RuntimeError):
            await budget.take(a)

    asyncio.run(main())


def test_a_stalled_download_does_not_hold_up_another_on_a_budget_of_one(tmp_path: Path) -> None:
    """Real downloads on a real core: one reads a piece and stops (its client is not reading),
    another reads the whole file meanwhile; then the first reads on. Both get every byte."""

    async def main() -> None:
        async with incore.core(tmp_path / "vault.db", segment_size=S, download_segments=1) as core:
            upload = await core.files.begin_upload(1, None)
            await upload.write(DATA)
            await upload.finish("f.bin")
            budget = core.files.pipe.download_budget
            first, second = await core.files.open(1, "f.bin"), await core.files.open(1, "f.bin")
            stalled = first.read()
            view = await anext(stalled)
            got = [bytes(view[:PIECE])]  # its client took a piece, and now stops reading
            del view  # as handlers/files.py drops it before waiting for its client
            assert budget.held == 1
            whole = b"".join([bytes(view) async for view in second.read()])
            assert whole == DATA and budget.reclaimed >= 1
            got.append(bytes(await stalled.asend(PIECE)))  # the rest of its segment, read again
            got += [bytes(view) async for view in stalled]
            assert b"".join(got) == DATA
            first.close()
            second.close()
            assert budget.held == 0 and len(core.files.pipe.pins) == 0

    asyncio.run(main())


def test_a_view_taken_in_part_is_given_again_from_where_it_was_left(tmp_path: Path) -> None:
    """A consumer says how much of each view it took (handlers/files.py: what the socket
    accepted, then a copied piece); the next view starts right after it, in the same segment
    or the next, whatever the range."""

    async def main() -> None:
        async with incore.core(tmp_path / "vault.db", segment_size=S, download_segments=2) as core:
            upload = await core.files.begin_upload(1, None)
            await upload.write(DATA)
            await upload.finish("f.bin")
            rng = random.Random(7)
            for start, end in [(0, len(DATA)), (5, 5 * S + 7), (S - 1, S + 1), (3 * S, 3 * S + 1)]:
                download = await core.files.open(1, "f.bin")
                views, got, taken = download.read(start, end), [], None
                try:
                    while True:
                        view = await views.asend(taken)
                        assert 0 < len(view) <= S
                        taken = min(len(view), rng.choice([1, 16, PIECE - 1, PIECE, S]))
                        got.append(bytes(view[:taken]))
                        del view
                except StopAsyncIteration:
                    pass
                assert b"".join(got) == DATA[start:end]
                download.close()
            assert core.files.pipe.download_budget.held == 0

    asyncio.run(main())


def test_a_range_starts_and_ends_mid_segment(tmp_path: Path) -> None:
    async def main() -> None:
        async with incore.core(tmp_path / "vault.db", segment_size=S, download_segments=2) as core:
            upload = await core.files.begin_upload(1, None)
            await upload.write(DATA)
            await upload.finish("f.bin")
            for start, end in [(5, 5 * S + 7), (S - 1, S + 1), (0, len(DATA)), (len(DATA) - 1, len(DATA))]:
                download = await core.files.open(1, "f.bin")
                assert b"".join([p async for p in download.read(start, end)]) == DATA[start:end]
                download.close()
            assert core.files.pipe.download_budget.held == 0

    asyncio.run(main())


def test_download_slots_cap_each_key_and_count_ipv6_by_its_64() -> None:
    async def main() -> None:
        slots = DownloadSlots(per_user=1, per_link=2, per_address=3)
        first = await slots.acquire(user=7, link=None, address="2001:db8::1")
        with pytest.raises(TooManyDownloads, match="for this account"):
            await slots.acquire(user=7, link=None, address="192.0.2.1")
        links = [await slots.acquire(user=None, link="L", address="2001:db8::2") for _ in range(2)]
        with pytest.raises(TooManyDownloads, match="through this link"):
            await slots.acquire(user=None, link="L", address="192.0.2.1")
        with pytest.raises(TooManyDownloads, match="from this address"):
            await slots.acquire(user=8, link=None, address="2001:db8::ffff")  # the same /64
        assert slots.total() == 3  # a refusal holds nothing, not even the keys it passed
        await slots.release(first)
        await slots.release(first)  # twice: nothing more
        await slots.release(await slots.acquire(user=7, link=None, address="192.0.2.1"))
        for holds in links:
            await slots.release(holds)
        assert slots.total() == 0
        unlimited = DownloadSlots(0, 0, 0)
        for _ in range(100):
            await unlimited.acquire(user=1, link="L", address="192.0.2.1")

    asyncio.run(main())
