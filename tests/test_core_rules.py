"""The security rules of tokens and links, checked in-process on the real core (tests/incore.py:
``open_core`` on a real SQLite file, as the server builds it). The HTTP tests check the same
rules end to end; these run inside the test process, so mutation testing (bench/mutation.sh)
sees which of them each rule's code answers to, and they pin exact boundaries."""

import asyncio
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests import incore
from tests.dbedit import edit
from vault import tokens as tokens_module
from vault.auth import Identity
from vault.core import Core
from vault.errors import (
    ExpiredToken,
    Gone,
    InvalidCredentials,
    InvalidField,
    InvalidToken,
    NotFound,
    RevokedToken,
    TooManyAttempts,
)
from vault.keys import row_tag
from vault.rows import REFRESH
from vault.sharing import (
    COUNT_KEPT,
    FREE_FAILURES,
    LINK_BYTES,
    MAX_DOWNLOADS,
    MAX_EXPIRY,
    PREVIEW_ALLOWANCE,
    link_budget,
)
from vault.state import LocalState
from vault.tokens import MAX_REFRESH_CHARS, RefreshTokens, check_refresh_field, refresh_id

pytestmark = pytest.mark.usefixtures("store_kind")  # each test on SQLite and on PostgreSQL
PASSWORD = "correct horse battery"


run = incore.run


async def account(core: Core, name: str = "alice") -> Identity:
    await core.auth.register(name, PASSWORD)
    return await incore.identity(core, name)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "vault.tokens" and r.levelno == logging.WARNING
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- sessions


