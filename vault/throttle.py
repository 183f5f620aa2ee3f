"""Login throttling: backoff per account and per client address, in memory.

The rule. Failures are counted under two keys, the account (the username as given, lower-cased,
whether or not such a user exists) and the client address (an IPv6 address by its /64, since one
host usually holds a whole /64). A key with ``free`` failures or more is locked for
``2 ** (failures - free)`` seconds after its last failure (1 s, 2 s, 4 s ...), never longer than
``max_backoff``. A login is refused with TooManyAttempts (429, Retry-After) while either key is
locked, before bcrypt runs, so a locked attempt costs no CPU and, answering the same whatever the
password, tells nothing. A refused attempt is not a failure: it neither checks the password nor
extends the lock. Attempts in flight count as failures to come, so that many parallel requests
cannot all slip through one open window: a key allows at most ``free`` attempts at once, and one
at a time once it is in backoff. A successful login clears the account's count, not the
address's (or an attacker could clear their address by logging in to their own account between
guesses). A key is forgotten once it has gone ``max_backoff`` seconds past the end of its lock
without a failure, and at most ``max_keys`` keys of each kind are kept (the least recently
failed dropped first), so nothing is permanent and memory stays bounded.

The trade-off. The account key is what stops guessing from many addresses, and it also locks the
account's owner out while it is locked. Because the windows are capped, an attacker cannot lock
anyone out for longer than ``max_backoff`` once they stop; while they keep going, the owner gets
in by being first to try after a window ends, and an attacker on one address is slowed just as
much by their address key. Until a cap-length window runs out, anyone trying the account gets
429 (documented in README, Security model).

The client address is the socket's peer, unless the peer is one of the configured trusted
proxies: then it is the last address in X-Forwarded-For (the one that proxy saw), which a client
cannot forge past a proxy that appends to the header. :class:`LoginThrottle` keeps the state in
this process (one server process) and loses it on restart; :class:`SharedLoginThrottle` applies
the same rules on the shared state (vault/store.py StateStore) of several processes.
"""

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from vault.errors import ConfigError, InvalidCredentials, TooManyAttempts, TooManyRegistrations
from vault.store import Hold, StateStore

log = logging.getLogger(__name__)

MAX_KEYS = 100_000  # per kind; an entry is ~200 bytes
MAX_KEY_CHARS = 64  # usernames are at most 32 characters; longer names cannot exist anyway
IPV6_PREFIX = 64
BUSY_RETRY = 1  # Retry-After when the key's turn is taken by an attempt in flight
MAX_EXPONENT = 40  # 2**40 s is past any cap; keeps the arithmetic small

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or networks (``10.0.0.1, 192.168.0.0/24``); '' is none."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise ConfigError(
                f"config key 'trusted_proxies': not an IP address or network: {item!r}"
            ) from None
    return tuple(networks)


def client_address(trusted: tuple[Network, ...], peer: str, forwarded_for: str | None) -> str:
    """The socket's ``peer``, or the last X-Forwarded-For entry when the peer is ``trusted``."""
    peer_ip = _ip(peer)
    if forwarded_for and peer_ip is not None and any(peer_ip in net for net in trusted):
        forwarded = _ip(forwarded_for.rsplit(",", 1)[-1])
        if forwarded is not None:
            return str(forwarded)
    return peer


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_key(address: str) -> str:
    """The throttling key of a client address: IPv4 as is, IPv6 by its /64."""
    ip = _ip(address)
    if ip is None:
        return address[:MAX_KEY_CHARS]
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def lock_seconds(failures: int, free: int, max_backoff: int) -> int:
    """How long a key is locked after its last failure: 0 below ``free`` failures, then 1 s,
    2 s, 4 s ..., never more than ``max_backoff``."""
    if failures < free:
        return 0
    return int(min(max_backoff, 2 ** min(failures - free, MAX_EXPONENT)))


@dataclass
class _Entry:
    failures: int = 0
    last: float = 0.0  # clock time of the last failure
    pending: int = 0  # attempts that passed check() and have not ended yet


