"""vault/sharing.py in-process on the real core (tests/incore.py: ``open_core`` on a real
SQLite file): grants, links, their passwords, budgets, refunds and listings, each rule at its
exact boundary. tests/test_sharing.py checks the same rules over HTTPS against run.py; these
run inside the test process, so mutation testing (bench/mutation.sh) sees them."""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests import incore
from tests.dbedit import edit
from vault.auth import Identity
from vault.core import Core
from vault.errors import Busy, FileNotFound, Gone, InvalidCredentials, InvalidField, NotFound, TooManyAttempts
from vault.rows import GRANT
from vault.sharing import (
    COUNT_KEPT,
    FREE_FAILURES,
    LINK_BYTES,
    LINK_GUESS,
    MAX_BACKOFF,
    RECEIVE_SLACK,
    Sharing,
    link_budget,
    link_key,
    lock_out,
    token_hash,
)
from vault.state import LocalState
from vault.store import Counter, Grant, Link

PASSWORD = "correct horse battery"


run = incore.run


async def account(core: Core, name: str) -> Identity:
    await core.auth.register(name, PASSWORD)
    return await known(core, name)


known = incore.identity


async def put(core: Core, owner: Identity, name: str, data: bytes) -> None:
    upload = await core.files.begin_upload(owner.user_id, len(data))
    await upload.write(data)
    await upload.finish(name)


async def read_all(core: Core, opened: Any) -> bytes:
    try:
        return b"".join([chunk async for chunk in opened.read()])
    finally:
        opened.close()


# --------------------------------------------------------------------------- pure rules


def test_lock_out_starts_at_the_fifth_failure_and_doubles_up_to_an_hour() -> None:
    now = 1_000_000.0
    assert [lock_out(n, now) for n in range(FREE_FAILURES)] == [0.0] * FREE_FAILURES
    waits = [lock_out(FREE_FAILURES + k, now) - now for k in range(14)]
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, MAX_BACKOFF, MAX_BACKOFF]
    assert lock_out(10**6, now) == now + MAX_BACKOFF


def test_a_cursor_that_is_not_one_is_refused_with_the_documented_message() -> None:
    assert link_key("12.5/abc_-") == (12.5, "abc_-")
    with pytest.raises(InvalidField) as refused:
        link_key("12.5")
    assert str(refused.value) == "Query parameter 'after' is not a cursor from 'next'"


# --------------------------------------------------------------------------- grants