def test_refresh_rotates_once_and_reuse_ends_the_whole_session(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await account(core)
        first = await core.auth.login("alice", PASSWORD)
        assert (await core.auth.authenticate(first.token)).identity.username == "alice"
        second = await core.auth.refresh(first.refresh_token)
        assert (await core.auth.authenticate(second.token)).session == (
            await core.auth.authenticate(first.token)
        ).session
        with pytest.raises(RevokedToken):  # the used one, again: a thief's copy
            await core.auth.refresh(first.refresh_token)
        for token in (first.token, second.token):
            with pytest.raises(RevokedToken):
                await core.auth.authenticate(token)
        with pytest.raises(RevokedToken):
            await core.auth.refresh(second.refresh_token)

    run(tmp_path, scenario)


def test_logout_ends_one_session_and_logout_all_every_one(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core)
        await account(core, "bob")
        one, two, three = [await core.auth.login("alice", PASSWORD) for _ in range(3)]
        bob = await core.auth.login("bob", PASSWORD)
        await core.auth.logout(await core.auth.authenticate(one.token))
        with pytest.raises(RevokedToken):
            await core.auth.authenticate(one.token)
        with pytest.raises(RevokedToken):
            await core.auth.refresh(one.refresh_token)
        await core.auth.authenticate(two.token)  # the other sessions live on
        await core.auth.logout_all(alice)
        for pair in (two, three):
            with pytest.raises(RevokedToken):
                await core.auth.authenticate(pair.token)
            with pytest.raises(RevokedToken):
                await core.auth.refresh(pair.refresh_token)
        await core.auth.authenticate(bob.token)  # no one else's
        fresh = await core.auth.login("alice", PASSWORD)
        assert (await core.auth.authenticate(fresh.token)).epoch == 1

    run(tmp_path, scenario)


def test_logout_with_another_users_refresh_token_leaves_it_alone(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await account(core)
        await account(core, "bob")
        mine, theirs = await core.auth.login("alice", PASSWORD), await core.auth.login("bob", PASSWORD)
        await core.auth.logout(await core.auth.authenticate(mine.token), theirs.refresh_token)
        assert (await core.auth.refresh(theirs.refresh_token)).token

    run(tmp_path, scenario)


def test_password_change_needs_the_old_password_and_ends_every_other_session(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core)
        old = await core.auth.login("alice", PASSWORD)
        with pytest.raises(InvalidCredentials):
            await core.auth.change_password(alice, "not the password", "a new password")
        await core.auth.authenticate(old.token)
        new = await core.auth.change_password(alice, PASSWORD, "a new password")
        with pytest.raises(RevokedToken):
            await core.auth.authenticate(old.token)
        assert (await core.auth.authenticate(new.token)).epoch == 1
        with pytest.raises(InvalidCredentials):
            await core.auth.login("alice", PASSWORD)
        await core.auth.login("alice", "a new password")

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- refresh tokens


def test_a_refresh_token_expires_at_its_term_exactly(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        clock = Clock()
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10, clock=clock)
        alice = await account(core)
        token, family = await tokens.start(alice.user_id, 0)
        clock.now += 99.999
        row = await tokens.redeem(token)
        assert (row.user_id, row.family, row.epoch) == (alice.user_id, family, 0)
        clock.now += 0.001  # expires <= now
        with pytest.raises(ExpiredToken):
            await tokens.redeem(token)

    run(tmp_path, scenario)


def test_a_revoked_familys_access_tokens_die_for_exactly_one_access_lifetime(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        clock = Clock()
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10, clock=clock)
        alice = await account(core)
        _, family = await tokens.start(alice.user_id, 0)
        _, other = await tokens.start(alice.user_id, 0)
        assert not await tokens.family_revoked(family)
        await tokens.revoke(alice.user_id, family)
        assert await tokens.family_revoked(family)
        assert not await tokens.family_revoked(other)
        clock.now += 9.999
        assert await tokens.family_revoked(family)
        clock.now += 0.001  # no access token of it can be alive any more
        assert not await tokens.family_revoked(family)
        # A restart (a new RefreshTokens on the same store) reloads what is still revoked.
        reloaded = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10, clock=clock)
        clock.now -= 5
        assert await reloaded.family_revoked(family)

    run(tmp_path, scenario)


def test_a_rotated_token_presented_again_revokes_its_family_and_only_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(core: Core) -> None:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        alice = await account(core)
        token, family = await tokens.start(alice.user_id, 0)
        bystander, other = await tokens.start(alice.user_id, 0)
        successor = await tokens.rotate(await tokens.redeem(token))
        with pytest.raises(RevokedToken):
            await tokens.redeem(token)
        assert warnings(caplog) == [
            f"user {alice.user_id}: a rotated refresh token was used again; its session is revoked"
        ]
        assert await tokens.family_revoked(family)
        with pytest.raises(RevokedToken):
            await tokens.redeem(successor)
        assert not await tokens.family_revoked(other)
        assert (await tokens.redeem(bystander)).family == other

    run(tmp_path, scenario)


async def log_out_everywhere(core: Core) -> None:
    alice = await core.auth.find_user("alice")
    assert alice is not None and alice.token_epoch == 0
    await core.auth.logout_all(Identity(alice.id, alice.username))
    raised = await core.auth.find_user("alice")
    assert raised is not None and raised.token_epoch == 1


def refresh_row(db: Path, refresh_token: str) -> tuple[Any, ...]:
    """The columns of a refresh row that "log out everywhere" changes: (revoked, key_id, tag)."""
    with edit(db) as con:
        row = con.execute(
            "SELECT revoked, key_id, tag FROM refresh_tokens WHERE id = ?", (refresh_id(refresh_token),)
        ).fetchone()
    assert row is not None and row[0] is None
    return tuple(row)


def restore_refresh_row(db: Path, refresh_token: str, row: tuple[Any, ...]) -> None:
    with edit(db) as con:
        con.execute(
            "UPDATE refresh_tokens SET revoked = ?, key_id = ?, tag = ? WHERE id = ?",
            (*row, refresh_id(refresh_token)),
        )


def test_an_epoch_set_back_in_the_database_does_not_revive_an_ended_access_token(tmp_path: Path) -> None:
    """A writer without the master key undoes "log out everywhere": the session's refresh row
    copied back as it was (genuine: its family is no longer revoked), then the account's epoch
    set back. The epoch then comes from a row that fails its check: the token is refused as
    invalid, where an unchecked row would let it in. Each step is a new core (nothing cached)."""
    db = tmp_path / "vault.db"

    async def start(core: Core) -> Any:
        await account(core)
        return await core.auth.login("alice", PASSWORD)

    pair = run(tmp_path, start)
    before = refresh_row(db, pair.refresh_token)
    run(tmp_path, log_out_everywhere)
    restore_refresh_row(db, pair.refresh_token, before)

    async def refused(core: Core) -> type[BaseException]:
        with pytest.raises(InvalidToken) as caught:
            await core.auth.authenticate(pair.token)
        return caught.type

    assert run(tmp_path, refused) is RevokedToken  # the session is back, the epoch is not
    with edit(db) as con:
        con.execute("UPDATE users SET token_epoch = 0 WHERE username = ?", ("alice",))
    assert run(tmp_path, refused) is InvalidToken  # no verified row: no epoch, no account


def test_a_refresh_row_restored_from_before_log_out_everywhere_does_not_refresh(tmp_path: Path) -> None:
    """A genuine refresh row (its tag verifies) copied back as it was before "log out
    everywhere" names an epoch the account has left: refused, whatever the row says."""
    db = tmp_path / "vault.db"

    async def start(core: Core) -> str:
        await account(core)
        return (await core.auth.login("alice", PASSWORD)).refresh_token

    refresh_token = run(tmp_path, start)
    before = refresh_row(db, refresh_token)
    run(tmp_path, log_out_everywhere)
    restore_refresh_row(db, refresh_token, before)

    async def check(core: Core) -> None:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        assert (await tokens.redeem(refresh_token)).epoch == 0  # the row verifies, not revoked
        with pytest.raises(RevokedToken):
            await core.auth.refresh(refresh_token)

    run(tmp_path, check)


@pytest.mark.parametrize("token", [None, "", 42, ["x"]])
def test_a_refresh_field_must_be_a_non_empty_string(token: object) -> None:
    with pytest.raises(
        InvalidField, match="^Field 'refresh_token' is required and must be a non-empty string$"
    ):
        check_refresh_field(token)


def test_unknown_and_oversized_refresh_tokens_are_invalid_and_ids_are_sha256(tmp_path: Path) -> None:
    assert refresh_id("abc") == hashlib.sha256(b"abc").digest()

    async def scenario(core: Core) -> None:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        alice = await account(core)
        token, _ = await tokens.start(alice.user_id, 0)
        assert await tokens.find(token) is not None
        for other in ("x" * 43, "x" * (MAX_REFRESH_CHARS + 1), token + "x", "\ud800" * 43):
            assert await tokens.find(other) is None
            with pytest.raises(InvalidToken):
                await tokens.redeem(other)

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- links


async def shared_file(core: Core, size: int) -> Identity:
    alice = await account(core)
    upload = await core.files.begin_upload(alice.user_id, size)
    await upload.write(b"d" * size)
    await upload.finish("f.bin")
    return alice


async def download(core: Core, token: str, nbytes: int | None = None, password: str | None = None) -> None:
    """Open the link and send ``nbytes`` (default: the whole file), charging it."""
    link, opened = await core.sharing.open_link(token, password)
    try:
        length = opened.size if nbytes is None else nbytes
        reservation = await core.sharing.reserve(
            link, opened.size, max(length, 1) if opened.size == 0 else length
        )
        reservation.sent = max(length, 1) if opened.size == 0 else length
        await reservation.close()
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("size", "budget"), [(0, 3), (1, 3), (2, 7), (10, 35), (10**9, 3 * 10**9 + PREVIEW_ALLOWANCE)]
)
def test_link_budget_is_n_copies_plus_the_preview_allowance(size: int, budget: int) -> None:
    assert link_budget(3, size) == budget


