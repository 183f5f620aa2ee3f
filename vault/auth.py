"""Accounts and tokens: bcrypt password hashes (run off the event loop), HS256 JWT access tokens
and, through vault/tokens.py, refresh tokens.

An access token names its session (``sid``: the refresh-token family it came from) and the
user's token epoch (``epoch``). ``authenticate()`` refuses it once its family is revoked (logout,
refresh-token reuse) or the user's epoch has moved on (log out everywhere, password change):
the epoch is read from the authenticated user row and cached for EPOCH_CACHE_SECONDS, updated
at once by changes made here, so that a change from another process (``run.py admin
reset-password`` beside a running server) takes effect within that time; among the processes
of one server (``shared``) within SHARED_POLL.
"""

import asyncio
import dataclasses
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import bcrypt
import jwt

from vault.errors import (
    Busy,
    ExpiredToken,
    Forbidden,
    IntegrityError,
    InvalidCredentials,
    InvalidField,
    InvalidToken,
    NotFound,
    RevokedToken,
)
from vault.keys import Keyring, row_tag
from vault.rows import USER
from vault.store import AccountStore, User
from vault.tokens import RefreshTokens, check_refresh_field

_DIGITS = re.compile(r"[0-9]{1,19}")
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,31}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (or, in bcrypt 5, refuses) anything longer
ALGORITHM = "HS256"
log = logging.getLogger(__name__)
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "iss", "aud", "sid", "epoch"]
TOKEN_TYPE = "access"  # noqa: S105 (a claim value, not a secret)
DEFAULT_REFRESH_TTL = 30 * 86400
EPOCH_CACHE_SECONDS = 2.0
SHARED_POLL = 0.5  # with several processes: revocations and epochs are at most this old
CHANGE_ATTEMPTS = 3  # compare-and-set rounds for log out everywhere
EPOCH_CACHE_MAX = 10_000  # users whose epoch is cached; the cache is emptied past that
_SESSION_RE = re.compile(r"[0-9a-f]{32}")
INVITE_BYTES = 18  # 144 random bits, 24 URL-safe characters
INVITE_RE = re.compile(r"[A-Za-z0-9_-]{24}")


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    user_id: int
    username: str


@dataclass(frozen=True)
class Access:
    """A verified access token: who, which session (refresh family) and which token epoch."""

    identity: Identity
    session: str
    epoch: int


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


@dataclass(frozen=True)
class TokenPair:
    """What a login, a refresh and a password change answer (lifetimes in seconds)."""

    token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


