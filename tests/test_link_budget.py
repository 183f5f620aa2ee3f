"""A limited link's budget while a response's charge is under way, exactly: the real core on
each shared state (LocalState in one process; SQLiteState and PostgresState with the reader a
second core on the same database, as another worker or instance would be), a response's charge
stopped between its steps, and the checks of a HEAD, a landing page and a download asked in
between (rules: vault/sharing.py).

The charge stops where the store has counted the bytes and the shared state not yet: an event
set by the store's ``charge_link`` once its write is done, and another that lets it return.
No sleeps: every step waits for the one before it.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from storage.sqlite import SQLiteStore
from storage.sqlite_state import SQLiteState
from tests import incore, pg
from vault.auth import Identity
from vault.config import Settings
from vault.core import Core, open_core
from vault.errors import Gone
from vault.sharing import LINK_BYTES, PREVIEW_ALLOWANCE, Sharing, token_hash
from vault.state import LocalState
from vault.store import StateStore, Store

KiB = 1024
SIZE = 200 * KiB  # its preview allowance: min(64 KiB, SIZE // 2) = 64 KiB
PASSWORD = "correct horse battery"

Cores = Callable[[Path], Any]  # an async context manager yielding (writer, reader) cores


@contextlib.asynccontextmanager
async def built(db: Path, store: Store, state: StateStore) -> AsyncIterator[Core]:
    settings = Settings(data_dir=db.parent, bcrypt_rounds=4)
    try:
        async with open_core(settings, store, keyring=incore.keyring(), environ={}, state=state) as core:
            yield core
    finally:
        await state.close()
        await store.close()


@contextlib.asynccontextmanager
async def local(tmp_path: Path) -> AsyncIterator[tuple[Core, Core]]:
    """One process (workers: 1): the reader is the writer."""
    db = tmp_path / "vault.db"
    async with built(db, await SQLiteStore.open(db), LocalState()) as core:
        yield core, core


@contextlib.asynccontextmanager
async def sqlite(tmp_path: Path) -> AsyncIterator[tuple[Core, Core]]:
    """Two workers on one SQLite database."""
    db = tmp_path / "vault.db"
    async with built(db, await SQLiteStore.open(db), await SQLiteState.open(db)) as writer:
        async with built(db, await SQLiteStore.open(db), await SQLiteState.open(db)) as reader:
            yield writer, reader


@contextlib.asynccontextmanager
async def postgres(tmp_path: Path) -> AsyncIterator[tuple[Core, Core]]:
    """Two instances on one PostgreSQL database."""
    from storage.postgres import PostgresStore
    from storage.postgres_state import PostgresState

    assert pg.CLUSTER is not None
    url = await pg.CLUSTER.scratch(str(tmp_path))
    db = tmp_path / "vault.db"

    async def instance() -> tuple[PostgresStore, PostgresState]:
        store = await PostgresStore.open(url, pool_size=4)
        return store, await PostgresState.open(store)

    async with built(db, *await instance()) as writer, built(db, *await instance()) as reader:
        yield writer, reader


SETUPS: dict[str, Cores] = {"local": local, "sqlite": sqlite, "postgres": postgres}


@pytest.fixture(params=sorted(SETUPS))
def cores(request: pytest.FixtureRequest) -> Cores:
    if request.param == "postgres":
        request.getfixturevalue("pg_cluster")
    return SETUPS[request.param]


class Paused:
    """Stops the writer's charges once the store has counted them: ``charged`` is set then,
    and the charge goes on (to the shared state) when ``go`` is set."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.charged = asyncio.Event()
        self.go = asyncio.Event()
        counted = store.charge_link

        async def charge_link(link_id: str, nbytes: int) -> None:
            await counted(link_id, nbytes)
            self.charged.set()
            await self.go.wait()

        monkeypatch.setattr(store, "charge_link", charge_link)


def run(tmp_path: Path, cores: Cores, scenario: Callable[[Core, Core], Awaitable[None]]) -> None:
    async def main() -> None:
        async with cores(tmp_path) as (writer, reader):
            await scenario(writer, reader)

    asyncio.run(main())


async def linked_file(core: Core, max_downloads: int) -> tuple[Identity, str]:
    """alice's SIZE-byte file and the token of a link to it allowing ``max_downloads``."""
    await core.auth.register("alice", PASSWORD)
    user = await core.auth.find_user("alice")
    assert user is not None
    alice = Identity(user.id, user.username)
    upload = await core.files.begin_upload(alice.user_id, SIZE)
    await upload.write(b"d" * SIZE)
    await upload.finish("f.bin")
    _, token = await core.sharing.create_link(alice, "f.bin", None, None, max_downloads)
    return alice, token


