"""The StateStore contract (vault/store.py), run against every implementation: holds with
limits, versions that refuse a stale hold, compare-and-set counters with expiry, mutexes."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from vault.state import LocalState
from vault.store import Counter, StateStore

Factory = Callable[[Path], Any]  # an async context manager yielding a StateStore


@contextlib.asynccontextmanager
async def local_state(tmp_path: Path) -> AsyncIterator[StateStore]:
    state = LocalState()
    try:
        yield state
    finally:
        await state.close()


FACTORIES: dict[str, Factory] = {"local": local_state}


def run(tmp_path: Path, factory: Factory, scenario: Callable[[StateStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with factory(tmp_path) as state:
            await scenario(state)

    asyncio.run(main())


@pytest.fixture(params=sorted(FACTORIES))
def factory(request: pytest.FixtureRequest) -> Factory:
    return FACTORIES[request.param]


def test_holds_stay_within_their_limit_per_key(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        first = await state.hold("upload", "7", 1, 2)
        second = await state.hold("upload", "7", 1, 2)
        assert first is not None and second is not None and first.id != second.id
        assert await state.hold("upload", "7", 1, 2) is None  # a refused hold takes nothing
        assert await state.held("upload", "7") == 2
        assert await state.hold("upload", "8", 1, 2) is not None  # another key has its own
        await state.release(first)
        await state.release(first)  # twice: nothing more is given back
        assert await state.held("upload", "7") == 1
        assert await state.hold("upload", "7", 1, 2) is not None
        assert await state.hold("upload", "7", 1, 2) is None
        assert await state.held_keys("upload") == {"7", "8"}

    run(tmp_path, factory, scenario)


def test_a_hold_grants_what_fits_down_to_what_is_needed(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        assert (big := await state.hold("quota", "1", 70, 100)) is not None and big.amount == 70
        part = await state.hold("quota", "1", 50, 100, need=10)
        assert part is not None and part.amount == 30
        assert await state.hold("quota", "1", 50, 100, need=1) is None
        zero = await state.hold("quota", "1", 50, 100, need=0)
        assert zero is not None and zero.amount == 0
        unlimited = await state.hold("pin", "ab", 1, None)
        assert unlimited is not None and unlimited.amount == 1
        assert await state.held("quota", "1") == 100

    run(tmp_path, factory, scenario)


def test_resize_grows_within_the_limit_and_shrinks_always(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        hold = await state.hold("quota", "1", 10, 100)
        other = await state.hold("quota", "1", 50, 100)
        assert hold is not None and other is not None
        grown = await state.resize(hold, 50, 100)
        assert grown is not None and grown.amount == 50
        assert await state.resize(grown, 51, 100) is None  # 51 + 50 > 100: unchanged
        assert await state.held("quota", "1") == 100
        shrunk = await state.resize(grown, 5, 1)  # shrinking needs no room
        assert shrunk is not None and await state.held("quota", "1") == 55
        await state.release(shrunk)
        assert await state.resize(shrunk, 1, None) is None  # released: gone

    run(tmp_path, factory, scenario)


def test_a_hold_on_a_stale_version_is_refused(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        version = (await state.counter("quota", "1")).version
        assert version == 0
        assert await state.bump("quota", "1") == 1
        assert await state.hold("quota", "1", 5, 100, version=version) is None
        hold = await state.hold("quota", "1", 5, 100, version=1)
        assert hold is not None
        await state.bump("quota", "1")
        assert await state.resize(hold, 6, 100, version=1) is None
        assert await state.resize(hold, 6, 100, version=2) is not None

    run(tmp_path, factory, scenario)


def test_counters_compare_and_set_and_expire(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        assert await state.counter("login", "alice") == Counter()
        first = await state.set_counter("login", "alice", 1, 10.0, version=0, expires=None)
        assert first == Counter(1, 10.0, 1)
        assert await state.set_counter("login", "alice", 5, 11.0, version=0, expires=None) is None
        assert await state.counter("login", "alice") == first
        second = await state.set_counter("login", "alice", 2, 12.0, version=1, expires=None)
        assert second == Counter(2, 12.0, 2)
        assert await state.bump("login", "alice") == 3
        assert await state.counter("login", "alice") == Counter(2, 12.0, 3)
        gone = await state.set_counter("login", "bob", 1, 1.0, version=0, expires=1.0)  # 1970
        assert gone is not None
        assert await state.counter("login", "bob") == Counter()
        assert await state.set_counter("login", "bob", 4, 2.0, version=0, expires=None) is not None

    run(tmp_path, factory, scenario)


def test_a_mutex_lets_one_in_at_a_time_in_turn(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        inside, most, order = 0, 0, []

        async def visit(n: int) -> None:
            nonlocal inside, most
            async with state.mutex("link-password", "L1"):
                inside += 1
                most = max(most, inside)
                order.append(n)
                await asyncio.sleep(0.001)
                inside -= 1

        await asyncio.gather(*(visit(n) for n in range(6)))
        assert most == 1 and sorted(order) == list(range(6))
        async with state.mutex("link-password", "L1"):  # free again afterwards
            pass

    run(tmp_path, factory, scenario)


def test_local_state_is_one_process_only() -> None:
    state = LocalState()
    assert state.shared is False and len(state.holder) == 16 and LocalState().holder != state.holder
