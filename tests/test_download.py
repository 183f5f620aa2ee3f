"""vault/download.py on the real core and SQLite store, in-process (mutation testing,
bench/mutation-survivors.md): which segments a download reads ahead and when, how many it
holds, and a reader that goes away. The bytes themselves are checked by tests/test_budget.py,
tests/test_ranges.py and tests/test_tamper.py; here, what the store is asked for."""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import incore
from vault.core import Core
from vault.download import Abandoned, Download

S = 4096
N = 9  # segments: eight whole and a short last one
DATA = random.Random(1846).randbytes((N - 1) * S + 100)
DEPTH = 3


@contextlib.asynccontextmanager
async def counted_core(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Core, list[int]]]:
    """A core holding DATA as "f.bin" (and "g.bin"), and the list of segment indexes the real
    store is asked for from then on, in order (a wrapper around its own read_segment)."""
    settings = {"segment_size": S, "pipeline_depth": DEPTH, **settings}
    async with incore.core(tmp_path / "vault.db", **settings) as core:
        for name in ("f.bin", "g.bin"):
            upload = await core.files.begin_upload(1, None)
            await upload.write(DATA)
            await upload.finish(name)
        fetched: list[int] = []
        real = core.store.read_segment

        async def counting(file_id: bytes, index: int, tag: bytes) -> bytes | None:
            fetched.append(index)
            return await real(file_id, index, tag)

        core.store.read_segment = counting  # type: ignore[method-assign]
        yield core, fetched


async def _steps(download: Download, start: int, end: int, take: int | None) -> tuple[bytes, list[int]]:
    """Read [start, end) taking ``take`` bytes of each view (None: all of it); the bytes and
    ``download.held`` at each view."""
    views, got, held, taken = download.read(start, end), bytearray(), [], None
    with contextlib.suppress(StopAsyncIteration):
        while True:
            view = await views.asend(taken)
            assert len(view) > 0  # never an empty view (a read that would never end)
            held.append(download.held)
            taken = None if take is None else min(take, len(view))
            got += view[: len(view) if taken is None else taken]
            del view
    return bytes(got), held