async def send(sharing: Sharing, token: str, nbytes: int) -> None:
    """A response of ``nbytes`` through the link, sent whole and charged."""
    link, opened = await sharing.open_link(token, None)
    opened.close()
    reservation = await sharing.reserve(link, SIZE, nbytes)
    reservation.sent = nbytes
    await reservation.close()


async def head(sharing: Sharing, token: str, nbytes: int = SIZE) -> None:
    """A HEAD's checks (a landing page's are the first): the link opens, and ``nbytes`` fit."""
    link, opened = await sharing.open_link(token, None)
    opened.close()
    await sharing.check_left(link, SIZE, nbytes)


def test_a_copy_being_charged_is_counted_once_by_head_the_page_and_a_preview(
    tmp_path: Path, cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store has counted a one-time link's whole copy, the shared state not yet: counted
    twice, the link would refuse the preview allowance (a 410 for a 206, seen in PostgreSQL
    mode); counted never, it would offer a second copy. Either way it is counted once."""

    async def scenario(writer: Core, reader: Core) -> None:
        _, token = await linked_file(writer, 1)
        paused = Paused(writer.store, monkeypatch)
        link, opened = await writer.sharing.open_link(token, None)
        opened.close()
        copy = await writer.sharing.reserve(link, SIZE, SIZE)
        copy.sent = SIZE
        charging = asyncio.ensure_future(copy.close())
        await paused.charged.wait()

        await head(reader.sharing, token, PREVIEW_ALLOWANCE)  # the page opens; a preview fits
        with pytest.raises(Gone, match="no downloads left"):
            await head(reader.sharing, token)  # a whole copy does not: HEAD is 410
        preview_link, opened = await reader.sharing.open_link(token, None)
        opened.close()
        with pytest.raises(Gone, match="no downloads left"):
            await reader.sharing.reserve(preview_link, SIZE, PREVIEW_ALLOWANCE + 1)
        preview = await reader.sharing.reserve(preview_link, SIZE, PREVIEW_ALLOWANCE)

        paused.go.set()
        await charging
        preview.sent = PREVIEW_ALLOWANCE
        await preview.close()
        for core in (writer, reader):  # spent to the byte, for every process
            with pytest.raises(Gone, match="no downloads left"):
                await core.sharing.open_link(token, None)

    run(tmp_path, cores, scenario)


def test_a_second_copy_of_a_two_download_link_is_granted_while_the_first_is_charged(
    tmp_path: Path, cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download right after another must not find the first both charged and held; and the
    two copies are all there is."""

    async def scenario(writer: Core, reader: Core) -> None:
        _, token = await linked_file(writer, 2)
        paused = Paused(writer.store, monkeypatch)
        charging = asyncio.ensure_future(send(writer.sharing, token, SIZE))
        await paused.charged.wait()

        link, opened = await reader.sharing.open_link(token, None)
        opened.close()
        second = await reader.sharing.reserve(link, SIZE, SIZE)
        with pytest.raises(Gone, match="no downloads left"):
            await reader.sharing.reserve(link, SIZE, SIZE)  # a third, while both are under way

        paused.go.set()
        await charging
        second.sent = SIZE
        await second.close()
        await head(reader.sharing, token, PREVIEW_ALLOWANCE)
        with pytest.raises(Gone, match="no downloads left"):
            await head(writer.sharing, token)

    run(tmp_path, cores, scenario)


def test_a_check_with_the_link_read_before_the_last_copy_ended_sees_it_spent(
    tmp_path: Path, cores: Cores
) -> None:
    """A HEAD opens the link (reading its row) while the one-time copy still runs, and checks
    the budget after the copy ended and was charged: the copy is not lost between the row read
    before it ended and the holds read after (this was a 200 for a 410 in loaded test runs)."""

    async def scenario(writer: Core, reader: Core) -> None:
        _, token = await linked_file(writer, 1)
        link, opened = await writer.sharing.open_link(token, None)
        opened.close()
        copy = await writer.sharing.reserve(link, SIZE, SIZE)
        early, opened = await reader.sharing.open_link(token, None)  # while the copy is held
        opened.close()
        copy.sent = SIZE
        await copy.close()
        with pytest.raises(Gone, match="no downloads left"):
            await reader.sharing.check_left(early, SIZE, SIZE)
        await reader.sharing.check_left(early, SIZE, PREVIEW_ALLOWANCE)

    run(tmp_path, cores, scenario)


def test_a_download_under_way_when_the_count_was_not_kept_is_never_counted_short(
    tmp_path: Path, cores: Cores
) -> None:
    """A count the shared state does not have yet (kept by an older version, or lost) is
    seeded from the store's, but not while a response that began without it runs (its bytes
    may already be in the store's count, and its end adds them again): meanwhile that response
    is counted twice, and once it ends the count is exact, for good."""

    async def scenario(writer: Core, reader: Core) -> None:
        _, token = await linked_file(writer, 2)
        link = await writer.store.get_link(token_hash(token))
        assert link is not None
        # A response begun by an older version: a hold with no count beside it, and its
        # bytes charged to the store; not yet given back.
        hold = await writer.state.hold(LINK_BYTES, link.id, SIZE, None)
        assert hold is not None
        await writer.store.charge_link(link.id, SIZE)
        with pytest.raises(Gone, match="no downloads left"):
            await head(reader.sharing, token)  # 2 * SIZE counted of 2 * SIZE + 64 KiB

        await writer.state.settle(hold, SIZE)
        await send(reader.sharing, token, SIZE)  # the second copy: exactly one was counted
        await head(writer.sharing, token, PREVIEW_ALLOWANCE)
        with pytest.raises(Gone, match="no downloads left"):
            await head(writer.sharing, token, PREVIEW_ALLOWANCE + 1)

    run(tmp_path, cores, scenario)


def test_a_listing_counts_a_copy_whose_charge_is_not_yet_written(
    tmp_path: Path, cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-time copy has ended for its client; its charge has not reached the store yet
    (the response's hold is still live). The owner's listing, paged or whole, already shows it
    spent, as HEAD and a second download do (a listing right after a copy showed 1.0 left in a
    loaded full run); a limitless link is listed without a budget."""

    async def scenario(writer: Core, reader: Core) -> None:
        alice, token = await linked_file(writer, 1)
        free, _ = await writer.sharing.create_link(alice, "f.bin", None, None, None)
        reached, go = asyncio.Event(), asyncio.Event()
        counted = writer.store.charge_link

        async def charge_link(link_id: str, nbytes: int) -> None:
            reached.set()
            await go.wait()
            await counted(link_id, nbytes)

        monkeypatch.setattr(writer.store, "charge_link", charge_link)
        charging = asyncio.ensure_future(send(writer.sharing, token, SIZE))
        await reached.wait()

        async def left(core: Core) -> tuple[dict[str, float | None], dict[str, float | None]]:
            whole = {info.id: info.downloads_left for info in await core.sharing.links(alice)}
            page = await core.sharing.links_page(alice, None, 10)
            return whole, {info.id: info.downloads_left for info in page.items}

        for core in (writer, reader):
            whole, paged = await left(core)
            assert whole == paged and whole.pop(free.id) is None and list(whole.values()) == [0.0]
        go.set()
        await charging
        for core in (writer, reader):
            whole, paged = await left(core)
            assert whole == paged and whole.pop(free.id) is None and list(whole.values()) == [0.0]

    run(tmp_path, cores, scenario)
    if cores is local:  # a lone process restarted: no count in its state, the row's is listed

        async def restarted() -> list[float | None]:
            db = tmp_path / "vault.db"
            async with built(db, await SQLiteStore.open(db), LocalState()) as core:
                alice = await core.auth.find_user("alice")
                assert alice is not None
                infos = await core.sharing.links(Identity(alice.id, alice.username))
                return sorted((info.downloads_left for info in infos), key=lambda left: left is None)

        assert asyncio.run(restarted()) == [0.0, None]


def test_a_listing_reads_the_shared_state_once_and_only_held_links_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing costs one read of the state's live holds, then a tally for each link a
    response holds now, not one state round trip per limited link (thousands of one-time
    links would make /links slow on PostgreSQL)."""

    async def scenario(writer: Core, reader: Core) -> None:
        alice, token = await linked_file(writer, 1)
        for _ in range(3):
            await writer.sharing.create_link(alice, "f.bin", None, None, 2)
        state = writer.sharing._state
        tallies = 0
        real_tally = state.tally

        async def counted(kind: str, key: str) -> Any:
            nonlocal tallies
            tallies += 1
            return await real_tally(kind, key)

        monkeypatch.setattr(state, "tally", counted)
        seen = []
        await writer.sharing.links(alice)
        await writer.sharing.links_page(alice, None, 10)
        seen.append(tallies)
        link, opened = await writer.sharing.open_link(token, None)
        opened.close()
        under_way = await writer.sharing.reserve(link, SIZE, SIZE)  # a download holds this link
        tallies = 0
        await writer.sharing.links(alice)
        await writer.sharing.links_page(alice, None, 10)
        seen.append(tallies)
        under_way.sent = SIZE
        await under_way.close()
        assert seen == [0, 2]  # none held: none; one held: one per listing

    run(tmp_path, local, scenario)
