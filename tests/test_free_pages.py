"""The SQLite store's free pages (storage/sqlite.py, give_back): the space of purged files is
kept inside the database up to ``keep_free`` bytes, where the next upload writes without
growing the file, the rest is given back to the file system, and all of it while the disk
reserve is given up or the file system has less than ``keep_free`` free (README, Space)."""

import asyncio
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from storage.sqlite import SQLiteStore

MiB = 1024 * 1024
PAGE = 65536  # the store's page size (a new database)
RESERVE = 20 * MiB  # the smallest disk_reserve allowed


def pages(db: Path) -> tuple[int, int]:
    """(page_count, freelist_count) as another connection sees them."""
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int(count), int(free)


async def stage(store: SQLiteStore, segments: int) -> bytes:
    """A staged file of ``segments`` 1 MiB segments (no process pins it: a purge removes it)."""
    file_id = os.urandom(16)
    await store.stage_file(file_id, 1, 0.0)
    for index in range(segments):
        await store.put_segment(file_id, index, os.urandom(32), os.urandom(MiB))
    return file_id


async def purged(store: SQLiteStore) -> None:
    """Purge the staged files, then give free pages back (as the purge does in the background)."""
    assert await store.purge(keep=(), staged_too=True) >= 1
    await store.give_back()


def test_a_purged_files_pages_are_kept_up_to_keep_free_and_the_next_upload_writes_into_them(
    tmp_path: Path,
) -> None:
    db = tmp_path / "vault.db"

    async def scenario() -> None:
        store = await SQLiteStore.open(db, keep_free=4 * MiB)
        try:
            await stage(store, 8)
            grown, _ = pages(db)
            await purged(store)
            count, free = pages(db)
            assert free == 4 * MiB // PAGE  # the rest went back to the file system
            assert count < grown - 3 * MiB // PAGE
            await stage(store, 3)  # 3 MiB: fits in the 4 MiB kept
            assert pages(db)[0] == count  # written into the kept pages, not past the file's end
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "keep_free",
    [0, 2**60],  # none kept; more than any disk here has free (the file system needs it)
    ids=["keep_free_zero", "file_system_has_less_than_keep_free"],
)
def test_every_free_page_is_given_back(tmp_path: Path, keep_free: int) -> None:
    db = tmp_path / "vault.db"

    async def scenario() -> None:
        store = await SQLiteStore.open(db, keep_free=keep_free)
        try:
            await stage(store, 4)
            await purged(store)
            assert pages(db)[1] == 0
        finally:
            await store.close()

    asyncio.run(scenario())


def test_every_free_page_is_given_back_while_the_disk_reserve_is_given_up(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    reserve = tmp_path / "vault.db.reserve"

    async def scenario() -> None:
        store = await SQLiteStore.open(db, reserve=RESERVE, keep_free=64 * MiB)
        try:
            await stage(store, 4)
            assert reserve.exists()
            reserve.unlink()  # as Reserve.release does when the disk runs short
            await purged(store)
            assert pages(db)[1] == 0  # nothing kept: the file system needs the space
            assert reserve.stat().st_size == RESERVE  # then held again (room for it twice)
        finally:
            await store.close()

    asyncio.run(scenario())