@pytest.mark.parametrize(
    ("start", "end", "held"),
    [
        # Nothing is read ahead before the client took something; then up to DEPTH segments
        # are held, the one being sent among them, and never one past the range's last.
        (0, len(DATA), [1, 3, 3, 3, 3, 3, 3, 2, 1]),
        (S + 10, 6 * S + 20, [1, 3, 3, 3, 2, 1]),
        (2 * S, 3 * S, [1]),
        (2 * S - 1, 2 * S + 1, [1, 1]),
        (S + 10, 4 * S + 1, [1, 3, 2, 1]),  # the last segment gives the range one byte
    ],
    ids=["whole", "mid-to-mid", "one-segment", "across-a-boundary", "one-byte-of-the-last"],
)
def test_whole_views_read_each_segment_once_in_order_and_hold_up_to_the_depth(
    tmp_path: Path, start: int, end: int, held: list[int]
) -> None:
    async def main() -> None:
        async with counted_core(tmp_path) as (core, fetched):
            download = await core.files.open(1, "f.bin")
            got, seen = await _steps(download, start, end, None)
            download.close()
            assert got == DATA[start:end]
            assert fetched == list(range(start // S, (end - 1) // S + 1))
            assert seen == held
            assert core.files.pipe.download_budget.held == 0

    asyncio.run(main())


def test_a_view_taken_in_parts_reads_ahead_the_segments_after_its_own(tmp_path: Path) -> None:
    """The client takes 1000 bytes of each view: after the first part the segment being sent is
    kept and the two after it are read ahead, never the one being sent again."""

    async def main() -> None:
        async with counted_core(tmp_path) as (core, fetched):
            download = await core.files.open(1, "f.bin")
            views = download.read(S + 10, 4 * S)
            view = await anext(views)
            assert (len(view), download.held, fetched) == (S - 10, 1, [1])
            del view
            view = await views.asend(1000)
            assert (len(view), download.held) == (S - 1010, DEPTH)
            del view
            await asyncio.sleep(0)  # a loop turn: the read-ahead tasks ask the store
            assert fetched == [1, 2, 3]
            got, taken = bytearray(DATA[S + 10 : S + 2010]), 1000
            with contextlib.suppress(StopAsyncIteration):
                while True:
                    view = await views.asend(taken)
                    taken = min(1000, len(view))
                    got += view[:taken]
                    del view
            download.close()
            assert bytes(got) == DATA[S + 10 : 4 * S]
            assert fetched == [1, 2, 3]

    asyncio.run(main())


def test_a_reclaimed_segment_taken_in_part_is_read_again_before_the_next(tmp_path: Path) -> None:
    """A stalled download's segments are reclaimed (a budget of two, which another download
    needs): when its client takes part of the view it had, the same segment is read again
    first, and the next one ahead of it, each once."""

    async def main() -> None:
        async with counted_core(tmp_path, download_segments=2) as (core, fetched):
            first, second = await core.files.open(1, "f.bin"), await core.files.open(1, "g.bin")
            stalled = first.read(0, 3 * S)
            view = await anext(stalled)
            got = bytearray(view[:100])
            del view
            view = await stalled.asend(100)
            got += view[:100]
            del view
            assert first.held == 2 and core.files.pipe.download_budget.held == 2
            assert b"".join([bytes(v) async for v in second.read()]) == DATA
            assert first.held == 0 and core.files.pipe.download_budget.reclaimed >= 1
            fetched.clear()
            view = await stalled.asend(100)
            assert first.held == 2  # segment 0 again, and 1 read ahead
            got += view
            del view
            got += b"".join([bytes(v) async for v in stalled])
            assert bytes(got) == DATA[: 3 * S]
            assert fetched == [0, 1, 2]
            first.close()
            second.close()

    asyncio.run(main())


def test_an_abandoned_download_reads_nothing_more_and_holds_nothing(tmp_path: Path) -> None:
    """handlers/files.py abandons a download whose client went away: the segments read ahead
    are dropped (their cancelled reads report nothing to the loop), the next step raises
    Abandoned without asking the store for another segment, and the budget is given back."""

    async def main() -> None:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        async with counted_core(tmp_path) as (core, fetched):
            download = await core.files.open(1, "f.bin")
            assert download.info.name == "f.bin" and download.info.size == len(DATA) == download.size
            views = download.read()
            view = await anext(views)
            assert bytes(view) == DATA[:S]
            del view
            view = await views.asend(100)
            del view
            assert download.held == DEPTH  # segment 0, and 1 and 2 read ahead
            download.abandon()
            assert download.held == 0 and core.files.pipe.download_budget.held == 0
            with pytest.raises(Abandoned):
                await views.asend(None)
            for _ in range(3):
                await asyncio.sleep(0)  # loop turns: the cancelled reads' callbacks run
            assert set(fetched) <= {0, 1, 2} and fetched[0] == 0 and sorted(set(fetched)) == sorted(fetched)
            assert download.held == 0 and core.files.pipe.download_budget.held == 0
            download.close()
            assert len(core.files.pipe.pins) == 0
        assert reported == []

    asyncio.run(main())


def test_closing_a_download_twice_releases_its_pin_once(tmp_path: Path) -> None:
    """A pin keeps a file's segments from being purged while it is read: a second close of one
    download must not release the pin another download of the same file holds."""

    async def main() -> None:
        async with counted_core(tmp_path) as (core, _):
            pins = core.files.pipe.pins
            first, second = await core.files.open(1, "f.bin"), await core.files.open(1, "f.bin")
            file_id = first.header.file_id
            first.close()
            first.close()
            assert file_id in pins
            assert b"".join([bytes(v) async for v in second.read()]) == DATA
            second.close()
            assert file_id not in pins and len(pins) == 0

    asyncio.run(main())


def test_two_reads_of_one_download_interleaved_each_get_their_bytes(tmp_path: Path) -> None:
    """handlers/files.py reads one range at a time, but nothing forbids two: a read that moves
    to another segment while the other read's segment is kept gives that segment back."""

    async def main() -> None:
        async with counted_core(tmp_path) as (core, _):
            download = await core.files.open(1, "f.bin")
            one, two = download.read(0, 2 * S), download.read(5 * S, 7 * S)
            got_one, got_two = bytearray(), bytearray()
            for _ in range(2):
                for views, got in ((one, got_one), (two, got_two)):
                    view = await views.asend(None) if got else await anext(views)
                    got += view
                    del view
                    assert download.held <= DEPTH
            for views in (one, two):
                with pytest.raises(StopAsyncIteration):
                    await views.asend(None)
            assert (bytes(got_one), bytes(got_two)) == (DATA[: 2 * S], DATA[5 * S : 7 * S])
            download.close()
            assert core.files.pipe.download_budget.held == 0

    asyncio.run(main())


def test_an_empty_range_reads_nothing_and_a_range_outside_the_file_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with counted_core(tmp_path) as (core, fetched):
            download = await core.files.open(1, "f.bin")
            for at in (0, S, len(DATA)):
                assert [v async for v in download.read(at, at)] == []
            for start, end in ((-1, 5), (5, 4), (0, len(DATA) + 1)):
                with pytest.raises(ValueError, match="^range outside the file$"):
                    await anext(download.read(start, end))
            assert fetched == [] and download.held == 0
            download.close()

    asyncio.run(main())


def test_a_download_reading_on_is_not_reclaimed_while_it_waits_for_its_next_segment(tmp_path: Path) -> None:
    """Once its client took the bytes, a download is busy again: another download that needs
    the budget, full of the first one's segments, waits for it instead of reclaiming them
    while the first reads on (its count would go while it still keeps the segment it awaits)."""

    async def main() -> None:
        async with counted_core(tmp_path, download_segments=DEPTH) as (core, _):
            first, second = await core.files.open(1, "f.bin"), await core.files.open(1, "g.bin")
            views = first.read()
            view = await anext(views)
            got = bytearray(view[:100])
            del view
            view = await views.asend(100)  # segments 1 and 2 read ahead: the budget is full
            got += view
            del view
            assert first.held == DEPTH == core.files.pipe.download_budget.held

            async def other() -> bytes:
                return b"".join([bytes(v) async for v in second.read()])

            waiting = asyncio.ensure_future(other())  # it runs at the first's next wait
            got += b"".join([bytes(v) async for v in views])
            assert bytes(got) == DATA
            # The first was never idle while the second waited: nothing was taken from it.
            assert core.files.pipe.download_budget.reclaimed == 0
            assert await waiting == DATA
            first.close()
            second.close()
            assert core.files.pipe.download_budget.held == 0

    asyncio.run(main())
