"""Login throttling: vault.throttle in process with a fake clock (in memory, then on the shared
state), then /login over HTTPS."""

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.server import Response, Server
from vault.config import load_settings
from vault.errors import Busy, ConfigError, InvalidCredentials, TooManyAttempts, TooManyRegistrations
from vault.state import LocalState
from vault.store import Counter, Hold
from vault.throttle import (
    ACCOUNT,
    ADDRESS,
    BUSY_RETRY,
    CAS_ROUNDS,
    MAX_KEYS,
    PENDING,
    REGISTER,
    LoginThrottle,
    RegistrationLimit,
    SharedLoginThrottle,
    address_key,
    parse_networks,
)

PASSWORD = "correct horse battery"
LOCKED = b'{"message": "Too many wrong passwords: wait before trying again", "status": 429}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    free: int = 3, max_backoff: int = 60, trusted_proxies: str = "", max_keys: int = MAX_KEYS
) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    throttle = LoginThrottle(
        free=free, max_backoff=max_backoff, trusted_proxies=trusted_proxies, max_keys=max_keys, clock=clock
    )
    return throttle, clock


def fail(throttle: LoginThrottle, account: str = "alice", address: str = "192.0.2.1") -> None:
    throttle.check(account, address)
    throttle.failed(account, address)


def wait_of(throttle: LoginThrottle, account: str = "alice", address: str = "192.0.2.1") -> int:
    """The Retry-After a check would answer now (0: allowed; the attempt is then abandoned)."""
    try:
        throttle.check(account, address)
    except TooManyAttempts as exc:
        return exc.retry_after
    throttle.abandoned(account, address)
    return 0


# --- the backoff ---------------------------------------------------------------------------------


def test_attempts_up_to_free_are_not_delayed_and_the_next_is() -> None:
    throttle, _ = make(free=3)
    for _ in range(2):
        fail(throttle)
        assert wait_of(throttle) == 0
    fail(throttle)
    assert wait_of(throttle) == 1


def test_each_further_failure_doubles_the_window() -> None:
    throttle, clock = make(free=3, max_backoff=3600)
    for _ in range(3):
        fail(throttle)
    waits = []
    for _ in range(6):
        waits.append(wait_of(throttle))
        clock.now += waits[-1]
        fail(throttle)
    assert waits == [1, 2, 4, 8, 16, 32]


def test_window_never_exceeds_max_backoff() -> None:
    throttle, clock = make(free=1, max_backoff=10)
    for _ in range(50):
        clock.now += wait_of(throttle)
        fail(throttle)
        assert wait_of(throttle) <= 10
    assert wait_of(throttle) == 10


def test_lock_ends_exactly_when_its_window_passes() -> None:
    throttle, clock = make(free=1)
    fail(throttle)
    clock.now += 0.999
    assert wait_of(throttle) == 1  # rounded up: a client waiting Retry-After always gets in
    clock.now += 0.001
    assert wait_of(throttle) == 0


def test_refused_attempts_neither_count_nor_extend_the_lock() -> None:
    throttle, clock = make(free=1, max_backoff=3600)
    fail(throttle)
    for _ in range(100):
        with pytest.raises(TooManyAttempts):
            throttle.check("alice", "192.0.2.1")
    clock.now += 1
    fail(throttle)
    assert wait_of(throttle) == 2  # the second failure, not the 102nd


def test_idle_key_is_forgotten_max_backoff_after_its_lock_ends() -> None:
    throttle, clock = make(free=2, max_backoff=60)
    for _ in range(3):
        clock.now += wait_of(throttle)
        fail(throttle)
    assert wait_of(throttle) == 2
    clock.now += 2 + 60 - 0.5
    fail(throttle)  # still remembered: this is the 4th failure
    assert wait_of(throttle) == 4
    clock.now += 4 + 60
    fail(throttle)  # forgotten: the 1st failure again
    assert wait_of(throttle) == 0


def test_forgotten_keys_free_their_memory() -> None:
    throttle, clock = make(free=2, max_backoff=60)
    for n in range(100):
        fail(throttle, f"user{n}", f"192.0.2.{n}")
    assert throttle.tracked() == (100, 100)
    clock.now += 61
    fail(throttle, "late", "198.51.100.1")
    assert throttle.tracked() == (1, 1)


def test_tracked_keys_are_capped_dropping_the_oldest() -> None:
    throttle, clock = make(free=1, max_keys=3)
    for n in range(5):
        clock.now += 1
        fail(throttle, f"user{n}", "192.0.2.1" if n == 0 else f"198.51.100.{n}")
    assert throttle.tracked() == (3, 3)
    assert wait_of(throttle, "user0", "203.0.113.1") == 0  # the oldest account was dropped
    assert wait_of(throttle, "user4", "203.0.113.1") > 0


def test_a_failure_whose_key_was_dropped_meanwhile_still_counts() -> None:
    """Past max_keys a key is dropped even with an attempt in flight; that attempt's failure is
    counted on a new entry (making room again), its abandonment leaves nothing."""
    throttle, _ = make(free=1, max_keys=1)
    throttle.check("alice", "192.0.2.1")
    fail(throttle, "bob", "192.0.2.2")  # drops alice and 192.0.2.1 to make room, then fails
    throttle.failed("alice", "192.0.2.1")  # drops bob and 192.0.2.2 (expired or not) in turn
    assert throttle.tracked() == (1, 1)
    assert wait_of(throttle, "alice", "203.0.113.1") == 1
    assert wait_of(throttle, "carol", "192.0.2.1") == 1
    assert wait_of(throttle, "bob", "192.0.2.2") == 0
    throttle.check("dave", "192.0.2.3")
    throttle.check("erin", "192.0.2.4")  # drops dave's and 192.0.2.3's entries
    throttle.abandoned("dave", "192.0.2.3")
    assert throttle.tracked() == (1, 1)


