"""Login throttling: vault.throttle with a fake clock, then /login over HTTPS."""

import json
import sqlite3
import threading
import time
import uuid

import pytest

from tests.server import Response, Server
from vault.config import load_settings
from vault.errors import Busy, ConfigError, InvalidCredentials, TooManyAttempts, TooManyRegistrations
from vault.throttle import MAX_KEYS, LoginThrottle, RegistrationLimit, address_key, parse_networks

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
    assert throttle.client_address("10.0.0.2", "203.0.113.5") == "10.0.0.2"  # not trusted


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert parse_networks("") == ()
    assert len(parse_networks("10.0.0.1,::1, 192.168.0.0/16")) == 3
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
    limit.check("10.0.0.1")


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