def test_a_link_is_gone_when_its_budget_is_spent_to_the_byte(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 1000)
        info, token = await core.sharing.create_link(alice, "f.bin", None, None, 2)
        assert (info.max_downloads, info.downloads_left) == (2, 2)
        await download(core, token)
        await download(core, token, 1000 + 500 - 1)  # one byte short of the budget
        link, opened = await core.sharing.open_link(token, None)
        opened.close()
        with pytest.raises(Gone, match="no downloads left"):
            await core.sharing.reserve(link, 1000, 2)
        await download(core, token, 1)
        with pytest.raises(Gone, match="no downloads left"):
            await core.sharing.open_link(token, None)
        [listed] = await core.sharing.links(alice)
        assert listed.downloads_left == 0

    run(tmp_path, scenario)


def test_link_ids_are_hex_so_none_reads_as_a_command_line_option(tmp_path: Path) -> None:
    """base64url ids began with "-" about once in 64: `vault revoke ID` took one for an option."""

    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        for _ in range(200):
            info, _ = await core.sharing.create_link(alice, "f.bin", None, None, None)
            assert len(info.id) == 18 and all(c in "0123456789abcdef" for c in info.id), info.id

    run(tmp_path, scenario)


def test_a_links_count_leaves_the_shared_state_in_time_and_the_link_stays_spent(tmp_path: Path) -> None:
    """A link without an expiry kept its count in the shared state forever, revoked or not.
    It is forgotten COUNT_KEPT after it was seeded, and seeded again from the store's count."""
    shift = [0.0]
    state = LocalState(clock=lambda: time.time() + shift[0])

    async def scenario() -> None:
        async with incore.core(tmp_path / "vault.db", bcrypt_rounds=4, state=state) as core:
            alice = await shared_file(core, 1000)
            info, token = await core.sharing.create_link(alice, "f.bin", None, None, 1)
            await download(core, token)
            await download(core, token, link_budget(1, 1000) - 1000)  # the preview allowance too
            assert (await state.counter(LINK_BYTES, info.id)).version > 0
            shift[0] = COUNT_KEPT + 1
            assert (await state.counter(LINK_BYTES, info.id)).version == 0  # forgotten
            shift[0] = 0.0  # back to the clock the core seeds by: the count is gone for good
            assert (await state.counter(LINK_BYTES, info.id)).version == 0
            with pytest.raises(Gone, match="no downloads left"):
                await download(core, token, 1)  # the store's count still spends it

    asyncio.run(scenario())