# --- keys ------------------------------------------------------------------------------------------


def test_success_resets_the_account_but_not_the_address() -> None:
    throttle, clock = make(free=3)
    for _ in range(2):
        fail(throttle)
    throttle.check("alice", "192.0.2.1")
    throttle.succeeded("alice", "192.0.2.1")
    fail(throttle, "alice", "198.51.100.1")
    fail(throttle, "alice", "198.51.100.1")
    assert wait_of(throttle, "alice", "203.0.113.1") == 0  # the account starts from 0 again
    # but the address keeps its two failures: one more (on any account) locks it
    fail(throttle, "bob", "192.0.2.1")
    assert wait_of(throttle, "carol", "192.0.2.1") == 1


def test_failures_from_one_address_lock_it_for_every_account() -> None:
    throttle, _ = make(free=3)
    for n in range(3):
        fail(throttle, f"user{n}", "192.0.2.1")
    assert wait_of(throttle, "someone-else", "192.0.2.1") == 1
    assert wait_of(throttle, "someone-else", "192.0.2.2") == 0
    assert wait_of(throttle, "user0", "192.0.2.2") == 0  # each account failed only once


def test_failures_on_one_account_lock_it_from_every_address() -> None:
    throttle, _ = make(free=3)
    for n in range(3):
        fail(throttle, "alice", f"192.0.2.{n}")
    assert wait_of(throttle, "alice", "203.0.113.9") == 1
    assert wait_of(throttle, "bob", "192.0.2.0") == 0


def test_account_key_ignores_case_and_applies_to_unknown_names() -> None:
    throttle, _ = make(free=2)
    fail(throttle, "Alice", "192.0.2.1")
    fail(throttle, "ALICE", "192.0.2.2")
    assert wait_of(throttle, "alice", "192.0.2.3") == 1


def test_account_key_is_the_name_lower_cased_and_cut_to_64_characters() -> None:
    throttle, _ = make(free=1)
    fail(throttle, "Straße", "192.0.2.1")  # lower-cased, not upper-cased: 'STRASSE' is another
    assert wait_of(throttle, "straße", "192.0.2.2") == 1
    assert wait_of(throttle, "STRASSE", "192.0.2.2") == 0
    fail(throttle, "x" * 64 + "a", "192.0.2.3")
    assert wait_of(throttle, "X" * 64 + "b", "192.0.2.4") == 1
    assert wait_of(throttle, "x" * 63, "192.0.2.4") == 0


def test_a_peer_that_is_no_address_is_keyed_by_its_first_64_characters() -> None:
    assert address_key("unix-socket") == "unix-socket"
    assert address_key("p" * 100) == "p" * 64


def test_ipv6_addresses_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1") == "192.0.2.1"
    throttle, _ = make(free=2)
    fail(throttle, "a1", "2001:db8:1:2::1")
    fail(throttle, "a2", "2001:db8:1:2::2")
    assert wait_of(throttle, "a3", "2001:db8:1:2:ffff::3") == 1


# --- attempts in flight ----------------------------------------------------------------------------


def test_parallel_attempts_cannot_share_one_open_window() -> None:
    throttle, clock = make(free=2)
    for n in range(2):
        throttle.check("alice", f"192.0.2.{n}")  # two in flight: as many as are free
    with pytest.raises(TooManyAttempts) as refused:
        throttle.check("alice", "192.0.2.9")
    assert refused.value.retry_after == 1
    for n in range(2):
        throttle.failed("alice", f"192.0.2.{n}")
    clock.now += 1
    throttle.check("alice", "192.0.2.5")  # in backoff: one at a time
    with pytest.raises(TooManyAttempts):
        throttle.check("alice", "192.0.2.6")


def test_abandoned_attempt_counts_nothing() -> None:
    throttle, _ = make(free=1)
    for _ in range(5):
        throttle.check("alice", "192.0.2.1")
        throttle.abandoned("alice", "192.0.2.1")
    assert wait_of(throttle) == 0
    assert throttle.tracked() == (0, 0)


def test_an_attempt_ending_gives_back_exactly_its_own_turn() -> None:
    throttle, _ = make(free=2)
    throttle.check("alice", "192.0.2.1")
    throttle.check("alice", "192.0.2.2")
    throttle.abandoned("alice", "192.0.2.1")  # one of two in flight ends: one turn is free
    throttle.check("alice", "192.0.2.3")
    with pytest.raises(TooManyAttempts):
        throttle.check("alice", "192.0.2.4")
    throttle.succeeded("alice", "192.0.2.2")
    throttle.abandoned("alice", "192.0.2.3")
    assert throttle.tracked() == (0, 0)


def test_attempt_records_the_outcome_of_its_body() -> None:
    throttle, _ = make(free=1)
    with throttle.attempt("alice", "192.0.2.1"):
        pass  # a success leaves nothing behind
    assert throttle.tracked() == (0, 0)
    with pytest.raises(Busy), throttle.attempt("alice", "192.0.2.1"):
        raise Busy()
    assert throttle.tracked() == (0, 0)  # no verdict on the password: not a failure
    with pytest.raises(InvalidCredentials), throttle.attempt("alice", "192.0.2.1"):
        raise InvalidCredentials()
    with pytest.raises(TooManyAttempts), throttle.attempt("alice", "192.0.2.1"):
        raise AssertionError("the body must not run while locked")