class _Keys:
    """Failure counts for one kind of key, oldest failure first."""

    def __init__(self, kind: str, free: int, max_backoff: int, max_keys: int) -> None:
        self._kind = kind
        self._free = free
        self._max_backoff = max_backoff
        self._max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def window(self, failures: int) -> int:
        return lock_seconds(failures, self._free, self._max_backoff)

    def wait(self, key: str, now: float) -> float:
        """Seconds before ``key`` may try again (0: now); forgets the key if it has expired."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        if self._expired(entry, now):
            del self._entries[key]
            return 0.0
        wait = entry.last + self.window(entry.failures) - now
        if wait <= 0 and entry.pending and entry.failures + entry.pending >= self._free:
            return BUSY_RETRY
        return max(wait, 0.0)

    def begin(self, key: str, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None:
            self._make_room(now)
            entry = self._entries[key] = _Entry(last=now)
        entry.pending += 1

    def end(self, key: str, now: float, *, failed: bool = False, reset: bool = False) -> None:
        entry = self._entries.get(key)
        if entry is None:  # dropped to make room while the attempt ran
            if not failed:
                return
            self._make_room(now)
            entry = self._entries[key] = _Entry()
        entry.pending = max(entry.pending - 1, 0)
        if failed:
            entry.failures += 1
            entry.last = now
            self._entries.move_to_end(key)
            if entry.failures == self._free:
                # The address, never the account name: people type passwords into that field.
                who = repr(key) if self._kind == "address" else "an account"
                log.warning("login throttled for %s after %d failures", who, entry.failures)
        elif reset:
            entry.failures = 0
        if entry.failures == 0 and entry.pending == 0:
            del self._entries[key]

    def _expired(self, entry: _Entry, now: float) -> bool:
        return entry.pending == 0 and now >= entry.last + self.window(entry.failures) + self._max_backoff

    def _make_room(self, now: float) -> None:
        """Forget expired keys from the old end; past ``max_keys``, drop the oldest anyway."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if not (self._expired(entry, now) or len(self._entries) >= self._max_keys):
                break
            del self._entries[key]


REGISTRATION_WINDOW = 3600  # seconds over which registrations are counted