def check_username(username: object) -> str:
    if not isinstance(username, str) or not username:
        raise InvalidField("Field 'username' is required and must be a non-empty string")
    if not USERNAME_RE.fullmatch(username):
        raise InvalidField(
            "Field 'username' must be 3-32 characters: letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return username


def check_password(password: object, field: str = "password") -> bytes:
    if not isinstance(password, str) or not password:
        raise InvalidField(f"Field '{field}' is required and must be a non-empty string")
    raw = password.encode("utf-8")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidField(f"Field '{field}' must be at least {MIN_PASSWORD_CHARS} characters")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise InvalidField(f"Field '{field}' must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    if b"\x00" in raw:
        raise InvalidField(f"Field '{field}' must not contain NUL characters")
    return raw


USER_ID_BITS = 62
MAX_PENDING_HASHES = 64  # about 16 s of bcrypt at cost 12 on 2 threads
MAX_PENDING_REGISTRATIONS = 8  # waiting for the registration lane (one bcrypt thread at a time)


def invite_hash(keyring: Keyring, code: str) -> bytes:
    """What an invite code is stored as: keyed, so a row cannot be added without the master key."""
    return row_tag(keyring, keyring.primary, b"invite", code)


class Authenticator:
    """Registers users, checks passwords and issues and verifies tokens."""

    def __init__(
        self,
        store: AccountStore,
        secret: bytes,
        keyring: Keyring,
        *,
        rounds: int,
        ttl: int,
        issuer: str,
        audience: str,
        executor: Executor,
        refresh_ttl: int = DEFAULT_REFRESH_TTL,
        registration: str = "open",
        shared: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock  # for the epoch cache's age
        self._registration = registration
        # Several processes: what another one revoked is read at least every SHARED_POLL seconds.
        poll = SHARED_POLL if shared else None
        self._refresh = RefreshTokens(store, keyring, ttl=refresh_ttl, access_ttl=ttl, poll=poll)
        self._epoch_cache = SHARED_POLL if shared else EPOCH_CACHE_SECONDS
        self._epochs: dict[int, tuple[int | None, float]] = {}  # user id -> (epoch, read at)
        self._epoch_changes = 0
        self._keyring = keyring
        self._pending = 0
        self._registering = 0
        self._register_lane = asyncio.Semaphore(1)
        self._secret = secret
        self._rounds = rounds
        self._ttl = ttl
        self._issuer = issuer
        self._audience = audience
        self._executor = executor
        # Compared against when the user does not exist, so both failures cost one bcrypt.
        self._dummy_hash = bcrypt.hashpw(b"dummy password", bcrypt.gensalt(rounds))

    @property
    def pending_hashes(self) -> int:
        """bcrypt calls queued or running (the login queue's depth)."""
        return self._pending

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run a bcrypt call on its own pool; past MAX_PENDING_HASHES waiting, answer 503 at
        once instead of queueing without bound (a flood of logins would otherwise delay every
        honest one behind it)."""
        if self._pending >= MAX_PENDING_HASHES:
            raise Busy("Too many logins at once: retry shortly")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._pending -= 1

    async def register(self, username: object, password: object, invite: bytes | None = None) -> None:
        """A new account (whatever the registration setting: also an administrator's command),
        using up the invite code hashed as ``invite`` in the same transaction if given. Its
        bcrypt runs in the registration lane: at most one thread at a time and
        MAX_PENDING_REGISTRATIONS waiting (503 beyond), apart from the logins' queue, so a flood
        of registrations can never starve logins."""
        name = check_username(username)
        raw = check_password(password)
        if self._registering >= MAX_PENDING_REGISTRATIONS:
            raise Busy("Too many registrations at once: retry shortly")
        self._registering += 1
        try:
            async with self._register_lane:
                hashed = await asyncio.get_running_loop().run_in_executor(
                    self._executor, bcrypt.hashpw, raw, bcrypt.gensalt(self._rounds)
                )
        finally:
            self._registering -= 1
        user_id = secrets.randbits(USER_ID_BITS) + 1
        await self._store.create_user(USER.seal(self._keyring, User(user_id, name, hashed, 0, b"")), invite)

    async def sign_up(self, username: object, password: object, invite: object) -> None:
        """``POST /register`` under the ``registration`` setting: open, invite (a valid unused
        code is used up only if the account is created) or closed."""
        if invite is not None and not isinstance(invite, str):
            raise InvalidField("Field 'invite' must be a string")
        if self._registration == "closed":
            raise Forbidden("Registration is closed: ask an administrator for an account")
        if self._registration == "open":
            await self.register(username, password)
            return
        if not isinstance(invite, str) or not INVITE_RE.fullmatch(invite):
            raise Forbidden("Registration needs an invite code (field 'invite')")
        await self.register(username, password, invite_hash(self._keyring, invite))

    async def make_invite(self, ttl: int) -> str:
        """A new single-use invite code valid for ``ttl`` seconds; only its keyed hash is kept."""
        code = secrets.token_urlsafe(INVITE_BYTES)
        await self._store.add_invite(
            invite_hash(self._keyring, code), self._keyring.primary, time.time() + ttl
        )
        return code

    async def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable an account (its tokens die, its files stay) or enable it again."""
        for _ in range(CHANGE_ATTEMPTS):
            user = await self.find_user(username)
            if user is None:
                raise NotFound(f"no user {username!r}")
            if await self._end_sessions(dataclasses.replace(user, disabled=int(disabled)), was=user):
                return
        raise Busy("The account is changing: retry shortly")

    async def reset_password(self, username: str, password: object) -> None:
        """Set a new password (an administrator's command); every token of the user dies."""
        user = await self._row_to_change(username)
        hashed = await self._run(bcrypt.hashpw, check_password(password), bcrypt.gensalt(self._rounds))
        for _ in range(CHANGE_ATTEMPTS):
            if await self._end_sessions(user, hashed):  # a compare-and-set: read again if it moved
                return
            user = await self._row_to_change(username)
        raise Busy("The account is changing: retry shortly")

    async def _row_to_change(self, username: str) -> User:
        """The account's row, for an administrator's change; a row that fails its integrity
        check is refused, not sealed again: sealing it would make a database writer's edit (an
        epoch set back, an account enabled again) authentic."""
        user = await self._store.get_user(username) if USERNAME_RE.fullmatch(username) else None
        if user is None:
            raise NotFound("User not found")
        if not self._authentic(user):
            log.error("account row %d failed its integrity check", user.id)
            raise IntegrityError()
        return user

    async def login(self, username: object, password: object) -> TokenPair:
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise InvalidField("Fields 'username' and 'password' are required non-empty strings")
        raw = password.encode("utf-8")
        user = await self._store.get_user(username) if USERNAME_RE.fullmatch(username) else None
        if user is not None and not self._authentic(user):
            log.error("account row %d failed its integrity check", user.id)
            user = None  # answered like a wrong password; the log says why
        hashed = user.password_hash if user else self._dummy_hash
        if not await self._password_matches(raw, hashed) or user is None:
            raise InvalidCredentials()
        if user.disabled:  # said only to whoever knows the password
            raise Forbidden("Account disabled: ask an administrator")
        await self._store.set_last_login(user.id, time.time())
        return await self._start(Identity(user.id, user.username), user.token_epoch)

    async def refresh(self, token: object) -> TokenPair:
        """A new access token and a new refresh token for a refresh token, which is used up."""
        row = await self._refresh.redeem(token)
        user = await self.user_by_id(row.user_id)
        if user is None or user.token_epoch != row.epoch or user.disabled:
            raise RevokedToken()
        successor = await self._refresh.rotate(row)
        access = self.issue(Identity(user.id, user.username), epoch=row.epoch, session=row.family)
        return TokenPair(access.token, access.expires_in, successor, self._refresh.ttl)

    async def authenticate(self, token: str) -> Access:
        """A valid access token that is not revoked: its family is not, and its epoch is the
        user's current one (which also means that the account still exists and verifies)."""
        access = self.decode(token)
        if await self._refresh.family_revoked(access.session):
            raise RevokedToken()
        epoch = await self._epoch(access.identity.user_id)
        if epoch is None:
            raise InvalidToken()
        if epoch != access.epoch:
            raise RevokedToken()
        return access

    async def logout(self, access: Access, refresh_token: object = None) -> None:
        """End the session of ``access``, and that of ``refresh_token`` if it is the caller's."""
        families = {access.session}
        if refresh_token is not None:
            row = await self._refresh.find(check_refresh_field(refresh_token))
            if row is not None and row.user_id == access.identity.user_id:
                families.add(row.family)
        for family in sorted(families):
            await self._refresh.revoke(access.identity.user_id, family)

    async def logout_all(self, identity: Identity) -> None:
        """Every access and refresh token of the user dies at once."""
        for _ in range(CHANGE_ATTEMPTS):
            user = await self.user_by_id(identity.user_id)
            if user is None:
                raise InvalidToken()
            if await self._end_sessions(user):
                return
        raise Busy("The account is changing: retry shortly")

    async def change_password(self, identity: Identity, old: object, new: object) -> TokenPair:
        """Check the current password, set the new one, end every session and start a new one."""
        if not isinstance(old, str) or not old:
            raise InvalidField("Field 'old_password' is required and must be a non-empty string")
        raw = check_password(new, "new_password")
        user = await self.user_by_id(identity.user_id)
        if user is None:
            raise InvalidToken()
        if not await self._password_matches(old.encode("utf-8"), user.password_hash):
            raise InvalidCredentials("Wrong password: 'old_password' is not the current one")
        changed = await self._end_sessions(user, await self.hash_secret(raw))
        if changed is None:  # the row changed meanwhile: another change ended this session
            raise RevokedToken()
        return await self._start(identity, changed.token_epoch)

    async def find_user(self, username: str) -> User | None:
        """An account whose row verifies, or None."""
        user = await self._store.get_user(username) if USERNAME_RE.fullmatch(username) else None
        return user if user is not None and self._authentic(user) else None

    async def user_by_id(self, user_id: int) -> User | None:
        user = await self._store.get_user_by_id(user_id)
        return user if user is not None and self._authentic(user) else None

    async def hash_secret(self, secret: bytes) -> bytes:
        """bcrypt at the configured cost, on the bounded pool (link passwords use it too)."""
        return bytes(await self._run(bcrypt.hashpw, secret, bcrypt.gensalt(self._rounds)))

    async def check_secret(self, secret: bytes, hashed: bytes) -> bool:
        if len(secret) > MAX_PASSWORD_BYTES or b"\x00" in secret:
            await self._run(bcrypt.checkpw, b"x", hashed)  # the same cost either way
            return False
        return bool(await self._run(bcrypt.checkpw, secret, hashed))

    async def _password_matches(self, raw: bytes, hashed: bytes) -> bool:
        """One bcrypt check whatever the input (over 72 bytes or with NUL never matches)."""
        ok = len(raw) <= MAX_PASSWORD_BYTES and b"\x00" not in raw
        return (
            bool(await self._run(bcrypt.checkpw, raw[:MAX_PASSWORD_BYTES].replace(b"\x00", b""), hashed))
            and ok
        )

    def _authentic(self, user: User) -> bool:
        return USER.authentic(self._keyring, user)

    # ------------------------------------------------------------------ sessions and epochs

    async def _start(self, identity: Identity, epoch: int) -> TokenPair:
        """A new session: a refresh-token family and an access token naming it."""
        refresh, family = await self._refresh.start(identity.user_id, epoch)
        access = self.issue(identity, epoch=epoch, session=family)
        return TokenPair(access.token, access.expires_in, refresh, self._refresh.ttl)

    def _bumped(self, user: User, password_hash: bytes | None = None) -> User:
        """The row with the next token epoch (and a new password hash), tagged."""
        hashed = user.password_hash if password_hash is None else password_hash
        return USER.seal(
            self._keyring, dataclasses.replace(user, password_hash=hashed, token_epoch=user.token_epoch + 1)
        )

    async def _end_sessions(
        self, user: User, password_hash: bytes | None = None, was: User | None = None
    ) -> User | None:
        """Raise the epoch (every access token dies), then revoke every refresh family; None,
        changing nothing, if the row is no longer ``was`` (default: ``user``)."""
        bumped = self._bumped(user, password_hash)
        if not await self._store.replace_user(was or user, bumped):
            return None
        self._epoch_changes += 1
        self._epochs[user.id] = (bumped.token_epoch, self._clock())
        await self._refresh.revoke(user.id, None)
        return bumped

    async def _epoch(self, user_id: int) -> int | None:
        """The user's token epoch from the verified row (None: no such account, or its row
        fails its check), cached for EPOCH_CACHE_SECONDS (SHARED_POLL when ``shared``)."""
        now = self._clock()
        cached = self._epochs.get(user_id)
        if cached is not None and now - cached[1] < self._epoch_cache:
            return cached[0]
        changes = self._epoch_changes
        user = await self._store.get_user_by_id(user_id)
        if user is not None and not self._authentic(user):
            log.error("account row %d failed its integrity check", user.id)
            user = None
        epoch = None if user is None or user.disabled else user.token_epoch
        if changes == self._epoch_changes:  # nothing changed while we read: the value is current
            if len(self._epochs) >= EPOCH_CACHE_MAX:
                self._epochs.clear()
            self._epochs[user_id] = (epoch, now)
        return epoch

    # ------------------------------------------------------------------ access tokens (JWT)

    def issue(
        self, identity: Identity, now: float | None = None, *, epoch: int = 0, session: str | None = None
    ) -> IssuedToken:
        iat = int(time.time() if now is None else now)
        claims = {
            "sub": str(identity.user_id),
            "name": identity.username,
            "typ": TOKEN_TYPE,
            "iat": iat,
            "exp": iat + self._ttl,
            "jti": uuid.uuid4().hex,
            "iss": self._issuer,
            "aud": self._audience,
            "sid": session or uuid.uuid4().hex,
            "epoch": epoch,
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), self._ttl)

    def verify(self, token: str) -> Identity:
        """Signature and claims only; revocation needs ``authenticate()``."""
        return self.decode(token).identity

    def decode(self, token: str) -> Access:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise ExpiredToken() from None
        except jwt.InvalidTokenError:
            raise InvalidToken() from None
        sub, name, sid, epoch = claims.get("sub"), claims.get("name"), claims.get("sid"), claims.get("epoch")
        if (
            claims.get("typ") != TOKEN_TYPE
            or not isinstance(name, str)
            or not _DIGITS.fullmatch(str(sub))
            or not isinstance(sid, str)
            or not _SESSION_RE.fullmatch(sid)
            or type(epoch) is not int
            or not 0 <= epoch < 2**62
        ):
            raise InvalidToken()
        return Access(Identity(int(str(sub)), name), sid, epoch)