def test_a_grant_is_revoked_once_and_then_opens_nothing(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice, bob = await account(core, "alice"), await account(core, "bob")
        await put(core, alice, "caf\u00e9.txt", b"latte")
        decomposed = "cafe\u0301.txt"
        assert await core.sharing.grant(alice, decomposed, "bob") == ("caf\u00e9.txt", "bob")
        assert await read_all(core, await core.sharing.open_shared(bob, "alice", decomposed)) == b"latte"
        assert await core.sharing.revoke(alice, decomposed, "bob") == ("caf\u00e9.txt", "bob")
        with pytest.raises(FileNotFound):
            await core.sharing.open_shared(bob, "alice", "caf\u00e9.txt")
        assert await core.sharing.shared_with(bob) == []
        for username in ("bob", "nobody"):
            with pytest.raises(NotFound) as refused:
                await core.sharing.revoke(alice, "caf\u00e9.txt", username)
            assert str(refused.value) == "Not shared with that user"

    run(tmp_path, scenario)


def test_only_the_owners_grant_to_the_reader_opens_a_shared_file(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice, bob, carol = [await account(core, name) for name in ("alice", "bob", "carol")]
        await put(core, alice, "f.bin", b"alice's")
        await put(core, carol, "f.bin", b"carol's")
        await core.sharing.grant(alice, "f.bin", "bob")
        assert await read_all(core, await core.sharing.open_shared(bob, "alice", "f.bin")) == b"alice's"
        for reader, owner, name in [
            (carol, "alice", "f.bin"),  # not granted to carol
            (bob, "carol", "f.bin"),  # carol granted nothing
            (bob, "nobody", "f.bin"),  # no such owner
            (bob, "alice", "g.bin"),  # no such file
        ]:
            with pytest.raises(FileNotFound):
                await core.sharing.open_shared(reader, owner, name)

    run(tmp_path, scenario)


def test_grantees_are_sorted_and_a_forged_grant_is_neither_listed_nor_opened_but_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        for name in ("carol", "bob"):
            await account(core, name)
        dave = await account(core, "dave")
        await put(core, alice, "caf\u00e9.txt", b"latte")
        await core.sharing.grant(alice, "caf\u00e9.txt", "carol")
        await core.sharing.grant(alice, "caf\u00e9.txt", "bob")
        # dave's grant written by someone without the row key: a wrong tag.
        forged = GRANT.seal(
            core.keyring, Grant(alice.user_id, "caf\u00e9.txt", dave.user_id, time.time(), 0, b"")
        )
        assert await core.store.put_grant(dataclasses.replace(forged, tag=bytes(len(forged.tag))))
        caplog.clear()
        assert await core.sharing.grantees(alice, "cafe\u0301.txt") == ("caf\u00e9.txt", ["bob", "carol"])
        with pytest.raises(FileNotFound):
            await core.sharing.open_shared(dave, "alice", "caf\u00e9.txt")
        assert await core.sharing.shared_with(dave) == []
        with pytest.raises(FileNotFound):
            await core.sharing.grantees(alice, "missing.txt")
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vault.sharing"]
        forged_logged = (
            logging.ERROR,
            f"grant of 'caf\u00e9.txt' by {alice.user_id} failed its integrity check",
        )
        assert logged == [forged_logged] * 3  # grantees, open_shared, shared_with: each saw it

    run(tmp_path, scenario)


@pytest.mark.parametrize("username", ["", 5, None, ["bob"]])
def test_a_grant_needs_a_username_that_is_a_non_empty_string(tmp_path: Path, username: object) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await account(core, "bob")
        await put(core, alice, "f.bin", b"x")
        with pytest.raises(InvalidField) as refused:
            await core.sharing.grant(alice, "f.bin", username)
        assert str(refused.value) == "Field 'username' is required and must be a non-empty string"
        assert await core.sharing.grantees(alice, "f.bin") == ("f.bin", [])

    run(tmp_path, scenario)


def test_a_grant_to_nobody_or_to_oneself_is_refused_with_its_reason(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"x")
        for username, error, message in [
            ("nobody", NotFound, "User not found"),
            ("alice", InvalidField, "You cannot share a file with yourself"),
        ]:
            with pytest.raises(error) as refused:
                await core.sharing.grant(alice, "f.bin", username)
            assert str(refused.value) == message
        assert await core.sharing.grantees(alice, "f.bin") == ("f.bin", [])

    run(tmp_path, scenario)


def test_files_shared_by_an_owner_whose_row_no_longer_verifies_are_left_out(tmp_path: Path) -> None:
    async def populate(core: Core) -> None:
        alice, _, carol = [await account(core, name) for name in ("alice", "bob", "carol")]
        for owner in (alice, carol):
            await put(core, owner, "f.bin", owner.username.encode())
            await core.sharing.grant(owner, "f.bin", "bob")

    run(tmp_path, populate)
    with edit(tmp_path / "vault.db") as con:
        con.execute("UPDATE users SET password_hash = ? WHERE username = 'alice'", (b"$2b$forged",))

    async def listed(core: Core) -> None:
        bob = await known(core, "bob")
        assert [(s.owner, s.info.name) for s in await core.sharing.shared_with(bob)] == [("carol", "f.bin")]
        page = await core.sharing.shared_page(bob, None, 10)
        assert [(s.owner, s.info.name) for s in page.items] == [("carol", "f.bin")]

    run(tmp_path, listed)


# --------------------------------------------------------------------------- budgets and refunds

SIZE = 1000  # a link allowing N downloads may send N * SIZE + 500 (the preview allowance)
BIG = RECEIVE_SLACK + 1024 * 1024  # where a cut-off response's doubt starts after its start


async def limited_link(core: Core, max_downloads: int, size: int = SIZE) -> tuple[Identity, Link]:
    """alice and a link to her ``size``-byte file f.bin allowing ``max_downloads``."""
    alice = await account(core, "alice")
    await put(core, alice, "f.bin", b"d" * size)
    _, token = await core.sharing.create_link(alice, "f.bin", None, None, max_downloads)
    link, opened = await core.sharing.open_link(token, None)
    opened.close()
    return alice, link


async def link_to(core: Core, owner: Identity, max_downloads: int) -> Link:
    """Another link to ``owner``'s f.bin."""
    _, token = await core.sharing.create_link(owner, "f.bin", None, None, max_downloads)
    link, opened = await core.sharing.open_link(token, None)
    opened.close()
    return link


async def respond(
    core: Core, link: Link, nbytes: int, start: int, sent: int, unacked: int | None = None, size: int = SIZE
) -> None:
    """A response of ``nbytes`` from ``start`` that sent ``sent`` of them (fewer: cut off) with
    ``unacked`` of those not acknowledged by the client's TCP when it ended (None: not measured)."""
    reservation = await core.sharing.reserve(link, size, nbytes, start)
    reservation.sent = sent
    if unacked is not None:
        reservation.unacked = unacked
    await reservation.close()


async def fits(core: Core, link: Link, nbytes: int, start: int, size: int = SIZE) -> bool:
    try:
        await core.sharing.check_left(link, size, nbytes, start)
    except Gone as gone:
        assert str(gone) == "This link has no downloads left"
        return False
    return True


async def most(core: Core, link: Link, start: int, size: int = SIZE) -> int:
    """The longest response from ``start`` the link allows now (check_left's bound, exactly)."""
    left = link_budget(4, size)
    assert not await fits(core, link, left + 1, start, size)
    low, high = 0, left
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if await fits(core, link, mid, start, size) else (low, mid - 1)
    return low


def test_a_resume_inside_what_a_cut_off_response_may_not_have_delivered_gets_it_back(tmp_path: Path) -> None:
    """The first response, from byte 100, is cut off after 300 bytes: bytes [100, 400) may not
    have arrived. A request starting in there gets back what it asks again, once."""

    async def scenario(core: Core) -> None:
        alice, link = await limited_link(core, 1)
        await respond(core, link, 900, start=100, sent=300)
        left = link_budget(1, SIZE) - 300
        assert [await most(core, link, start) for start in (99, 100, 101, 399, 400)] == [
            left,
            left + 300,
            left + 299,
            left + 1,
            left,
        ]
        await respond(core, link, 900, start=100, sent=900)  # the resume: 600 charged
        assert [await most(core, link, start) for start in (99, 100, 101)] == [left - 600] * 3
        [listed] = await core.sharing.links(alice)
        assert listed.downloads_left == round((SIZE - 900) / SIZE, 3)
        row = await core.store.get_link(link.token_hash)  # the durable count: 300 + 900 - 300
        assert row is not None and row.bytes_served == 900

    run(tmp_path, scenario)


def test_what_a_link_gives_back_to_resumes_stops_at_its_in_flight_allowance(tmp_path: Path) -> None:
    """in_flight_allowance(SIZE) = SIZE in all, over the link's life, however often it is cut."""

    async def scenario(core: Core) -> None:
        _, link = await limited_link(core, 3)
        budget = link_budget(3, SIZE)
        await respond(core, link, SIZE, start=0, sent=600)  # [0, 600) in doubt
        await respond(core, link, SIZE, start=0, sent=900)  # 600 given back, 300 charged
        assert await most(core, link, 0) == budget - 900 + 400  # 400 of the allowance left
        await respond(core, link, SIZE, start=0, sent=999)  # 400 given back, 599 charged
        assert await most(core, link, 0) == budget - 1499  # nothing more to give back

    run(tmp_path, scenario)


def test_a_response_closed_twice_or_with_nothing_sent_is_charged_once_or_not_at_all(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        _, link = await limited_link(core, 2)
        budget = link_budget(2, SIZE)
        reservation = await core.sharing.reserve(link, SIZE, SIZE, 0)
        await reservation.close()  # the client went away before the first byte
        assert await most(core, link, 0) == budget
        reservation = await core.sharing.reserve(link, SIZE, SIZE, 0)
        reservation.sent = 700
        await reservation.close()
        await reservation.close()
        assert await most(core, link, 0) == budget - 700 + 700  # [0, 700) in doubt
        assert await most(core, link, 700) == budget - 700

    run(tmp_path, scenario)


def test_a_response_that_sent_one_byte_or_none_leaves_the_doubt_as_it_was(tmp_path: Path) -> None:
    """Only a response cut off after its first byte and before its last is in doubt; one that
    sent nothing leaves the doubt of the one before it for the next request."""

    async def scenario(core: Core) -> None:
        _, link = await limited_link(core, 2)
        budget = link_budget(2, SIZE)
        first = await core.sharing.reserve(link, SIZE, SIZE, 0)
        second = await core.sharing.reserve(link, SIZE, SIZE, 0)
        first.sent = 600
        await first.close()  # [0, 600) in doubt
        await second.close()  # sent nothing: no doubt of its own
        assert await most(core, link, 0) == budget - 600 + 600
        await respond(core, link, SIZE, start=0, sent=1)  # 600 back, then cut after one byte
        assert await most(core, link, 0) == budget - 1 + 1  # 1 byte served in all, [0, 1) in doubt

    run(tmp_path, scenario)


def test_the_doubt_of_a_long_cut_off_response_is_its_unacknowledged_bytes_and_the_receive_slack(
    tmp_path: Path,
) -> None:
    """Bytes [end - unacked - RECEIVE_SLACK, end) of a response cut off at ``end`` may not have
    arrived (unacknowledged, or in the client's receive buffer); those before them did."""

    async def scenario(core: Core) -> None:
        _, link = await limited_link(core, 3, BIG)
        budget = link_budget(3, BIG)
        end = BIG - 1
        await respond(core, link, BIG, start=0, sent=end, size=BIG)  # unacked not measured: 0
        assert await most(core, link, end - RECEIVE_SLACK - 1, BIG) == budget - end
        assert await most(core, link, end - RECEIVE_SLACK, BIG) == budget - end + RECEIVE_SLACK
        await respond(core, link, BIG, start=0, sent=end, unacked=1000, size=BIG)  # none back
        assert await most(core, link, end - RECEIVE_SLACK - 1001, BIG) == budget - 2 * end
        assert (
            await most(core, link, end - RECEIVE_SLACK - 1000, BIG) == budget - 2 * end + RECEIVE_SLACK + 1000
        )

    run(tmp_path, scenario)


def test_a_refund_is_claimed_by_the_next_request_only(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        _, link = await limited_link(core, 2)
        budget = link_budget(2, SIZE)
        await respond(core, link, SIZE, start=0, sent=600)
        await core.sharing.check_left(link, SIZE, budget)  # from byte 0 (the default): 600 back
        resumed = await core.sharing.reserve(link, SIZE, SIZE)  # from byte 0: gets the 600 back
        assert await most(core, link, 0) == budget - 600 - SIZE  # none for a second one
        resumed.sent = SIZE
        await resumed.close()
        assert await most(core, link, 0) == budget - SIZE

    run(tmp_path, scenario)


def test_a_resume_may_spend_what_it_gets_back_in_the_same_reservation(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        _, link = await limited_link(core, 1)
        await respond(core, link, SIZE, start=0, sent=SIZE)
        await respond(core, link, 500, start=0, sent=400)  # 100 left, [0, 400) in doubt
        with pytest.raises(Gone, match="^This link has no downloads left$"):
            await core.sharing.reserve(link, SIZE, 100 + 400 + 1, 0)
        resumed = await core.sharing.reserve(link, SIZE, 100 + 400, 0)
        resumed.sent = 500
        await resumed.close()
        assert await most(core, link, 0) == 0

    run(tmp_path, scenario)


class Interleaved:
    """Wraps the real LocalState's ``tally``: counts the reads, and runs ``then`` once right
    after the next one returns, as another response ending between a reservation's read of
    the count and its hold would."""

    def __init__(self, state: LocalState, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.then: Callable[[], Awaitable[None]] | None = None
        tally = state.tally

        async def interleaved(kind: str, key: str) -> tuple[Counter, int]:
            result = await tally(kind, key)
            self.reads += 1
            then, self.then = self.then, None
            if then is not None:
                await then()
            return result

        monkeypatch.setattr(state, "tally", interleaved)


def test_a_reservation_read_before_another_response_ended_is_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold is taken at the version of the count it was computed from: a response that
    ended in between (its bytes no longer held but served) refuses it, and it is computed
    again from the new count, so it never grants bytes on a count that no longer holds.
    A link genuinely spent is refused on one read."""

    async def scenario(core: Core) -> None:
        assert isinstance(core.state, LocalState)
        reads = Interleaved(core.state, monkeypatch)
        alice, _ = await limited_link(core, 1)
        budget = link_budget(1, SIZE)
        for nbytes, granted in ((budget - SIZE + 1, False), (budget - SIZE, True)):
            link = await link_to(core, alice, 1)
            first = await core.sharing.reserve(link, SIZE, SIZE, 0)
            first.sent = SIZE
            reads.then = first.close  # read: SIZE held, nothing served; then SIZE served
            reads.reads = 0
            if granted:
                second = await core.sharing.reserve(link, SIZE, nbytes, 0)
                second.sent = nbytes
                await second.close()
            else:
                with pytest.raises(Gone):
                    await core.sharing.reserve(link, SIZE, nbytes, 0)
            assert reads.reads == 2  # the stale read and one more
        reads.reads = 0
        with pytest.raises(Gone):
            await core.sharing.reserve(link, SIZE, 1, 0)
        assert reads.reads == 1

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- passwords


def test_a_locked_link_opens_again_at_its_lock_outs_end_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * 10)
        _, token = await core.sharing.create_link(alice, "f.bin", None, "open sesame 42", None)
        with pytest.raises(InvalidCredentials) as refused:
            await core.sharing.open_link(token, None)
        assert str(refused.value) == "This link needs a password: curl -u :PASSWORD ..."
        for attempt in range(FREE_FAILURES):
            with pytest.raises(InvalidCredentials) as refused:
                await core.sharing.open_link(token, f"guess {attempt}")
            assert str(refused.value) == "Wrong password for this link"
        row = await core.store.get_link(token_hash(token))
        assert row is not None and (row.failures, row.locked_until) == (FREE_FAILURES, clock[0] + 1)
        clock[0] += 0.5
        with pytest.raises(TooManyAttempts) as locked:
            await core.sharing.open_link(token, "open sesame 42")
        assert locked.value.retry_after == 1
        clock[0] += 0.5  # now == locked_until: the lock is over
        _, opened = await core.sharing.open_link(token, "open sesame 42")
        opened.close()
        row = await core.store.get_link(token_hash(token))
        assert row is not None and (row.failures, row.locked_until) == (0, 0.0)

    run(tmp_path, scenario)


def test_a_guess_waits_for_the_one_before_it_and_finds_a_link_revoked_meanwhile_gone(
    tmp_path: Path,
) -> None:
    """A guess is checked under the link's mutex, on the row read again inside it: a guess
    that waited while the link was revoked finds no link (and tries no password)."""

    async def scenario(core: Core) -> None:
        state = core.state
        assert isinstance(state, LocalState)
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * 10)
        info, token = await core.sharing.create_link(alice, "f.bin", None, "open sesame 42", None)
        async with state.mutex(LINK_GUESS, info.id):  # a guess being checked
            guess = asyncio.ensure_future(core.sharing.open_link(token, "open sesame 42"))
            while not guess.done() and state._mutexes[(LINK_GUESS, info.id)].users < 2:  # noqa: ASYNC110 (no event to wait on: the mutex counts its users)
                await asyncio.sleep(0)  # until the guess waits for the mutex (or got past it)
            assert not guess.done()
            await core.sharing.revoke_link(alice, info.id)
        with pytest.raises(NotFound) as refused:
            await guess
        assert str(refused.value) == "Link not found"
        with pytest.raises(NotFound) as refused:
            await core.sharing.revoke_link(alice, info.id)
        assert str(refused.value) == "Link not found"

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- listings


def test_listed_links_count_downloads_left_by_their_files_size(tmp_path: Path) -> None:
    """downloads_left is (N * size - bytes served) / size: the size of the file each link
    names. A file whose row no longer verifies is left out of the listing of files, and its
    link is listed as if the file were empty (its count still comes from its own row)."""
    db = tmp_path / "vault.db"

    async def populate(core: Core) -> None:
        alice = await account(core, "alice")
        for name, size in (("a.bin", 1000), ("b.bin", 4000), ("c.bin", 10)):
            await put(core, alice, name, b"d" * size)
            _, token = await core.sharing.create_link(alice, name, None, None, 2)
            link, opened = await core.sharing.open_link(token, None)
            opened.close()
            if name != "c.bin":
                reservation = await core.sharing.reserve(link, size, 500, 0)
                reservation.sent = 500
                await reservation.close()

    async def listed(core: Core) -> None:
        alice = await known(core, "alice")
        expected = [("a.bin", 1.5), ("b.bin", 1.875), ("c.bin", 2.0)]
        whole = await core.sharing.links(alice)
        assert [(info.name, info.downloads_left) for info in whole] == expected
        limits: list[int] = []
        links_after = core.store.links_after

        async def counted(owner: int, after: tuple[float, str] | None, limit: int) -> Any:
            limits.append(limit)
            return await links_after(owner, after, limit)

        core.store.links_after = counted  # type: ignore[method-assign]
        first = await core.sharing.links_page(alice, None, 2)
        assert [info.downloads_left for info in first.items] == [1.5, 1.875] and first.next
        rest = await core.sharing.links_page(alice, first.next, 1)
        assert rest.items == whole[2:] and rest.next is None  # exactly the last one: no next
        assert limits == [3, 2]  # one row more than the page, to know whether there is a next
        assert (await core.sharing.links_page(alice, None, 3)).next is None

    run(tmp_path, populate)
    run(tmp_path, listed)
    with edit(db) as con:
        con.execute("UPDATE files SET header_tag = zeroblob(length(header_tag)) WHERE name = 'b.bin'")

    async def tampered(core: Core) -> None:
        alice = await known(core, "alice")
        # b.bin's size is unknown: 2 copies of "an empty file" (1 byte each) less 500 served.
        expected = [("a.bin", 1.5), ("b.bin", 0.0), ("c.bin", 2.0)]
        assert [(info.name, info.downloads_left) for info in await core.sharing.links(alice)] == expected
        page = await core.sharing.links_page(alice, None, 3)
        assert [(info.name, info.downloads_left) for info in page.items] == expected

    run(tmp_path, tampered)


def test_a_page_of_shared_files_ends_where_its_cursor_says_across_owners(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice, bob, carol = [await account(core, name) for name in ("alice", "bob", "carol")]
        for owner, name in ((alice, "x.txt"), (carol, "a.txt"), (carol, "b.txt")):
            await put(core, owner, name, name.encode())
            await core.sharing.grant(owner, name, "bob")
        first = await core.sharing.shared_page(bob, None, 2)
        assert [(s.owner, s.info.name) for s in first.items] == [("alice", "x.txt"), ("carol", "a.txt")]
        assert first.next == "carol/a.txt"
        rest = await core.sharing.shared_page(bob, first.next, 1)
        assert [(s.owner, s.info.name) for s in rest.items] == [("carol", "b.txt")]
        assert rest.next is None
        assert (await core.sharing.shared_page(bob, None, 3)).next is None

    run(tmp_path, scenario)


def test_a_link_without_a_limit_counts_every_byte_it_served(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * SIZE)
        _, token = await core.sharing.create_link(alice, "f.bin", None, None, None)
        link, opened = await core.sharing.open_link(token, None)
        opened.close()
        for sent in (SIZE, 600):
            await core.sharing.check_left(link, SIZE, 10 * SIZE, 0)  # no limit to check
            reservation = await core.sharing.reserve(link, SIZE, SIZE, 0)
            reservation.sent = sent
            await reservation.close()
        row = await core.store.get_link(token_hash(token))
        assert row is not None and row.bytes_served == SIZE + 600

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- links: rows and rules


def test_a_new_link_has_a_24_character_token_and_a_clean_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [time.time()]  # near the shared state's own clock, which keeps counts by it
    monkeypatch.setattr(time, "time", lambda: clock[0])

    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * 3000)
        info, token = await core.sharing.create_link(alice, "f.bin", 60, "open sesame 42", 2)
        assert len(token) == 24 and len(token_hash(token)) == 32  # LINK_TOKEN_BYTES of secret
        assert (info.created, info.expires, info.has_password, info.max_downloads) == (
            clock[0], clock[0] + 60, True, 2,
        )  # fmt: skip
        row = await core.store.get_link(token_hash(token))
        assert row is not None
        assert (row.bytes_served, row.failures, row.locked_until) == (0, 0, 0.0)
        plain, _ = await core.sharing.create_link(alice, "f.bin", None, None, 2)
        assert (plain.has_password, plain.expires) == (False, None)
        link, opened = await core.sharing.open_link(token, "open sesame 42")
        opened.close()
        reservation = await core.sharing.reserve(link, 3000, 1, 0)
        reservation.sent = 1
        await reservation.close()
        listed = {i.id: i.downloads_left for i in await core.sharing.links(alice)}
        assert listed == {info.id: 2.0, plain.id: 2.0}  # 5999 / 3000 to three places

    run(tmp_path, scenario)


def test_a_link_expires_at_its_expiry_exactly_and_each_refusal_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [time.time()]  # near the shared state's own clock, which keeps counts by it
    monkeypatch.setattr(time, "time", lambda: clock[0])

    async def scenario(core: Core) -> str:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * 10)
        _, expiring = await core.sharing.create_link(alice, "f.bin", 60, None, None)
        revoked, revoked_token = await core.sharing.create_link(alice, "f.bin", None, None, None)
        _, spent = await core.sharing.create_link(alice, "f.bin", None, None, 1)
        _, moved = await core.sharing.create_link(alice, "f.bin", None, None, None)
        clock[0] += 59.5
        _, opened = await core.sharing.open_link(expiring, None)
        opened.close()
        clock[0] += 0.5  # now == expires
        await refused(core, expiring, "This link has expired")
        await core.sharing.revoke_link(alice, revoked.id)
        await refused(core, revoked_token, "This link was revoked")
        link, opened = await core.sharing.open_link(spent, None)
        opened.close()
        reservation = await core.sharing.reserve(link, 10, link_budget(1, 10), 0)
        reservation.sent = link_budget(1, 10)
        await reservation.close()
        await refused(core, spent, "This link has no downloads left")
        await refused(core, "\ud800 not UTF-8", "Link not found", NotFound)
        return moved

    moved = run(tmp_path, scenario)
    with edit(tmp_path / "vault.db") as con:
        con.execute("UPDATE files SET name = 'g.bin' WHERE name = 'f.bin'")

    async def gone(core: Core) -> None:
        await refused(core, moved, "The file behind this link is no longer available")

    run(tmp_path, gone)


async def refused(core: Core, token: str, message: str, error: type[Exception] = Gone) -> None:
    with pytest.raises(error) as caught:
        await core.sharing.open_link(token, None)
    assert str(caught.value) == message


def test_a_forged_link_row_is_not_found_nor_listed_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def populate(core: Core) -> tuple[str, str]:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * 10)
        info, token = await core.sharing.create_link(alice, "f.bin", None, None, 1)
        return info.id, token

    link_id, token = run(tmp_path, populate)
    with edit(tmp_path / "vault.db") as con:  # a database writer lifts the limit
        con.execute("UPDATE links SET max_downloads = NULL WHERE id = ?", (link_id,))

    async def check(core: Core) -> None:
        caplog.clear()
        await refused(core, token, "Link not found", NotFound)
        assert await core.sharing.links(await known(core, "alice")) == []
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vault.sharing"]
        assert logged == [(logging.ERROR, f"link {link_id} failed its integrity check")] * 2

    run(tmp_path, check)


def test_a_count_not_kept_is_seeded_from_the_stores_row_not_from_the_callers_copy(tmp_path: Path) -> None:
    """A process that has no count for a link (restarted, or the count forgotten) takes the
    bytes served from the link's row as it is now, not from a Link read before they were."""
    db = tmp_path / "vault.db"

    async def serve() -> Link:
        async with incore.core(db, bcrypt_rounds=4) as core:
            _, link = await limited_link(core, 1)  # read before anything was served
            await respond(core, link, SIZE, start=0, sent=SIZE)
            return link

    async def restarted(stale: Link) -> None:
        async with incore.core(db, bcrypt_rounds=4, state=LocalState()) as core:
            assert stale.bytes_served == 0
            assert await most(core, stale, 0) == link_budget(1, SIZE) - SIZE

    async def revoked(stale: Link) -> None:
        """No row left to read (revoked): the caller's copy is all there is."""
        async with incore.core(db, bcrypt_rounds=4, state=LocalState()) as core:
            await core.sharing.revoke_link(await known(core, "alice"), stale.id)
            assert await most(core, stale, 0) == link_budget(1, SIZE)

    stale = asyncio.run(serve())
    asyncio.run(restarted(stale))
    asyncio.run(revoked(stale))


def test_the_count_of_a_link_with_an_expiry_is_kept_until_a_day_after_it(tmp_path: Path) -> None:
    shift = [0.0]
    state = LocalState(clock=lambda: time.time() + shift[0])

    async def scenario() -> None:
        async with incore.core(tmp_path / "vault.db", bcrypt_rounds=4, state=state) as core:
            alice = await account(core, "alice")
            await put(core, alice, "f.bin", b"d" * SIZE)
            info, token = await core.sharing.create_link(alice, "f.bin", 2 * COUNT_KEPT, None, 1)
            link, opened = await core.sharing.open_link(token, None)
            opened.close()
            await respond(core, link, SIZE, start=0, sent=SIZE)
            shift[0] = COUNT_KEPT + 60  # a day after it was seeded, a day before the link expires
            assert (await state.counter(LINK_BYTES, info.id)).count == SIZE

    asyncio.run(scenario())


def test_a_count_forgotten_while_responses_ran_is_read_at_the_version_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two responses under way when the shared state forgets the link's count; one ends, its
    bytes settling onto no count (version 1, never seeded). A third is then granted from the
    store's count at that version (the responses still under way keep it from being seeded)."""
    shift = [0.0]
    state = LocalState(clock=lambda: time.time() + shift[0])

    async def scenario() -> None:
        async with incore.core(tmp_path / "vault.db", bcrypt_rounds=4, state=state) as core:
            _, link = await limited_link(core, 3)
            first = await core.sharing.reserve(link, SIZE, SIZE, 0)
            second = await core.sharing.reserve(link, SIZE, SIZE, 0)
            shift[0] = COUNT_KEPT + 60
            first.sent = SIZE
            await first.close()
            assert (await state.counter(LINK_BYTES, link.id)) == Counter(SIZE, 0.0, 1)
            third = await core.sharing.reserve(link, SIZE, SIZE, 0)
            reads = Interleaved(state, monkeypatch)
            with pytest.raises(Gone):  # 500 left: refused at once, on one read
                await core.sharing.reserve(link, SIZE, 501, 0)
            assert reads.reads == 1
            for response in (second, third):
                response.sent = SIZE
                await response.close()

    asyncio.run(scenario())


def test_a_count_that_never_stops_changing_is_busy_not_guessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(core: Core) -> None:
        assert isinstance(core.state, LocalState)
        state = core.state
        _, link = await limited_link(core, 1)
        await state.set_counter(LINK_BYTES, link.id, 0, 0.0, version=(await counter(core, link)).version,
                                expires=None)  # fmt: skip
        tally = state.tally

        async def moving(kind: str, key: str) -> tuple[Counter, int]:
            read = await tally(kind, key)
            await state.bump(kind, key)  # another process's settle, every time, before seeding
            return read

        monkeypatch.setattr(state, "tally", moving)
        with pytest.raises(Busy) as busy:
            await core.sharing.check_left(link, SIZE, 1, 0)
        assert str(busy.value) == "This link's count of downloads is changing too fast to read: try again"

    run(tmp_path, scenario)


async def counter(core: Core, link: Link) -> Counter:
    return await core.state.counter(LINK_BYTES, link.id)


def test_sharing_built_without_a_shared_state_keeps_its_own(tmp_path: Path) -> None:
    """Sharing(...) without ``state`` (one process) keeps the budgets and guess mutexes in a
    LocalState of its own."""

    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * SIZE)
        _, token = await core.sharing.create_link(alice, "f.bin", None, "open sesame 42", 1)
        alone = Sharing(core.store, core.files, core.keyring, core.auth)
        link, opened = await alone.open_link(token, "open sesame 42")
        opened.close()
        reservation = await alone.reserve(link, SIZE, SIZE, 0)
        reservation.sent = SIZE
        await reservation.close()
        with pytest.raises(Gone):
            await alone.check_left(link, SIZE, link_budget(1, SIZE) - SIZE + 1, 0)

    run(tmp_path, scenario)


def test_a_link_whose_file_is_deleted_as_it_is_created_is_answered_not_crashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file deleted right after the link's row was written (the row goes with it): the
    owner still gets the link's info, counted as for an empty file, and the link is gone."""

    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        await put(core, alice, "f.bin", b"d" * SIZE)
        put_link = core.store.put_link

        async def then_deleted(link: Link) -> bool:
            written = await put_link(link)
            await core.files.delete(alice.user_id, "f.bin")
            return written

        monkeypatch.setattr(core.store, "put_link", then_deleted)
        info, token = await core.sharing.create_link(alice, "f.bin", None, None, 2)
        assert info.downloads_left == 2
        await refused(core, token, "This link was revoked")

    run(tmp_path, scenario)


def test_a_listing_while_a_copy_is_charged_counts_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the store's write of a response's bytes and their settle in the shared state,
    the row has them and the state still holds them: the listing counts the state's count and
    holds, not the row's count on top of the holds."""

    async def scenario(core: Core) -> list[list[float | None]]:
        alice, link = await limited_link(core, 2)
        charge_link = core.store.charge_link
        seen: list[list[float | None]] = []

        async def then_listed(link_id: str, nbytes: int) -> None:
            await charge_link(link_id, nbytes)
            seen.append([info.downloads_left for info in await core.sharing.links(alice)])
            seen.append(
                [info.downloads_left for info in (await core.sharing.links_page(alice, None, 5)).items]
            )

        monkeypatch.setattr(core.store, "charge_link", then_listed)
        await respond(core, link, SIZE, start=0, sent=SIZE)
        return seen

    assert run(tmp_path, scenario) == [[1.0], [1.0]]