def test_a_link_without_a_limit_is_never_spent(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        info, token = await core.sharing.create_link(alice, "f.bin", None, None, None)
        assert info.downloads_left is None and info.max_downloads is None
        for _ in range(5):
            await download(core, token)

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_in", 59),
        ("expires_in", MAX_EXPIRY + 1),
        ("expires_in", True),
        ("expires_in", 60.0),
        ("max_downloads", 0),
        ("max_downloads", MAX_DOWNLOADS + 1),
        ("max_downloads", True),
        ("max_downloads", "1"),
    ],
)
def test_link_limits_outside_their_range_are_refused(tmp_path: Path, field: str, value: object) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        args: dict[str, object] = {"expires_in": None, "max_downloads": None, field: value}
        with pytest.raises(InvalidField, match=f"^Field '{field}' must be a whole number"):
            await core.sharing.create_link(alice, "f.bin", args["expires_in"], None, args["max_downloads"])
        assert await core.sharing.links(alice) == []

    run(tmp_path, scenario)


@pytest.mark.parametrize(("expires_in", "max_downloads"), [(60, 1), (MAX_EXPIRY, MAX_DOWNLOADS)])
def test_link_limits_at_their_bounds_are_accepted(
    tmp_path: Path, expires_in: int, max_downloads: int
) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        before = time.time()
        info, _ = await core.sharing.create_link(alice, "f.bin", expires_in, None, max_downloads)
        assert info.expires is not None and before + expires_in <= info.expires <= time.time() + expires_in
        assert info.max_downloads == max_downloads

    run(tmp_path, scenario)


def test_an_expired_link_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        _, token = await core.sharing.create_link(alice, "f.bin", 60, None, None)
        await download(core, token)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 60)  # expires <= now
        with pytest.raises(Gone, match="expired"):
            await core.sharing.open_link(token, None)

    run(tmp_path, scenario)


