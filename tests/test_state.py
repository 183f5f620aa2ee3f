"""The StateStore contract (vault/store.py), run against every implementation: holds with
limits, versions that refuse a stale hold, compare-and-set counters with expiry, mutexes."""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from storage.sqlite_state import SQLiteState
from tests import pg
from tests.dbedit import Edits
from vault.errors import InvalidCredentials, TooManyAttempts, TooManyRegistrations
from vault.state import LocalState
from vault.store import Counter, StateStore
from vault.throttle import SharedLoginThrottle

Factory = Callable[[Path], Any]  # an async context manager yielding a StateStore


@contextlib.asynccontextmanager
async def local_state(tmp_path: Path) -> AsyncIterator[StateStore]:
    state = LocalState()
    try:
        yield state
    finally:
        await state.close()


@contextlib.asynccontextmanager
async def sqlite_state(tmp_path: Path) -> AsyncIterator[StateStore]:
    state = await SQLiteState.open(tmp_path / "vault.db")
    try:
        yield state
    finally:
        await state.close()


@contextlib.asynccontextmanager
async def postgres_state(tmp_path: Path) -> AsyncIterator[StateStore]:
    """A PostgresState on a store of its own in the test cluster (tests/pg.py)."""
    from storage.postgres import PostgresStore
    from storage.postgres_state import PostgresState

    assert pg.CLUSTER is not None
    store = await PostgresStore.open(await pg.CLUSTER.scratch(str(tmp_path)), pool_size=4)
    state = await PostgresState.open(store)
    try:
        yield state
    finally:
        await state.close()
        await store.close()


FACTORIES: dict[str, Factory] = {"local": local_state, "sqlite": sqlite_state, "postgres": postgres_state}