def test_the_lock_is_logged_once_naming_the_address_never_the_account(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle, clock = make(free=2, max_backoff=3600)
    with caplog.at_level(logging.DEBUG, "vault.throttle"):
        for _ in range(4):
            clock.now += wait_of(throttle, "alice-secret", "192.0.2.1")
            fail(throttle, "alice-secret", "192.0.2.1")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "login throttled for an account after 2 failures"),
        ("WARNING", "login throttled for '192.0.2.1' after 2 failures"),
    ]


def test_throttle_arguments_must_be_positive() -> None:
    for free, max_backoff, max_keys in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ValueError, match="^free, max_backoff and max_keys must be positive$"):
            LoginThrottle(free=free, max_backoff=max_backoff, max_keys=max_keys)
    throttle = LoginThrottle(free=1, max_backoff=1, max_keys=1)  # the smallest that works
    fail(throttle)
    assert wait_of(throttle) == 1


def test_throttle_defaults_trust_no_proxy_and_limit_no_registration() -> None:
    throttle = LoginThrottle(free=1, max_backoff=1)
    assert throttle.client_address("10.0.0.1", "203.0.113.5") == "10.0.0.1"

    async def register() -> None:
        for _ in range(5):
            await throttle.check_registration("192.0.2.1")

    asyncio.run(register())


def test_throttle_passes_its_registration_limits_keys_and_clock_on() -> None:
    clock = Clock()
    throttle = LoginThrottle(
        free=1, max_backoff=1, max_keys=2, clock=clock, register_per_address=1, register_per_hour=4
    )

    async def register(address: str) -> int:
        try:
            await throttle.check_registration(address)
        except TooManyRegistrations as exc:
            return exc.retry_after
        return 0

    async def scenario() -> None:
        assert await register("192.0.2.1") == 0
        clock.now += 600
        assert await register("192.0.2.1") == 3000  # one per address, an hour from the first
        assert await register("192.0.2.2") == 0
        assert await register("192.0.2.3") == 0
        assert await register("192.0.2.1") == 0  # max_keys 2: 192.0.2.1 was forgotten
        assert await register("192.0.2.4") == 3000  # the total of 4 is used up
        clock.now += 3000
        assert await register("192.0.2.5") == 0

    asyncio.run(scenario())


# --- the victim ------------------------------------------------------------------------------------


def test_an_attacker_cannot_hold_an_account_longer_than_max_backoff_after_stopping() -> None:
    """The attacker fails on the victim's account the moment each window opens, for an hour.
    No window is ever longer than the cap, and once the attacker stops the victim (from a clean
    address) gets in when the current window ends."""
    throttle, clock = make(free=5, max_backoff=60)
    start = clock.now
    while clock.now < start + 3600:
        wait = wait_of(throttle, "victim", "203.0.113.66")
        assert wait <= 60
        clock.now += wait
        fail(throttle, "victim", "203.0.113.66")
    assert wait_of(throttle, "victim", "192.0.2.10") == 60
    clock.now += 60
    throttle.check("victim", "192.0.2.10")
    throttle.succeeded("victim", "192.0.2.10")
    assert wait_of(throttle, "victim", "192.0.2.10") == 0  # and the count is cleared


# --- the client address ----------------------------------------------------------------------------


def test_x_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    throttle, _ = make()
    assert throttle.client_address("192.0.2.1", "203.0.113.5") == "192.0.2.1"


def test_x_forwarded_for_from_a_trusted_proxy_gives_its_last_address() -> None:
    throttle, _ = make(trusted_proxies="10.0.0.1, 172.16.0.0/12")
    assert throttle.client_address("10.0.0.1", "203.0.113.5") == "203.0.113.5"
    assert throttle.client_address("172.20.1.2", "6.6.6.6, 203.0.113.5") == "203.0.113.5"
    assert throttle.client_address("10.0.0.1", None) == "10.0.0.1"
    assert throttle.client_address("10.0.0.1", "not an address") == "10.0.0.1"
    assert throttle.client_address("10.0.0.1", "6.6.6.6,203.0.113.5") == "203.0.113.5"  # no space
    assert throttle.client_address("10.0.0.1", "6.6.6.6, 7.7.7.7, 203.0.113.5") == "203.0.113.5"
    assert throttle.client_address("10.0.0.2", "203.0.113.5") == "10.0.0.2"  # not trusted


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert parse_networks("") == ()
    assert len(parse_networks("10.0.0.1,::1, 192.168.0.0/16")) == 3
    assert [str(n) for n in parse_networks(" , 10.0.0.1,, 192.168.0.0/16 ,")] == [
        "10.0.0.1/32",
        "192.168.0.0/16",
    ]
    with pytest.raises(
        ConfigError, match="^config key 'trusted_proxies': not an IP address or network: 'proxy'$"
    ):
        parse_networks("10.0.0.1, proxy")
    with pytest.raises(ConfigError, match="'trusted_proxies'"):
        load_settings(None, {"VAULT_TRUSTED_PROXIES": "10.0.0.1, proxy.example"})
    with pytest.raises(ConfigError, match="'trusted_proxies'"):
        load_settings(None, {"VAULT_TRUSTED_PROXIES": "10.0.0.1/8"})  # host bits set


