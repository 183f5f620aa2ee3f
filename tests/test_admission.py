"""Upload admission (vault/quota.py) on the real core: size and quota limits hold exactly under
concurrency, for resumable creations and overlapping one-shot uploads alike, reservations are
given back exactly once, and admission reads the database twice."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import incore
from vault.core import Core
from vault.errors import TooLarge
from vault.quota import QUOTA as QUOTA_KIND
from vault.records import Limits, Usage
from vault.state import LocalState

QUOTA = 100_000
OWNER = 1
T = TypeVar("T")


def run(tmp_path: Path, fn: Callable[[Core], Awaitable[T]], **settings: Any) -> T:
    async def main() -> T:
        async with incore.core(tmp_path / "vault.db", **{"user_quota": QUOTA, **settings}) as core:
            return await fn(core)

    return asyncio.run(main())


async def stored(core: Core, owner: int = OWNER) -> int:
    used, _ = await core.store.usage(owner)
    return used


def test_parallel_resumable_creations_never_exceed_the_quota(tmp_path: Path) -> None:
    async def create_many(core: Core) -> tuple[list[Any], int]:
        creations = [core.files.resumables.create(OWNER, f"part{i}.bin", QUOTA // 3, "") for i in range(20)]
        results = await asyncio.gather(*creations, return_exceptions=True)
        return results, await stored(core)

    results, used = run(tmp_path, create_many)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, TooLarge) and "Quota exceeded" in r.message for r in refused)
    assert len(results) - len(refused) == 3  # three thirds fit, the rest do not
    assert used == 3 * (QUOTA // 3) <= QUOTA


def test_overlapping_one_shot_uploads_never_exceed_the_quota(tmp_path: Path) -> None:
    """B starts before A commits and goes on after: B may only use what A left."""
    part = QUOTA * 6 // 10

    async def overlap(core: Core) -> tuple[BaseException | None, int]:
        a = await core.files.begin_upload(OWNER, None)
        b = await core.files.begin_upload(OWNER, None)
        await a.write(b"a" * part)
        await b.write(b"b")
        await a.finish("a.bin")
        try:
            await b.write(b"b" * part)
            await b.finish("b.bin")
            failure = None
        except TooLarge as exc:
            failure = exc
            await b.abort()
        return failure, await stored(core)

    failure, used = run(tmp_path, overlap)
    assert isinstance(failure, TooLarge)
    assert "Quota exceeded" in failure.message
    assert used == part <= QUOTA


def test_parallel_declared_uploads_reserve_before_any_byte(tmp_path: Path) -> None:
    async def declared(core: Core) -> list[object]:
        begun = [core.files.begin_upload(OWNER, QUOTA // 2) for _ in range(5)]
        return await asyncio.gather(*begun, return_exceptions=True)

    results = run(tmp_path, declared)
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert all(isinstance(r, TooLarge) for r in results if isinstance(r, BaseException))


def test_one_shot_and_resumable_share_one_reckoning(tmp_path: Path) -> None:
    async def mixed(core: Core) -> tuple[int, int]:
        upload = await core.files.begin_upload(OWNER, None)
        await upload.write(b"x" * (QUOTA // 2))
        with pytest.raises(TooLarge):
            await core.files.resumables.create(OWNER, "t.bin", QUOTA // 2 + 1, "")
        await core.files.resumables.create(OWNER, "t.bin", QUOTA // 2, "")
        with pytest.raises(TooLarge):
            await upload.write(b"x")
        await upload.finish("one.bin")
        return await stored(core), (await core.files.usage(OWNER)).used

    assert run(tmp_path, mixed) == (QUOTA, QUOTA)


def test_reservations_are_given_back_exactly_once(tmp_path: Path) -> None:
    async def churn(core: Core) -> list[int]:
        seen = []
        upload = await core.files.begin_upload(OWNER, QUOTA)
        seen.append((await core.files.usage(OWNER)).used)  # the whole declared length is held
        await upload.write(b"x" * 10)
        await upload.abort()
        await upload.abort()
        seen.append((await core.files.usage(OWNER)).used)
        upload = await core.files.begin_upload(OWNER, 10)
        await upload.write(b"x" * 10)
        await upload.finish("ten.bin")
        await upload.abort()  # after the commit: nothing more to give back
        seen.append((await core.files.usage(OWNER)).used)
        with pytest.raises(TooLarge):
            await core.files.begin_upload(OWNER, QUOTA - 9)
        big = await core.files.begin_upload(OWNER, QUOTA - 10)  # exactly the rest
        await big.abort()
        await core.files.delete(OWNER, "ten.bin")
        seen.append((await core.files.usage(OWNER)).used)
        return seen

    assert run(tmp_path, churn) == [QUOTA, 0, 10, 0]


def test_multipart_framing_may_pass_the_room_but_the_file_may_not(tmp_path: Path) -> None:
    async def framed(core: Core) -> None:
        upload = await core.files.begin_upload(OWNER, QUOTA + 200, slack=1024)
        await upload.write(b"x" * QUOTA)
        with pytest.raises(TooLarge):
            await upload.write(b"x")
        await upload.finish("full.bin")
        with pytest.raises(TooLarge):
            await core.files.begin_upload(OWNER, 1025, slack=1024)

    run(tmp_path, framed)


@pytest.mark.parametrize("quota", [0, QUOTA], ids=["no quota", "quota"])
def test_largest_file_is_checked_on_admission_and_while_streaming(tmp_path: Path, quota: int) -> None:
    async def sized(core: Core) -> None:
        with pytest.raises(TooLarge, match="File too large"):
            await core.files.begin_upload(OWNER, 1001)
        with pytest.raises(TooLarge, match="File too large"):
            await core.files.resumables.create(OWNER, "r.bin", 1001, "")
        upload = await core.files.begin_upload(OWNER, None)
        await upload.write(b"x" * 1000)
        with pytest.raises(TooLarge, match="File too large"):
            await upload.write(b"x")
        await upload.abort()

    run(tmp_path, sized, max_file_size=1000, user_quota=quota)


def test_admission_reads_the_database_twice_before_the_first_byte(tmp_path: Path) -> None:
    """Before: the handler's limits and room checks plus the upload's quota base at its first
    byte read the limits three times and the usage twice; now one of each."""

    async def count(core: Core) -> list[str]:
        calls: list[str] = []
        for name in ("get_limits", "usage", "get_file", "list_files", "get_user", "get_user_by_id"):
            real = getattr(core.store, name)

            def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
                calls.append(_name)
                return _real(*args)

            setattr(core.store, name, counted)
        upload = await core.files.begin_upload(OWNER, 5000)
        await upload.write(b"x" * 5000)
        await upload.finish("counted.bin")
        return calls

    assert sorted(run(tmp_path, count)) == ["get_limits", "usage"]


def test_a_users_own_limits_override_the_defaults(tmp_path: Path) -> None:
    async def limited(core: Core) -> None:
        for name in ("alice", "bob"):
            await core.auth.register(name, "correct horse battery")
        alice, bob = [await core.auth.find_user(name) for name in ("alice", "bob")]
        assert alice is not None and bob is not None
        assert await core.store.set_limits("alice", 500, 300)
        assert await core.files.usage(alice.id) == Usage(0, 0, Limits(300, 500))
        assert await core.files.usage(bob.id) == Usage(0, 0, Limits(1000, QUOTA))
        with pytest.raises(TooLarge, match="^File too large: the limit is 300 bytes$"):
            await core.files.begin_upload(alice.id, 301)
        upload = await core.files.begin_upload(alice.id, 300)  # exactly the largest file
        await upload.write(b"x" * 300)
        await upload.finish("full.bin")
        assert await core.files.usage(alice.id) == Usage(300, 1, Limits(300, 500))
        with pytest.raises(TooLarge, match="^Quota exceeded: 200 bytes of your quota are left$"):
            await core.files.begin_upload(alice.id, 201)
        held = await core.files.begin_upload(alice.id, 150)  # what an upload under way holds counts
        with pytest.raises(TooLarge, match="^Quota exceeded: 50 bytes of your quota are left$"):
            await core.files.begin_upload(alice.id, 51)
        await held.write(b"x" * 150)
        await held.finish("held.bin")
        rest = await core.files.begin_upload(alice.id, 50)
        with pytest.raises(TooLarge, match="^Quota exceeded: 0 bytes of your quota are left$"):
            await core.files.begin_upload(alice.id, 1)
        await rest.abort()
        await (await core.files.begin_upload(bob.id, 1000)).abort()  # bob keeps the defaults

    run(tmp_path, limited, max_file_size=1000, bcrypt_rounds=4)


def test_a_commit_between_reading_the_count_and_holding_is_counted(tmp_path: Path) -> None:
    """B reads the stored count, then A commits and gives back its hold, then B holds against
    the count it read: the version B read is stale, so the count is read again."""
    part = QUOTA * 6 // 10

    async def race(core: Core) -> None:
        a = await core.files.begin_upload(OWNER, part)
        await a.write(b"a" * part)
        read, go_on = asyncio.Event(), asyncio.Event()
        real = core.store.usage

        async def paused(owner: int) -> tuple[int, int]:
            counted = await real(owner)
            if not read.is_set():
                read.set()
                await go_on.wait()
            return counted

        core.store.usage = paused  # type: ignore[method-assign]
        b = asyncio.ensure_future(core.files.begin_upload(OWNER, part))
        await read.wait()
        await a.finish("a.bin")
        go_on.set()
        with pytest.raises(TooLarge, match=f"^Quota exceeded: {QUOTA - part} bytes of your quota are left$"):
            await b
        assert await stored(core) == part

    run(tmp_path, race)


def test_an_upload_growing_past_a_commit_of_another_process_is_refused(tmp_path: Path) -> None:
    """Two processes (two cores sharing one state): B's count, read at admission, goes stale
    when the other process commits A, and B may grow only into what A left."""
    part = QUOTA * 6 // 10

    async def two(state: LocalState) -> tuple[str, int]:
        settings: dict[str, Any] = {"user_quota": QUOTA}
        async with incore.core(tmp_path / "vault.db", state=state, **settings) as here:
            async with incore.core(tmp_path / "vault.db", state=state, **settings) as there:
                b = await here.files.begin_upload(OWNER, None)
                a = await there.files.begin_upload(OWNER, None)
                await a.write(b"a" * part)
                await a.finish("a.bin")
                with pytest.raises(TooLarge) as refused:
                    await b.write(b"b" * part)
                await b.write(b"b" * (QUOTA - part))  # exactly what is left
                await b.finish("b.bin")
                return refused.value.message, await stored(here)

    message, used = asyncio.run(two(LocalState()))
    assert message == f"Quota exceeded: this upload could use {QUOTA - part} more bytes of your quota"
    assert used == QUOTA


def test_an_upload_refused_growth_is_told_exactly_what_it_may_still_use(tmp_path: Path) -> None:
    async def full(core: Core) -> list[str]:
        messages = []
        b = await core.files.begin_upload(OWNER, None)
        await b.write(b"b" * 10)
        a = await core.files.begin_upload(OWNER, None)
        with pytest.raises(TooLarge) as refused:
            await a.write(b"a" * (QUOTA - 9))
        messages.append(refused.value.message)  # B holds its 10 bytes
        await a.write(b"a" * (QUOTA - 10))
        await a.finish("a.bin")
        with pytest.raises(TooLarge) as refused:
            await b.write(b"b")
        messages.append(refused.value.message)  # nothing is left beyond B's own 10
        await b.abort()
        return messages

    assert run(tmp_path, full) == [
        f"Quota exceeded: this upload could use {QUOTA - 10} more bytes of your quota",
        "Quota exceeded: this upload could use 0 more bytes of your quota",
    ]


def test_an_upload_whose_count_never_settles_is_refused(tmp_path: Path) -> None:
    """Another process commits between every read of the version and of the count: after
    vault.quota.STALE_READS tries, admission and growth both give up."""

    async def churn(core: Core) -> list[str]:
        quotas, real = core.files.quotas, core.store.usage
        upload = await core.files.begin_upload(OWNER, None)

        async def committed_meanwhile(owner: int) -> tuple[int, int]:
            await quotas._state.bump(QUOTA_KIND, str(owner))
            return await real(owner)

        core.store.usage = committed_meanwhile  # type: ignore[method-assign]
        await quotas._state.bump(QUOTA_KIND, str(OWNER))  # the count read at admission is stale
        messages = []
        with pytest.raises(TooLarge) as refused:
            await upload.write(b"x")
        messages.append(refused.value.message)
        with pytest.raises(TooLarge) as refused:
            await core.files.begin_upload(OWNER, 10)
        messages.append(refused.value.message)
        await upload.abort()
        return messages

    assert (
        run(tmp_path, churn) == ["Quota exceeded: your usage is changing too fast to admit this upload"] * 2
    )


def test_a_resumed_upload_is_not_charged_again(tmp_path: Path) -> None:
    """A resumable upload's whole length was counted at creation: appending charges nothing,
    and completing it leaves the count as it was."""

    async def resumed(core: Core) -> list[Usage]:
        state = await core.files.resumables.create(OWNER, "r.bin", QUOTA, "")
        seen = [await core.files.usage(OWNER)]
        session = await core.files.resumables.resume(OWNER, state.tus_id, 0)
        await session.write(b"r" * QUOTA)
        assert await session.save() == QUOTA
        seen.append(await core.files.usage(OWNER))
        return seen

    limits = Limits(QUOTA, QUOTA)
    assert run(tmp_path, resumed, max_file_size=QUOTA) == [Usage(QUOTA, 0, limits), Usage(QUOTA, 1, limits)]


def test_multipart_framing_may_pass_the_largest_file_size(tmp_path: Path) -> None:
    async def framed(core: Core) -> None:
        await (await core.files.begin_upload(OWNER, 1000 + 1024, slack=1024)).abort()
        with pytest.raises(TooLarge, match="^File too large: the limit is 1000 bytes$"):
            await core.files.begin_upload(OWNER, 1000 + 1025, slack=1024)

    run(tmp_path, framed, max_file_size=1000, user_quota=0)


def test_a_commit_of_this_process_while_an_upload_grows_is_counted(tmp_path: Path) -> None:
    """A grows its hold against the count it cached; while that resize waits, B of the same
    owner commits in this process (which drops the cache and moves the version): the resize is
    refused as stale, the count is read again, and A's growth is granted against it."""

    async def race(core: Core) -> tuple[int, int]:
        quotas = core.files.quotas
        state = quotas._state
        real = state.resize
        b = await core.files.begin_upload(OWNER, 10)
        await b.write(b"b" * 10)
        a = await core.files.begin_upload(OWNER, None)
        asked, go_on = asyncio.Event(), asyncio.Event()

        async def paused(*args: Any, **kwargs: Any) -> Any:
            if not asked.is_set():
                asked.set()
                await go_on.wait()
            return await real(*args, **kwargs)

        state.resize = paused  # type: ignore[method-assign]
        grow = asyncio.ensure_future(a.write(b"a" * 1000))
        await asked.wait()
        await b.finish("b.bin")
        go_on.set()
        await grow
        await a.finish("a.bin")
        return await stored(core), await state.held(QUOTA_KIND, str(OWNER))

    assert run(tmp_path, race) == (1010, 0)