class RegistrationLimit:
    """At most ``per_address`` registration attempts per client address (IPv6 by its /64) and
    ``total`` from everyone, per hour counted from the first of a window (0: no limit). Every
    attempt counts, whatever its outcome, before any bcrypt runs; refused ones do not."""

    def __init__(
        self,
        per_address: int,
        total: int,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_address, self._total, self._max_keys, self._clock = per_address, total, max_keys, clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (start, count)

    def check(self, address: str) -> None:
        """Count one attempt from ``address``, or raise TooManyRegistrations."""
        now = self._clock()
        keys = (("*", self._total), (address_key(address), self._per_address))
        limited = [(key, limit, *self._count(key, now)) for key, limit in keys if limit]
        for _, limit, start, count in limited:
            if count >= limit:
                raise TooManyRegistrations(max(math.ceil(start + REGISTRATION_WINDOW - now), 1))
        for key, _, start, count in limited:
            self._windows[key] = (start, count + 1)
            self._windows.move_to_end(key)
        while len(self._windows) > self._max_keys:
            self._windows.popitem(last=False)

    def _count(self, key: str, now: float) -> tuple[float, int]:
        start, count = self._windows.get(key, (now, 0))
        return (now, 0) if now >= start + REGISTRATION_WINDOW else (start, count)


class LoginThrottle:
    """Refuses logins for a while after repeated failures (rules: module docstring)."""

    def __init__(
        self,
        *,
        free: int,
        max_backoff: int,
        trusted_proxies: str = "",
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        register_per_address: int = 0,
        register_per_hour: int = 0,
    ) -> None:
        if free < 1 or max_backoff < 1 or max_keys < 1:
            raise ValueError("free, max_backoff and max_keys must be positive")
        self.registrations = RegistrationLimit(register_per_address, register_per_hour, max_keys, clock)
        self._accounts = _Keys("account", free, max_backoff, max_keys)
        self._addresses = _Keys("address", free, max_backoff, max_keys)
        self._trusted = parse_networks(trusted_proxies)
        self._clock = clock

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The socket's ``peer``, or the last X-Forwarded-For entry when the peer is trusted."""
        return client_address(self._trusted, peer, forwarded_for)

    def check(self, account: str, address: str) -> None:
        """Raise TooManyAttempts if either key is locked; otherwise the attempt has begun and
        must end in failed(), succeeded() or abandoned()."""
        now = self._clock()
        acct, addr = _account_key(account), address_key(address)
        wait = max(self._accounts.wait(acct, now), self._addresses.wait(addr, now))
        if wait > 0:
            raise TooManyAttempts(max(math.ceil(wait), 1))
        self._accounts.begin(acct, now)
        self._addresses.begin(addr, now)

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        self._accounts.end(_account_key(account), now, failed=True)
        self._addresses.end(address_key(address), now, failed=True)

    def succeeded(self, account: str, address: str) -> None:
        now = self._clock()
        self._accounts.end(_account_key(account), now, reset=True)
        self._addresses.end(address_key(address), now)

    def abandoned(self, account: str, address: str) -> None:
        """The attempt ended without a verdict on the password (a bad field, a busy server)."""
        now = self._clock()
        self._accounts.end(_account_key(account), now)
        self._addresses.end(address_key(address), now)

    @contextmanager
    def attempt(self, account: str, address: str) -> Iterator[None]:
        """check(), then failed() if the body raises InvalidCredentials, succeeded() if it
        returns, abandoned() on any other exception."""
        self.check(account, address)
        try:
            yield
        except InvalidCredentials:
            self.failed(account, address)
            raise
        except BaseException:
            self.abandoned(account, address)
            raise
        self.succeeded(account, address)

    @asynccontextmanager
    async def guard(self, account: str, address: str) -> AsyncIterator[None]:
        """``attempt`` for the HTTP side, which also drives the shared throttle (Throttle)."""
        with self.attempt(account, address):
            yield

    async def check_registration(self, address: str) -> None:
        self.registrations.check(address)

    def tracked(self) -> tuple[int, int]:
        """(accounts, addresses) currently remembered."""
        return len(self._accounts), len(self._addresses)


def _account_key(account: str) -> str:
    return account.lower()[:MAX_KEY_CHARS]


class Throttle(Protocol):
    """What the HTTP side asks of a login throttle, in one process or several."""

    def client_address(self, peer: str, forwarded_for: str | None) -> str: ...

    def guard(self, account: str, address: str) -> AbstractAsyncContextManager[None]:
        """check(), then failed() if the body raises InvalidCredentials, succeeded() if it
        returns, abandoned() on any other exception (LoginThrottle.attempt)."""

    async def check_registration(self, address: str) -> None:
        """Count one registration attempt from ``address``, or raise TooManyRegistrations."""


ACCOUNT, ADDRESS = "login-account", "login-address"  # counters: failures and the last one's time
PENDING = "login-pending"  # holds: attempts in flight, keyed by the counter's kind and key
REGISTER = "register"  # counters: registrations in the window (stamp: when the window began)
CAS_ROUNDS = 20


class SharedLoginThrottle:
    """The rules of :class:`LoginThrottle` (module docstring) on the shared state, so that they
    hold in total across the processes serving one vault: failures are counters (count, time of
    the last failure, forgotten ``max_backoff`` after the lock ends), attempts in flight are
    holds (at most ``free - failures`` at once, one once in backoff; a process that dies gives
    its own back with its lease), registrations are counters per window. ``clock`` is wall time
    (the state's expiry uses it too)."""

    def __init__(
        self,
        state: StateStore,
        *,
        free: int,
        max_backoff: int,
        trusted_proxies: str = "",
        register_per_address: int = 0,
        register_per_hour: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if free < 1 or max_backoff < 1:
            raise ValueError("free and max_backoff must be positive")
        self._state, self._clock = state, clock
        self._free, self._max_backoff = free, max_backoff
        self._trusted = parse_networks(trusted_proxies)
        self._register = ((REGISTER, "*", register_per_hour), (REGISTER, "", register_per_address))

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        return client_address(self._trusted, peer, forwarded_for)

    @asynccontextmanager
    async def guard(self, account: str, address: str) -> AsyncIterator[None]:
        keys = ((ACCOUNT, _account_key(account)), (ADDRESS, address_key(address)))
        holds = await self._begin(keys)
        try:
            yield
        except InvalidCredentials:
            await self._end(keys, holds, failed=True)
            raise
        except BaseException:
            await self._end(keys, holds)
            raise
        await self._end(keys, holds, reset=True)

    async def _begin(self, keys: tuple[tuple[str, str], ...]) -> list[Hold]:
        """Refuse (TooManyAttempts) while either key is locked, else count the attempt in flight
        under both; each hold names the version of the failures it was allowed on."""
        holds: list[Hold] = []
        try:
            for kind, key in keys:
                holds.append(await self._take(kind, key))
        except BaseException:
            for hold in holds:
                await self._state.release(hold)
            raise
        return holds

    async def _take(self, kind: str, key: str) -> Hold:
        for _ in range(CAS_ROUNDS):
            counter = await self._state.counter(kind, key)
            now = self._clock()
            # a counter never set or expired is Counter(): stamp 0, count 0, so no wait
            wait = counter.stamp + lock_seconds(counter.count, self._free, self._max_backoff) - now
            if wait > 0:
                raise TooManyAttempts(max(math.ceil(wait), 1))
            in_flight = max(self._free - counter.count, 1)  # one at a time once in backoff
            hold = await self._state.hold(PENDING, f"{kind}:{key}", 1, in_flight, version=None)
            if hold is None:
                raise TooManyAttempts(BUSY_RETRY)
            if (await self._state.counter(kind, key)).version == counter.version:
                return hold
            await self._state.release(hold)  # a failure was counted meanwhile: decide again
        raise TooManyAttempts(BUSY_RETRY)

    async def _end(
        self,
        keys: tuple[tuple[str, str], ...],
        holds: list[Hold],
        *,
        failed: bool = False,
        reset: bool = False,
    ) -> None:
        for (kind, key), hold in zip(keys, holds, strict=True):
            try:
                if failed:
                    await self._fail(kind, key)
                elif reset and kind == ACCOUNT:  # never the address: see the module docstring
                    await self._reset(kind, key)
            finally:
                await self._state.release(hold)

    async def _fail(self, kind: str, key: str) -> None:
        for _ in range(CAS_ROUNDS):
            counter = await self._state.counter(kind, key)
            now = self._clock()
            failures = counter.count + 1
            expires = now + lock_seconds(failures, self._free, self._max_backoff) + self._max_backoff
            if await self._state.set_counter(
                kind, key, failures, now, version=counter.version, expires=expires
            ):
                if failures == self._free:
                    who = repr(key) if kind == ADDRESS else "an account"
                    log.warning("login throttled for %s after %d failures", who, failures)
                return
        log.error("login failure not counted: %s changed %d times meanwhile", kind, CAS_ROUNDS)

    async def _reset(self, kind: str, key: str) -> None:
        counter = await self._state.counter(kind, key)
        if counter.count:
            await self._state.set_counter(kind, key, 0, 0.0, version=counter.version, expires=self._clock())

    async def check_registration(self, address: str) -> None:
        # The keys this attempt is still to be counted under: a round that counts it under one
        # key and loses a race on the other (another process counted meanwhile) retries the
        # other only, so no attempt is counted twice; one refused after all is given back
        # under the keys it was counted under, so a refusal costs no other attempt its turn.
        left = [(kind, key or address_key(address), limit) for kind, key, limit in self._register if limit]
        counted: list[tuple[str, str, float]] = []
        try:
            for _ in range(CAS_ROUNDS):
                now = self._clock()
                limited = []
                for kind, key, limit in left:
                    counter = await self._state.counter(kind, key)
                    start, count = (counter.stamp, counter.count) if counter.version else (now, 0)
                    if count >= limit:
                        raise TooManyRegistrations(max(math.ceil(start + REGISTRATION_WINDOW - now), 1))
                    limited.append((kind, key, limit, start, count, counter.version))
                for kind, key, limit, start, count, version in limited:
                    expires = start + REGISTRATION_WINDOW
                    if await self._state.set_counter(
                        kind, key, count + 1, start, version=version, expires=expires
                    ):
                        left.remove((kind, key, limit))
                        counted.append((kind, key, start))
                if not left:
                    return
            raise TooManyRegistrations(BUSY_RETRY)
        except TooManyRegistrations:
            for kind, key, start in counted:
                await self._uncount(kind, key, start)
            raise

    async def _uncount(self, kind: str, key: str, start: float) -> None:
        """Give back one registration counted under (kind, key) in the window begun at
        ``start``; nothing once that window has ended (its count is gone with it)."""
        for _ in range(CAS_ROUNDS):
            counter = await self._state.counter(kind, key)
            if not counter.version or counter.stamp != start or not counter.count:
                return
            if await self._state.set_counter(
                kind,
                key,
                counter.count - 1,
                start,
                version=counter.version,
                expires=start + REGISTRATION_WINDOW,
            ):
                return
