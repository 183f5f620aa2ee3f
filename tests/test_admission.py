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


def test_largest_file_is_checked_on_admission_and_while_streaming(tmp_path: Path) -> None:
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

    run(tmp_path, sized, max_file_size=1000, user_quota=0)


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