def run(tmp_path: Path, factory: Factory, scenario: Callable[[StateStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with factory(tmp_path) as state:
            await scenario(state)

    asyncio.run(main())


@pytest.fixture(params=sorted(FACTORIES))
def factory(request: pytest.FixtureRequest) -> Factory:
    if request.param == "postgres":
        request.getfixturevalue("pg_cluster")
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


def test_settle_turns_a_hold_into_count_in_one_step_and_tally_reads_both(
    tmp_path: Path, factory: Factory
) -> None:
    async def scenario(state: StateStore) -> None:
        assert await state.tally("link", "L1") == (Counter(), 0)
        seeded = await state.set_counter("link", "L1", 100, 5.0, version=0, expires=None)
        assert seeded == Counter(100, 5.0, 1)
        first = await state.hold("link", "L1", 30, 200, version=1)
        second = await state.hold("link", "L1", 40, 200)
        assert first is not None and second is not None
        assert await state.tally("link", "L1") == (Counter(100, 5.0, 1), 70)
        assert await state.settle(first, 25) == 2  # sent less than it held
        assert await state.tally("link", "L1") == (Counter(125, 5.0, 2), 40)
        assert await state.hold("link", "L1", 5, 200, version=1) is None  # counted since
        await state.settle(first, 3)  # no longer held: counted all the same
        assert await state.tally("link", "L1") == (Counter(128, 5.0, 3), 40)
        await state.settle(second, -10)  # a refund given back
        assert await state.tally("link", "L1") == (Counter(118, 5.0, 4), 0)
        fresh = await state.hold("link", "L2", 9, None)  # no counter yet: it starts from 0
        assert fresh is not None
        assert await state.settle(fresh, 9) == 1
        assert await state.tally("link", "L2") == (Counter(9, 0.0, 1), 0)
        assert await state.set_counter("link", "L3", 1, 1.0, version=0, expires=1.0)  # 1970
        assert await state.tally("link", "L3") == (Counter(), 0)

    run(tmp_path, factory, scenario)


def test_a_full_local_state_forgets_no_counter_with_live_holds() -> None:
    async def scenario() -> None:
        state = LocalState(max_counters=2)
        hold = await state.hold("link", "busy", 10, None)
        assert hold is not None
        await state.set_counter("link", "busy", 100, 1.0, version=0, expires=None)
        for key in "abc":
            await state.set_counter("login", key, 1, 1.0, version=0, expires=None)
        assert await state.counter("link", "busy") == Counter(100, 1.0, 1)
        assert await state.counter("login", "a") == Counter()  # the oldest idle one went
        await state.settle(hold, 10)
        assert await state.counter("link", "busy") == Counter(110, 1.0, 2)

    asyncio.run(scenario())


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


# --- the login throttle's rules on the shared state (vault/throttle.py SharedLoginThrottle) -------


async def failed_login(throttle: SharedLoginThrottle, account: str, address: str) -> None:
    with pytest.raises(InvalidCredentials):
        async with throttle.guard(account, address):
            raise InvalidCredentials()


def test_shared_throttle_locks_after_the_free_failures_by_account_and_address(
    tmp_path: Path, factory: Factory
) -> None:
    async def scenario(state: StateStore) -> None:
        throttle = SharedLoginThrottle(state, free=3, max_backoff=60)
        for n in range(3):
            await failed_login(throttle, "Alice", f"192.0.2.{n}")  # three addresses, one account
        with pytest.raises(TooManyAttempts) as locked:
            async with throttle.guard("alice", "192.0.2.9"):
                pytest.fail("a locked account was let in")
        assert locked.value.retry_after == 1
        async with throttle.guard("bob", "192.0.2.9"):  # another account, another address: free
            pass
        for n in range(3):
            await failed_login(throttle, f"user{n}", "198.51.100.7")  # one address, three accounts
        with pytest.raises(TooManyAttempts):
            async with throttle.guard("carol", "198.51.100.7"):
                pass

    run(tmp_path, factory, scenario)


def test_shared_throttle_counts_attempts_in_flight_and_a_success_clears_the_account(
    tmp_path: Path, factory: Factory
) -> None:
    async def scenario(state: StateStore) -> None:
        throttle = SharedLoginThrottle(state, free=2, max_backoff=60)
        async with throttle.guard("alice", "192.0.2.1"), throttle.guard("alice", "192.0.2.2"):
            with pytest.raises(TooManyAttempts):  # two in flight: as many as are free
                async with throttle.guard("alice", "192.0.2.3"):
                    pass
        await failed_login(throttle, "alice", "192.0.2.1")
        async with throttle.guard("alice", "192.0.2.2"):  # succeeds: the account starts over
            pass
        await failed_login(throttle, "alice", "192.0.2.3")
        async with throttle.guard("alice", "192.0.2.4"):  # one failure since: not locked
            pass
        assert await state.held("login-pending", "login-account:alice") == 0  # none left in flight

    run(tmp_path, factory, scenario)


def test_shared_registration_limit_per_address_and_in_total(tmp_path: Path, factory: Factory) -> None:
    async def scenario(state: StateStore) -> None:
        throttle = SharedLoginThrottle(
            state, free=5, max_backoff=60, register_per_address=2, register_per_hour=3
        )
        await throttle.check_registration("10.0.0.1")
        await throttle.check_registration("10.0.0.1")
        with pytest.raises(TooManyRegistrations):
            await throttle.check_registration("10.0.0.1")
        await throttle.check_registration("10.0.0.2")  # the third in total
        with pytest.raises(TooManyRegistrations) as refused:
            await throttle.check_registration("10.0.0.3")
        assert 3590 <= refused.value.retry_after <= 3600

    run(tmp_path, factory, scenario)


# --- SQLite: several processes (each a connection and a holder of its own) on one database -------


async def holds_and_bumps_are_atomic(states: list[Any]) -> list[Any]:
    """Three processes at once: 4 holds of 12 tries within the limit of 4, and 15 bumps that are
    15 distinct steps. The holds (None where refused), in the order tried."""
    holds = await asyncio.gather(*(s.hold("upload", "7", 1, 4) for s in states for _ in range(4)))
    assert sum(h is not None for h in holds) == 4
    assert [await s.held("upload", "7") for s in states] == [4, 4, 4]
    versions = await asyncio.gather(*(s.bump("quota", "7") for s in states for _ in range(5)))
    assert sorted(versions) == list(range(1, 16))  # each bump is one atomic step
    return list(holds)


def test_postgres_holds_and_counters_stay_atomic_across_instances(
    tmp_path: Path, pg_cluster: pg.Cluster
) -> None:
    """Three instances (a store and a holder each) on one PostgreSQL database."""
    from storage.postgres import PostgresStore
    from storage.postgres_state import PostgresState

    async def scenario() -> None:
        url = await pg_cluster.scratch(str(tmp_path))
        stores = [await PostgresStore.open(url, pool_size=4) for _ in range(3)]
        states = [await PostgresState.open(store) for store in stores]
        try:
            await holds_and_bumps_are_atomic(states)
            dead, alive = states[0], states[1]
            assert await dead.hold("upload", "8", 2, 2) is not None
            assert await alive.hold("upload", "8", 1, 2) is None
            async with stores[1].pool.acquire() as db:  # its lease ran out (it was killed)
                done = await db.execute("UPDATE state_holders SET expires = 0 WHERE holder = $1", dead.holder)
                assert done == "UPDATE 1", done
            assert await alive.held("upload", "8") == 0
            assert await alive.hold("upload", "8", 2, 2) is not None
        finally:
            for state, store in zip(states, stores, strict=True):
                await state.close()
                await store.close()

    asyncio.run(scenario())


def test_sqlite_holds_stay_within_the_limit_across_processes(tmp_path: Path) -> None:
    async def scenario() -> None:
        states = [await SQLiteState.open(tmp_path / "vault.db") for _ in range(3)]
        try:
            await holds_and_bumps_are_atomic(states)
        finally:
            for s in states:
                await s.close()

    asyncio.run(scenario())


def test_sqlite_a_dead_processs_holds_lapse_with_its_lease(tmp_path: Path) -> None:
    async def scenario() -> None:
        alive, dead = (
            await SQLiteState.open(tmp_path / "vault.db"),
            await SQLiteState.open(tmp_path / "vault.db"),
        )
        try:
            assert await dead.hold("upload", "7", 2, 2) is not None
            assert await alive.hold("upload", "7", 1, 2) is None
            assert await alive.held_keys("upload") == {"7"}
            # its lease ran out (it was killed)
            with sqlite3.connect(tmp_path / "vault.db", factory=Edits) as db:
                db.execute("UPDATE state_holders SET expires = 0 WHERE holder = ?", (dead.holder,))
            assert await alive.held("upload", "7") == 0 and await alive.held_keys("upload") == set()
            assert await alive.hold("upload", "7", 2, 2) is not None
            await alive.renew()  # the survivor's renewal deletes the dead one's rows
            with sqlite3.connect(tmp_path / "vault.db") as db:
                holders = {row[0] for row in db.execute("SELECT holder FROM state_holders")}
                owners = {row[0] for row in db.execute("SELECT DISTINCT holder FROM state_holds")}
            assert holders == owners == {alive.holder}
        finally:
            await alive.close()
            await dead.close()
        with sqlite3.connect(tmp_path / "vault.db") as db:  # closing gives everything up
            assert db.execute("SELECT COUNT(*) FROM state_holds").fetchone() == (0,)

    asyncio.run(scenario())


def test_sqlite_a_mutex_is_exclusive_across_processes(tmp_path: Path) -> None:
    async def scenario() -> None:
        states = [await SQLiteState.open(tmp_path / "vault.db") for _ in range(2)]
        inside, most = 0, 0

        async def visit(state: StateStore) -> None:
            nonlocal inside, most
            async with state.mutex("link-password", "L1"):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.005)
                inside -= 1

        try:
            await asyncio.gather(*(visit(s) for s in states for _ in range(3)))
            assert most == 1
        finally:
            for s in states:
                await s.close()

    asyncio.run(scenario())