@pytest.mark.parametrize(
    ("key", "value"),
    [("LOGIN_FREE_ATTEMPTS", "0"), ("LOGIN_MAX_BACKOFF", "0"), ("LOGIN_MAX_BACKOFF", "86401")],
)
def test_throttle_settings_out_of_range_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key.lower()}'"):
        load_settings(None, {f"VAULT_{key}": value})


# --- the same rules on the shared state (SharedLoginThrottle), in process ----------------------
# LocalState and the throttle read one fake clock; Meddled runs another process's move at the
# moment a compare-and-set round is most exposed to it.

Move = Callable[[str, str], Awaitable[None]]  # (kind, key) of the call it runs before


class Meddled(LocalState):
    """The one-process state, running ``before_hold`` / ``before_set`` (another process's
    move) just before a hold is taken or a counter set; counts the holds asked for."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.before_hold: Move | None = None
        self.before_set: Move | None = None
        self.holds_asked = 0

    async def hold(
        self,
        kind: str,
        key: str,
        amount: int,
        limit: int | None,
        *,
        need: int | None = None,
        version: int | None = None,
    ) -> Hold | None:
        self.holds_asked += 1
        if self.before_hold is not None:
            await self.before_hold(kind, key)
        return await super().hold(kind, key, amount, limit, need=need, version=version)

    async def set_counter(
        self, kind: str, key: str, count: int, stamp: float, *, version: int, expires: float | None
    ) -> Counter | None:
        if self.before_set is not None:
            await self.before_set(kind, key)
        return await super().set_counter(kind, key, count, stamp, version=version, expires=expires)


def shared(
    free: int = 3, max_backoff: int = 60, **options: Any
) -> tuple[SharedLoginThrottle, Meddled, Clock]:
    clock = Clock()
    state = Meddled(clock)
    return (
        SharedLoginThrottle(state, free=free, max_backoff=max_backoff, clock=clock, **options),
        state,
        clock,
    )


async def shared_fail(
    throttle: SharedLoginThrottle, account: str = "alice", address: str = "192.0.2.1"
) -> None:
    with pytest.raises(InvalidCredentials):
        async with throttle.guard(account, address):
            raise InvalidCredentials()


async def shared_wait(
    throttle: SharedLoginThrottle, account: str = "alice", address: str = "192.0.2.1"
) -> int:
    """The Retry-After a login would get now (0: let in; the attempt is then abandoned)."""
    try:
        async with throttle.guard(account, address):
            raise Busy()
    except TooManyAttempts as exc:
        return exc.retry_after
    except Busy:
        return 0
    raise AssertionError("unreachable")


async def pending(state: LocalState, account: str = "alice", address: str = "192.0.2.1") -> tuple[int, int]:
    """The attempts in flight under the account and the address."""
    return await state.held(PENDING, f"{ACCOUNT}:{account}"), await state.held(
        PENDING, f"{ADDRESS}:{address}"
    )


def test_shared_throttle_arguments_must_be_positive_and_default_to_no_proxy_and_no_limit() -> None:
    for free, max_backoff in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match="^free and max_backoff must be positive$"):
            SharedLoginThrottle(LocalState(), free=free, max_backoff=max_backoff)
    state = LocalState()
    throttle = SharedLoginThrottle(state, free=1, max_backoff=1)
    assert throttle.client_address("10.0.0.1", "203.0.113.5") == "10.0.0.1"

    async def scenario() -> None:
        for _ in range(5):
            await throttle.check_registration("192.0.2.1")
        assert await state.counter(REGISTER, "*") == Counter()  # nothing limited, nothing kept
        assert await state.counter(REGISTER, "192.0.2.1") == Counter()
        await shared_fail(throttle)
        assert await shared_wait(throttle) == 1  # free=1, max_backoff=1: the smallest that works

    asyncio.run(scenario())


def test_shared_throttle_trusts_its_proxies_for_x_forwarded_for() -> None:
    throttle = SharedLoginThrottle(LocalState(), free=1, max_backoff=1, trusted_proxies="10.0.0.0/8")
    assert throttle.client_address("10.1.2.3", "6.6.6.6, 203.0.113.5") == "203.0.113.5"
    assert throttle.client_address("192.0.2.1", "203.0.113.5") == "192.0.2.1"


def test_shared_failures_double_the_window_up_to_max_backoff() -> None:
    throttle, _, clock = shared(free=3, max_backoff=20)

    async def scenario() -> None:
        for _ in range(2):
            await shared_fail(throttle)
            assert await shared_wait(throttle) == 0
        await shared_fail(throttle)
        waits = []
        for _ in range(7):
            waits.append(await shared_wait(throttle))
            clock.now += waits[-1]
            await shared_fail(throttle)
        assert waits == [1, 2, 4, 8, 16, 20, 20]

    asyncio.run(scenario())


def test_shared_lock_ends_exactly_when_its_window_passes_and_retry_after_rounds_up() -> None:
    throttle, _, clock = shared(free=1)

    async def scenario() -> None:
        await shared_fail(throttle)
        clock.now += 1
        await shared_fail(throttle)  # the second failure: 2 s
        clock.now += 0.5
        assert await shared_wait(throttle) == 2  # 1.5 s left, rounded up
        clock.now += 1.499
        assert await shared_wait(throttle) == 1
        clock.now += 0.001
        assert await shared_wait(throttle) == 0

    asyncio.run(scenario())


def test_shared_failures_are_counted_under_both_keys_and_forgotten_max_backoff_after_the_lock() -> None:
    throttle, state, clock = shared(free=2, max_backoff=60)

    async def scenario() -> None:
        await shared_fail(throttle, "Alice", "2001:db8:1:2::1")
        assert await state.counter(ACCOUNT, "alice") == Counter(1, 1000.0, 1)
        assert await state.counter(ADDRESS, "2001:db8:1:2::/64") == Counter(1, 1000.0, 1)
        clock.now += 10
        await shared_fail(throttle, "ALICE", "2001:db8:1:2::2")
        assert await state.counter(ACCOUNT, "alice") == Counter(2, 1010.0, 2)
        clock.now += 1 + 60 - 0.001  # the lock (1 s) and max_backoff after it
        assert (await state.counter(ACCOUNT, "alice")).count == 2
        assert (await state.counter(ADDRESS, "2001:db8:1:2::/64")).count == 2
        clock.now += 0.001
        assert await state.counter(ACCOUNT, "alice") == Counter()
        assert await state.counter(ADDRESS, "2001:db8:1:2::/64") == Counter()
        await shared_fail(throttle, "alice", "2001:db8:1:2::3")
        assert (await state.counter(ACCOUNT, "alice")).count == 1  # the first again
        assert await shared_wait(throttle, "alice", "192.0.2.1") == 0

    asyncio.run(scenario())


def test_shared_account_key_is_lower_cased_and_cut_to_64_characters() -> None:
    throttle, state, _ = shared(free=1)

    async def scenario() -> None:
        await shared_fail(throttle, "X" * 64 + "tail", "192.0.2.1")
        assert (await state.counter(ACCOUNT, "x" * 64)).count == 1
        assert await shared_wait(throttle, "x" * 64 + "other", "192.0.2.2") == 1

    asyncio.run(scenario())


def test_shared_refused_attempts_neither_count_nor_extend_the_lock_nor_stay_in_flight() -> None:
    throttle, state, clock = shared(free=1, max_backoff=3600)

    async def scenario() -> None:
        await shared_fail(throttle)
        for _ in range(5):
            assert await shared_wait(throttle) == 1
        assert await state.counter(ACCOUNT, "alice") == Counter(1, 1000.0, 1)
        assert await pending(state) == (0, 0)
        clock.now += 1
        await shared_fail(throttle)
        assert await shared_wait(throttle) == 2  # the second failure, not the seventh

    asyncio.run(scenario())


def test_shared_attempt_refused_by_its_address_gives_back_the_accounts_turn() -> None:
    throttle, state, _ = shared(free=1)

    async def scenario() -> None:
        await shared_fail(throttle, "mallory", "192.0.2.1")  # locks 192.0.2.1
        assert await shared_wait(throttle, "bob", "192.0.2.1") == 1
        assert await pending(state, "bob", "192.0.2.1") == (0, 0)
        assert await shared_wait(throttle, "bob", "192.0.2.2") == 0  # bob's turn was given back

    asyncio.run(scenario())


def test_shared_attempts_in_flight_are_free_minus_failures_and_one_in_backoff() -> None:
    throttle, state, clock = shared(free=3)

    async def scenario() -> None:
        async with throttle.guard("alice", "192.0.2.1"), throttle.guard("alice", "192.0.2.2"):
            async with throttle.guard("alice", "192.0.2.3"):
                assert await pending(state, "alice", "192.0.2.3") == (3, 1)
                assert await shared_wait(throttle, "alice", "192.0.2.4") == 1  # all 3 turns taken
        assert await pending(state, "alice", "192.0.2.3") == (0, 0)
        await shared_fail(throttle)
        await shared_fail(throttle, "alice", "192.0.2.2")  # 2 failures: 1 turn left
        async with throttle.guard("alice", "192.0.2.3"):
            assert await shared_wait(throttle, "alice", "192.0.2.4") == 1
        await shared_fail(throttle, "alice", "192.0.2.3")
        clock.now += 1
        await shared_fail(throttle, "alice", "192.0.2.4")  # 4 failures, in backoff: 1 at a time
        clock.now += 2
        async with throttle.guard("alice", "192.0.2.5"):
            assert await shared_wait(throttle, "alice", "192.0.2.6") == 1
        assert await shared_wait(throttle, "alice", "192.0.2.6") == 0

    asyncio.run(scenario())


def test_shared_success_clears_the_account_only_and_an_abandoned_attempt_changes_nothing() -> None:
    throttle, state, _ = shared(free=3)

    async def scenario() -> None:
        async with throttle.guard("alice", "192.0.2.1"):  # no failure yet: nothing to clear
            pass
        assert await state.counter(ACCOUNT, "alice") == Counter()
        await shared_fail(throttle)
        await shared_fail(throttle)
        assert await shared_wait(throttle) == 0  # abandoned: counts nothing, clears nothing
        assert (await state.counter(ACCOUNT, "alice")).count == 2
        assert (await state.counter(ADDRESS, "192.0.2.1")).count == 2
        async with throttle.guard("alice", "192.0.2.1"):
            pass
        assert await state.counter(ACCOUNT, "alice") == Counter()  # cleared and forgotten
        assert (await state.counter(ADDRESS, "192.0.2.1")).count == 2  # the address is not
        assert await pending(state) == (0, 0)
        await shared_fail(throttle, "bob", "192.0.2.1")
        assert await shared_wait(throttle, "carol", "192.0.2.1") == 1

    asyncio.run(scenario())


def test_shared_lock_is_logged_once_per_key_naming_the_address_never_the_account(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle, _, clock = shared(free=2, max_backoff=3600)

    async def scenario() -> None:
        for _ in range(4):
            clock.now += await shared_wait(throttle, "alice-secret", "192.0.2.1")
            await shared_fail(throttle, "alice-secret", "192.0.2.1")

    with caplog.at_level(logging.DEBUG, "vault.throttle"):
        asyncio.run(scenario())
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "login throttled for an account after 2 failures"),
        ("WARNING", "login throttled for '192.0.2.1' after 2 failures"),
    ]


async def another_failure(state: Meddled, kind: str, key: str) -> None:
    """Another process counts a failure on (kind, key), as its _fail would."""
    counter = await state.counter(kind, key)
    assert await LocalState.set_counter(
        state, kind, key, counter.count + 1, state.clock(), version=counter.version, expires=None
    )


def test_shared_attempt_decides_again_when_a_failure_is_counted_while_it_takes_its_turn() -> None:
    throttle, state, _ = shared(free=1)

    async def once(kind: str, key: str) -> None:
        state.before_hold = None
        await another_failure(state, ACCOUNT, "alice")

    async def scenario() -> None:
        state.before_hold = once
        assert await shared_wait(throttle) == 1  # the failure locked the account meanwhile
        assert await pending(state) == (0, 0)

    asyncio.run(scenario())


def test_shared_attempt_taken_on_a_changed_count_is_let_in_on_the_second_round() -> None:
    throttle, state, _ = shared(free=3)

    async def once(kind: str, key: str) -> None:
        state.before_hold = None
        await another_failure(state, ACCOUNT, "alice")

    async def scenario() -> None:
        state.before_hold = once
        async with throttle.guard("alice", "192.0.2.1"):
            assert state.holds_asked == 3  # the account twice, the address once
            assert await pending(state) == (1, 1)
        assert await pending(state) == (0, 0)

    asyncio.run(scenario())


def test_shared_attempt_gives_up_busy_after_cas_rounds_of_changes() -> None:
    throttle, state, _ = shared(free=3)

    async def always(kind: str, key: str) -> None:
        await state.bump(ACCOUNT, "alice")  # a new version each time, no failure

    async def scenario() -> None:
        state.before_hold = always
        assert await shared_wait(throttle) == BUSY_RETRY
        assert state.holds_asked == CAS_ROUNDS
        assert await pending(state) == (0, 0)

    asyncio.run(scenario())


def test_shared_failure_counted_meanwhile_by_another_process_is_not_lost() -> None:
    throttle, state, _ = shared(free=5)

    async def once(kind: str, key: str) -> None:
        state.before_set = None
        await another_failure(state, kind, key)

    async def scenario() -> None:
        state.before_set = once
        await shared_fail(throttle)
        assert (await state.counter(ACCOUNT, "alice")).count == 2  # the other's and this one
        assert (await state.counter(ADDRESS, "192.0.2.1")).count == 1

    asyncio.run(scenario())


def test_shared_failure_not_counted_after_cas_rounds_of_changes_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle, state, _ = shared(free=5)

    async def always(kind: str, key: str) -> None:
        if kind == ACCOUNT:
            await state.bump(kind, key)

    async def scenario() -> None:
        state.before_set = always
        await shared_fail(throttle)
        assert (await state.counter(ACCOUNT, "alice")).count == 0
        assert (await state.counter(ADDRESS, "192.0.2.1")).count == 1
        assert await pending(state) == (0, 0)

    with caplog.at_level(logging.DEBUG, "vault.throttle"):
        asyncio.run(scenario())
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "login failure not counted: login-account changed 20 times meanwhile")
    ]


def test_shared_registrations_are_counted_per_address_and_in_total_in_windows_of_an_hour() -> None:
    throttle, state, clock = shared(register_per_address=2, register_per_hour=3)

    async def register(address: str) -> int:
        try:
            await throttle.check_registration(address)
        except TooManyRegistrations as exc:
            return exc.retry_after
        return 0

    async def scenario() -> None:
        assert await register("2001:db8:1:2::1") == 0
        assert await state.counter(REGISTER, "*") == Counter(1, 1000.0, 1)
        assert await state.counter(REGISTER, "2001:db8:1:2::/64") == Counter(1, 1000.0, 1)
        clock.now += 600
        assert await register("2001:db8:1:2::2") == 0  # the same /64
        assert await state.counter(REGISTER, "2001:db8:1:2::/64") == Counter(2, 1000.0, 2)
        assert await register("2001:db8:1:2::3") == 3000  # an hour from the window's first
        assert await register("192.0.2.1") == 0  # the third in total
        assert await register("192.0.2.2") == 3000
        assert await state.counter(REGISTER, "192.0.2.2") == Counter()  # refused: not counted
        clock.now += 2999.5
        assert await register("192.0.2.2") == 1  # half a second left: rounded up
        clock.now += 0.5
        assert await state.counter(REGISTER, "*") == Counter()  # the window has expired
        assert await register("2001:db8:1:2::4") == 0
        assert await register("2001:db8:1:2::4") == 0
        assert await state.counter(REGISTER, "*") == Counter(2, 4600.0, 2)

    asyncio.run(scenario())


def test_shared_registration_retried_on_one_key_is_counted_once_under_the_other() -> None:
    """Another process's registration from the same address lands between this one's two
    writes: this one is counted under the total, loses the race on the address and retries
    the address only. Each counter ends with the two registrations, no more."""
    throttle, state, _ = shared(register_per_address=5, register_per_hour=5)

    async def theirs(kind: str, key: str) -> None:
        if key == "192.0.2.1":
            state.before_set = None
            await another_failure(state, REGISTER, "*")
            await another_failure(state, REGISTER, "192.0.2.1")

    async def scenario() -> None:
        state.before_set = theirs
        await throttle.check_registration("192.0.2.1")
        assert (await state.counter(REGISTER, "*")).count == 2
        assert (await state.counter(REGISTER, "192.0.2.1")).count == 2

    asyncio.run(scenario())


def test_shared_registration_refused_on_its_retry_gives_back_what_it_counted() -> None:
    """This registration is counted under the total, then another process's registration from
    the same address takes the address's last place before this one's write: refused on the
    retry, it gives its place under the total back. The address's limit refuses it; the total
    keeps only the registrations that happened."""
    throttle, state, _ = shared(register_per_address=2, register_per_hour=5)

    async def theirs(kind: str, key: str) -> None:
        if key == "192.0.2.1":
            state.before_set = None
            await another_failure(state, REGISTER, "*")
            await another_failure(state, REGISTER, "192.0.2.1")

    async def scenario() -> None:
        await another_failure(state, REGISTER, "*")  # an earlier registration from the address
        await another_failure(state, REGISTER, "192.0.2.1")
        state.before_set = theirs
        with pytest.raises(TooManyRegistrations) as refused:
            await throttle.check_registration("192.0.2.1")
        assert refused.value.retry_after == 3600
        assert (await state.counter(REGISTER, "*")).count == 2
        assert (await state.counter(REGISTER, "192.0.2.1")).count == 2
        await throttle.check_registration("192.0.2.2")  # the places given back are there
        assert (await state.counter(REGISTER, "*")).count == 3

    asyncio.run(scenario())


def test_shared_registration_counted_meanwhile_by_another_process_is_counted_again() -> None:
    throttle, state, clock = shared(register_per_address=0, register_per_hour=2)

    async def once(kind: str, key: str) -> None:
        state.before_set = None
        await another_failure(state, kind, key)  # another process's registration

    async def always(kind: str, key: str) -> None:
        await state.bump(kind, key)

    async def scenario() -> None:
        state.before_set = once
        await throttle.check_registration("192.0.2.1")
        assert (await state.counter(REGISTER, "*")).count == 2
        with pytest.raises(TooManyRegistrations):
            await throttle.check_registration("192.0.2.2")
        clock.now += 3600
        state.before_set = always
        with pytest.raises(TooManyRegistrations) as busy:
            await throttle.check_registration("192.0.2.3")
        assert busy.value.retry_after == BUSY_RETRY

    asyncio.run(scenario())


# --- over HTTPS ----------------------------------------------------------------------------------


def throttled_server(fresh_server: Server, **env: str) -> Server:
    fresh_server.env.update({"VAULT_LOGIN_FREE_ATTEMPTS": "3", "VAULT_LOGIN_MAX_BACKOFF": "2", **env})
    return fresh_server.start()


def login(
    server: Server, name: str, password: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    resp = server.request("POST", "/login", {"username": name, "password": password}, headers=headers)
    return resp.status, resp.body


def test_wrong_passwords_are_401_then_429_and_the_right_one_works_after_retry_after(
    fresh_server: Server,
) -> None:
    server = throttled_server(fresh_server)
    name = server.new_user(PASSWORD)[0]
    for _ in range(3):
        assert login(server, name, "wrong password")[0] == 401
    resp = server.request("POST", "/login", {"username": name, "password": "wrong password"})
    assert (resp.status, resp.body) == (429, LOCKED)
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    assert login(server, name, PASSWORD) == (429, LOCKED)  # the right password tells nothing either
    time.sleep(retry_after)
    assert login(server, name, PASSWORD)[0] == 200


def test_spoofed_x_forwarded_for_does_not_escape_the_address_lock(fresh_server: Server) -> None:
    server = throttled_server(fresh_server)
    for _ in range(3):
        assert login(server, "nobody" + uuid.uuid4().hex[:8], "wrong password")[0] == 401
    spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7"}
    assert login(server, "nobody" + uuid.uuid4().hex[:8], "wrong password", spoofed) == (429, LOCKED)


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_lock(fresh_server: Server) -> None:
    server = throttled_server(fresh_server, VAULT_TRUSTED_PROXIES="127.0.0.1")
    name = server.new_user(PASSWORD)[0]
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        assert login(server, "nobody" + uuid.uuid4().hex[:8], "wrong password", attacker)[0] == 401
    assert login(server, "nobody" + uuid.uuid4().hex[:8], "wrong password", attacker) == (429, LOCKED)
    # prepending an address does not help: the proxy appends the one it saw, and that is used
    prepended = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert login(server, name, PASSWORD, prepended) == (429, LOCKED)
    assert login(server, name, PASSWORD, {"X-Forwarded-For": "198.51.100.1"})[0] == 200


# --- registration ------------------------------------------------------------------------


def test_registration_limit_counts_per_address_and_in_total_and_forgets_after_an_hour() -> None:
    now = [1000.0]
    limit = RegistrationLimit(per_address=2, total=3, clock=lambda: now[0])
    limit.check("10.0.0.1")
    limit.check("10.0.0.1")
    with pytest.raises(TooManyRegistrations) as refused:
        limit.check("10.0.0.1")
    assert refused.value.retry_after == 3600
    limit.check("2001:db8::1")
    with pytest.raises(TooManyRegistrations):
        limit.check("10.0.0.2")  # the total is used up
    with pytest.raises(TooManyRegistrations):
        limit.check("2001:db8::2")  # same /64 as 2001:db8::1, and the total
    now[0] += 3599
    with pytest.raises(TooManyRegistrations) as refused:
        limit.check("10.0.0.3")
    assert refused.value.retry_after == 1
    now[0] += 1
    limit.check("10.0.0.1")  # a new window for the total and the address, counted from 0
    limit.check("10.0.0.1")


def test_registration_limit_remembers_at_most_max_keys_windows_dropping_the_oldest() -> None:
    limit = RegistrationLimit(per_address=1, total=0, max_keys=2, clock=Clock())
    limit.check("192.0.2.1")
    limit.check("192.0.2.2")
    with pytest.raises(TooManyRegistrations):
        limit.check("192.0.2.1")  # two windows kept: both still count
    limit.check("192.0.2.3")  # a third: the oldest (192.0.2.1) is forgotten
    for address in ("192.0.2.2", "192.0.2.3"):
        with pytest.raises(TooManyRegistrations):
            limit.check(address)
    limit.check("192.0.2.1")


def test_registrations_are_throttled_per_address_with_the_json_429(fresh_server: Server) -> None:
    fresh_server.env.update(
        {
            "VAULT_REGISTER_PER_ADDRESS": "2",
            "VAULT_REGISTER_PER_HOUR": "0",
            "VAULT_TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    server = fresh_server.start()

    def register(address: str, name: str) -> Response:
        body = {"username": name, "password": "correct horse battery"}
        return server.request("POST", "/register", body, headers={"X-Forwarded-For": address})

    assert register("192.0.2.1", "first").status == 201
    assert register("192.0.2.1", "x").status == 400  # attempts count whatever their outcome
    refused = register("192.0.2.1", "third")
    assert refused.status == 429
    assert refused.json() == {"message": "Too many registrations: try again later", "status": 429}
    assert 3500 < int(refused.headers["Retry-After"]) <= 3600
    assert register("192.0.2.2", "fourth").status == 201  # another address
    with sqlite3.connect(server.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM users").fetchone() == (2,)


def test_registrations_are_throttled_in_total(fresh_server: Server) -> None:
    fresh_server.env.update({"VAULT_REGISTER_PER_ADDRESS": "0", "VAULT_REGISTER_PER_HOUR": "1"})
    server = fresh_server.start()
    body = {"username": "only", "password": "correct horse battery"}
    assert server.request("POST", "/register", body).status == 201
    assert server.request("POST", "/register", {**body, "username": "second"}).status == 429


def test_a_flood_of_registrations_never_starves_a_login(fresh_server: Server) -> None:
    """100 registrations at once (more than the whole bcrypt queue) and then a login: the
    registrations have their own lane, so the login is answered, not refused with 503."""
    fresh_server.env["VAULT_BCRYPT_ROUNDS"] = "10"
    server = fresh_server.start()
    name, _ = server.new_user()
    flood = 100
    conns = [server.connection() for _ in range(flood)]
    for conn in conns:
        conn.connect()
    login = server.connection()
    login.connect()
    statuses: dict[int, int] = {}
    try:
        for n, conn in enumerate(conns):
            body = json.dumps({"username": f"flood{n}", "password": "correct horse battery"})
            conn.request("POST", "/register", body, {"Content-Type": "application/json"})
        for n in reversed(range(flood)):  # until one is refused: the hashing queue is full now
            resp = conns[n].getresponse()
            resp.read()
            statuses[n] = resp.status
            if resp.status == 503:
                break
        body = json.dumps({"username": name, "password": "correct horse battery"})
        login.request("POST", "/login", body, {"Content-Type": "application/json"})
        answer = login.getresponse()
        assert answer.status == 200, answer.read()
        for n, conn in enumerate(conns):
            if n not in statuses:
                resp = conn.getresponse()
                resp.read()
                statuses[n] = resp.status
    finally:
        for conn in [*conns, login]:
            conn.close()
    assert set(statuses.values()) <= {201, 503} and 201 in statuses.values()


def test_a_flood_of_logins_beyond_the_bcrypt_queue_gets_503_over_https(fresh_server: Server) -> None:
    """More logins at once than vault.auth.MAX_PENDING_HASHES (64) may wait for bcrypt: the rest
    are answered 503 with Retry-After at once, the others normally; every request is answered.
    One bcrypt thread at cost 9 drains ~30 hashes a second, while the 90 requests, released
    together, arrive within a fraction of that: the queue is full long before it drains."""
    fresh_server.env.update({"VAULT_BCRYPT_ROUNDS": "9", "VAULT_AUTH_THREADS": "1"})
    server = fresh_server.start()
    flood = 90
    start = threading.Barrier(flood)
    results: list[tuple[int, str | None, bytes]] = []

    def login() -> None:
        conn = server.connection()
        try:
            conn.connect()
            start.wait()
            body = json.dumps({"username": "nobody-" + uuid.uuid4().hex[:8], "password": PASSWORD})
            conn.request("POST", "/login", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            results.append((resp.status, resp.getheader("Retry-After"), resp.read()))
        finally:
            conn.close()

    threads = [threading.Thread(target=login) for _ in range(flood)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == flood
    busy = [r for r in results if r[0] == 503]
    assert busy, "no login was refused: the bcrypt queue is unbounded"
    assert all(
        r == (503, "5", b'{"message": "Too many logins at once: retry shortly", "status": 503}') for r in busy
    )
    assert all(
        r[2] == b'{"message": "Invalid username or password", "status": 401}' for r in results if r[0] != 503
    )
    assert len(results) - len(busy) >= 64  # the queue itself was served