def test_five_wrong_link_passwords_lock_it_even_for_the_right_one(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        _, token = await core.sharing.create_link(alice, "f.bin", None, "open sesame 42", None)
        with pytest.raises(InvalidCredentials, match="needs a password"):
            await core.sharing.open_link(token, None)
        for attempt in range(4):
            with pytest.raises(InvalidCredentials, match="Wrong password"):
                await core.sharing.open_link(token, f"guess {attempt}")
        await download(core, token, password="open sesame 42")  # four wrong ones lock nothing
        for attempt in range(5):
            with pytest.raises(InvalidCredentials, match="Wrong password"):
                await core.sharing.open_link(token, f"guess {attempt}")
        with pytest.raises(TooManyAttempts) as locked:
            await core.sharing.open_link(token, "open sesame 42")
        assert locked.value.retry_after == 1

    run(tmp_path, scenario)


def test_a_revoked_link_is_gone_and_an_unknown_one_not_found(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice = await shared_file(core, 10)
        info, token = await core.sharing.create_link(alice, "f.bin", None, None, None)
        await core.sharing.revoke_link(alice, info.id)
        with pytest.raises(Gone, match="revoked"):
            await core.sharing.open_link(token, None)
        with pytest.raises(NotFound, match="^Link not found$"):
            await core.sharing.open_link("x" * 24, None)
        with pytest.raises(NotFound):
            await core.sharing.revoke_link(alice, info.id)

    run(tmp_path, scenario)


def test_wrong_link_passwords_arriving_one_after_another_are_all_counted(tmp_path: Path) -> None:
    """Guesses that arrive while earlier ones are being checked wait for them: each sees every
    failure before it, so none is lost (no two are ever checked at once)."""

    async def scenario(core: Core) -> tuple[int, int]:
        alice = await shared_file(core, 10)
        info, token = await core.sharing.create_link(alice, "f.bin", None, "open sesame 42", None)

        async def guess(i: int) -> type[BaseException]:
            for _ in range(i):  # guess i arrives i turns of the loop after the first
                await asyncio.sleep(0)
            try:
                await core.sharing.open_link(token, f"guess {i}")
            except (InvalidCredentials, TooManyAttempts) as exc:
                return type(exc)
            raise AssertionError("a wrong password opened the link")

        outcomes = await asyncio.gather(*(guess(i) for i in range(40)))
        row = await core.store.get_link(hashlib.sha256(token.encode()).digest())
        assert row is not None
        return outcomes.count(InvalidCredentials), row.failures

    wrong, counted = run(tmp_path, scenario)
    assert counted == wrong >= 5


def test_wrong_link_passwords_sent_at_once_are_checked_no_more_than_the_free_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty guesses at once, the clock held still so the lock-out cannot run out meanwhile:
    one guess is checked at a time, each seeing the failures before it, so exactly
    FREE_FAILURES are tried and every other one finds the link locked. (Without the link's
    mutex all of them read the row before any failure is written, and all are tried.)"""
    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)

    async def scenario(core: Core) -> list[type[BaseException]]:
        alice = await shared_file(core, 10)
        _, token = await core.sharing.create_link(alice, "f.bin", None, "open sesame 42", None)

        async def guess(i: int) -> type[BaseException]:
            try:
                await core.sharing.open_link(token, f"guess {i}")
            except (InvalidCredentials, TooManyAttempts) as exc:
                return type(exc)
            raise AssertionError("a wrong password opened the link")

        return list(await asyncio.gather(*(guess(i) for i in range(40))))

    outcomes = run(tmp_path, scenario)
    assert outcomes.count(InvalidCredentials) == FREE_FAILURES
    assert outcomes.count(TooManyAttempts) == 40 - FREE_FAILURES


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("user_id", 1),
        ("family", "0" * 32),
        ("epoch", 1),
        ("created", 1.0),
        ("expires", 4_000_000_000.0),
        ("used", None),
        ("revoked", None),
        ("key_id", 9),
    ],
)
def test_a_refresh_row_edited_in_any_column_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str, value: object
) -> None:
    """Every column is under the row's tag: an edit without the master key (un-using,
    un-revoking, extending, moving to another user or epoch) makes the row unknown."""

    async def scenario(core: Core) -> str:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        alice = await account(core)
        token, _ = await tokens.start(alice.user_id, 0)
        if column in ("used", "revoked"):  # set first, legitimately, so that clearing is the edit
            successor = await tokens.rotate(await tokens.redeem(token))
            await tokens.revoke(alice.user_id, None)
            token = successor if column == "revoked" else token
        assert await tokens.find(token) is not None
        return token

    token = run(tmp_path, scenario)
    with edit(tmp_path / "vault.db") as con:
        con.execute(f"UPDATE refresh_tokens SET {column} = ? WHERE id = ?", (value, refresh_id(token)))  # noqa: S608

    async def check(core: Core) -> None:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        assert await tokens.find(token) is None
        with pytest.raises(InvalidToken):
            await tokens.redeem(token)

    caplog.clear()
    run(tmp_path, check)
    logged = [
        r.getMessage() for r in caplog.records if r.name == "vault.tokens" and r.levelno == logging.ERROR
    ]
    assert len(logged) == 2 and all(
        re.fullmatch(r"a refresh token row of user [0-9]+ failed its integrity check", m) for m in logged
    ), logged


def test_the_refresh_tag_is_the_row_tag_of_every_field_under_its_own_label(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        alice = await account(core)
        token, _ = await tokens.start(alice.user_id, 0)
        t = await core.store.get_refresh(refresh_id(token))
        assert t is not None
        fields = (t.id, t.user_id, t.family, t.epoch, t.created, t.expires, t.used, t.revoked)
        assert REFRESH.tag(core.keyring, t) == row_tag(core.keyring, t.key_id, b"refresh", *fields) == t.tag
        assert REFRESH.tag(core.keyring, t) != row_tag(core.keyring, t.key_id, b"link", *fields)

    run(tmp_path, scenario)


def test_a_refresh_row_under_a_retired_master_key_is_refused(tmp_path: Path) -> None:
    async def scenario(core: Core) -> str:
        alice = await account(core)
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        token, _ = await tokens.start(alice.user_id, 0)
        return token

    token = run(tmp_path, scenario)

    async def check() -> None:
        async with incore.core(tmp_path / "vault.db", incore.keyring(bytes(32), key_id=2)) as core:
            tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
            assert await tokens.find(token) is None

    asyncio.run(check())


def test_a_row_rotated_twice_at_once_revokes_its_family(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two refreshes that both redeemed the row before either rotated it: the second rotation
    finds it used and revokes the session (including the first one's successor)."""

    async def scenario(core: Core) -> None:
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        alice = await account(core)
        token, family = await tokens.start(alice.user_id, 0)
        bystander, other = await tokens.start(alice.user_id, 0)
        row = await tokens.redeem(token)
        successor = await tokens.rotate(row)
        assert not await tokens.family_revoked(family)
        with pytest.raises(RevokedToken):
            await tokens.rotate(row)
        assert warnings(caplog) == [
            f"user {alice.user_id}: a refresh token was used twice at once; its session is revoked"
        ]
        assert await tokens.family_revoked(family)
        with pytest.raises(RevokedToken):
            await tokens.redeem(successor)
        assert not await tokens.family_revoked(other)
        assert (await tokens.redeem(bystander)).user_id == alice.user_id

    run(tmp_path, scenario)


def test_storing_a_refresh_row_prunes_the_users_rows_expired_an_access_lifetime_ago(tmp_path: Path) -> None:
    """A row is kept for one access lifetime after it expires (its revocation must outlive the
    access tokens of its family), then the next login or rotation of the user deletes it; a
    row still valid, even for less than that, is never deleted."""

    async def scenario(core: Core) -> None:
        clock = Clock()
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10, clock=clock)
        alice = await account(core)
        expiring, _ = await tokens.start(alice.user_id, 0)  # expires at +100
        clock.now += 95  # 5 s before it expires: a login now must keep it
        later, _ = await tokens.start(alice.user_id, 0)
        assert (await tokens.redeem(expiring)).expires == 1_000_100.0
        clock.now += 1  # and so must a rotation
        later = await tokens.rotate(await tokens.redeem(later))
        assert (await tokens.redeem(expiring)).expires == 1_000_100.0
        clock.now += 14  # expired exactly one access lifetime ago: kept
        later = await tokens.rotate(await tokens.redeem(later))
        assert await core.store.get_refresh(refresh_id(expiring)) is not None
        clock.now += 0.5  # now longer: the next rotation deletes it
        later = await tokens.rotate(await tokens.redeem(later))
        assert await core.store.get_refresh(refresh_id(expiring)) is None
        clock.now += 200
        _, _ = await tokens.start(alice.user_id, 0)  # a login prunes too
        assert await core.store.get_refresh(refresh_id(later)) is None

    run(tmp_path, scenario)


def test_a_revocation_by_another_process_is_seen_at_the_next_poll_and_not_before(tmp_path: Path) -> None:
    """With several processes each reads the families revoked elsewhere at most every ``poll``
    seconds (documented: a logout reaches the others within that time), reading again the
    POLL_OVERLAP seconds before its last look (a revocation is stamped before it commits)."""

    async def scenario(core: Core) -> None:
        clock = Clock()
        here = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=900, clock=clock, poll=1.0)
        there = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=900, clock=clock, poll=1.0)
        alice = await account(core)
        families = [(await there.start(alice.user_id, 0))[1] for _ in range(3)]
        assert not await here.family_revoked(families[0])  # loaded at +0
        await there.revoke(alice.user_id, families[0])
        clock.now += 0.999
        assert not await here.family_revoked(families[0])  # not read again yet
        clock.now += 0.001
        assert await here.family_revoked(families[0])  # the poll at +1 reads it
        clock.now -= 5  # stamped 5 s before the last look (+1), committed after it
        await there.revoke(alice.user_id, families[1])
        clock.now += 6  # +2: the next poll
        assert await here.family_revoked(families[1])
        clock.now += 1  # and the one after that still polls
        await there.revoke(alice.user_id, families[2])
        clock.now += 1
        assert await here.family_revoked(families[2])
        assert await here.family_revoked(families[0])

    run(tmp_path, scenario)


def test_a_family_revoked_again_stays_revoked_an_access_lifetime_after_the_last_revocation(
    tmp_path: Path,
) -> None:
    """The store keeps a family's first revocation time; this process remembers its latest, and
    a poll of the store's times does not shorten that."""

    async def scenario(core: Core) -> None:
        clock = Clock()
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10, clock=clock, poll=1.0)
        alice = await account(core)
        _, family = await tokens.start(alice.user_id, 0)
        assert not await tokens.family_revoked(family)
        await tokens.revoke(alice.user_id, family)
        clock.now += 5
        await tokens.revoke(alice.user_id, family)  # the rows are revoked already: the store keeps +0
        clock.now += 2  # past the poll interval: the store's revocations are read again
        assert await tokens.family_revoked(family)
        clock.now += 7.5  # 14.5 s after the first revocation, 9.5 s after the second
        assert await tokens.family_revoked(family)
        clock.now += 0.5
        assert not await tokens.family_revoked(family)

    run(tmp_path, scenario)


def test_remembered_revocations_are_swept_past_the_prune_mark_and_the_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "REVOKED_PRUNE_AT", 2)

    async def scenario(core: Core) -> None:
        clock = Clock()
        tokens = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10, clock=clock)
        alice = await account(core)
        families = [(await tokens.start(alice.user_id, 0))[1] for _ in range(5)]
        assert not await tokens.family_revoked(families[0])  # loads (nothing) from the store
        for family in families[:3]:  # the third is past the mark: a sweep, with nothing expired
            await tokens.revoke(alice.user_id, family)
        clock.now += 11  # the first three have run out
        for family in families[3:]:  # sweeps that drop them, then keep sweeping
            await tokens.revoke(alice.user_id, family)
        assert [await tokens.family_revoked(f) for f in families] == [False] * 3 + [True] * 2

    run(tmp_path, scenario)
