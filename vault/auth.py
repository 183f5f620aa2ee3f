"""Accounts and tokens: bcrypt password hashes (run off the event loop) and HS256 JWTs."""

import asyncio
import hmac
import logging
import re
import secrets
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import bcrypt
import jwt

from vault.errors import (
    Busy,
    ExpiredToken,
    IntegrityError,
    InvalidCredentials,
    InvalidField,
    InvalidToken,
    NotFound,
)
from vault.keys import Keyring, row_tag
from vault.store import Store, User

_DIGITS = re.compile(r"[0-9]{1,19}")
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,31}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (or, in bcrypt 5, refuses) anything longer
ALGORITHM = "HS256"
log = logging.getLogger(__name__)
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "iss", "aud"]
TOKEN_TYPE = "access"  # noqa: S105 (a claim value, not a secret)


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    user_id: int
    username: str


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


def check_username(username: object) -> str:
    if not isinstance(username, str) or not username:
        raise InvalidField("Field 'username' is required and must be a non-empty string")
    if not USERNAME_RE.fullmatch(username):
        raise InvalidField(
            "Field 'username' must be 3-32 characters: letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return username


def check_password(password: object) -> bytes:
    if not isinstance(password, str) or not password:
        raise InvalidField("Field 'password' is required and must be a non-empty string")
    raw = password.encode("utf-8")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidField(f"Field 'password' must be at least {MIN_PASSWORD_CHARS} characters")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise InvalidField(f"Field 'password' must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    if b"\x00" in raw:
        raise InvalidField("Field 'password' must not contain NUL characters")
    return raw


USER_ID_BITS = 62
MAX_PENDING_HASHES = 64  # about 16 s of bcrypt at cost 12 on 2 threads


def user_tag(keyring: Keyring, key_id: int, user_id: int, username: str, password_hash: bytes) -> bytes:
    """HMAC over an account row, so that editing it (say, a password hash swapped in by someone
    who can write the database) is detected before the hash is used."""
    return row_tag(keyring, key_id, b"user", key_id, user_id, username, password_hash)


class Authenticator:
    """Registers users, checks passwords and issues and verifies tokens."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        keyring: Keyring,
        *,
        rounds: int,
        ttl: int,
        issuer: str,
        audience: str,
        executor: Executor,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._pending = 0
        self._secret = secret
        self._rounds = rounds
        self._ttl = ttl
        self._issuer = issuer
        self._audience = audience
        self._executor = executor
        # Compared against when the user does not exist, so both failures cost one bcrypt.
        self._dummy_hash = bcrypt.hashpw(b"dummy password", bcrypt.gensalt(rounds))

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

    async def register(self, username: object, password: object) -> None:
        name = check_username(username)
        raw = check_password(password)
        hashed = await self._run(bcrypt.hashpw, raw, bcrypt.gensalt(self._rounds))
        user_id, key_id = secrets.randbits(USER_ID_BITS) + 1, self._keyring.primary
        tag = user_tag(self._keyring, key_id, user_id, name, hashed)
        await self._store.create_user(User(user_id, name, hashed, key_id, tag))

    async def reset_password(self, username: str, password: object) -> None:
        """Set a new password (an administrator's command)."""
        user = await self._store.get_user(username)
        if user is None:
            raise NotFound("User not found")
        hashed = await self._run(bcrypt.hashpw, check_password(password), bcrypt.gensalt(self._rounds))
        key_id = self._keyring.primary
        tag = user_tag(self._keyring, key_id, user.id, user.username, hashed)
        await self._store.update_user(User(user.id, user.username, hashed, key_id, tag))

    async def login(self, username: object, password: object) -> IssuedToken:
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise InvalidField("Fields 'username' and 'password' are required non-empty strings")
        raw = password.encode("utf-8")
        user = await self._store.get_user(username) if USERNAME_RE.fullmatch(username) else None
        if user is not None and not self._authentic(user):
            log.error("account row %d failed its integrity check", user.id)
            user = None  # answered like a wrong password; the log says why
        hashed = user.password_hash if user else self._dummy_hash
        ok = len(raw) <= MAX_PASSWORD_BYTES and b"\x00" not in raw
        ok = await self._run(bcrypt.checkpw, raw[:MAX_PASSWORD_BYTES].replace(b"\x00", b""), hashed) and ok
        if user is None or not ok:
            raise InvalidCredentials()
        return self.issue(Identity(user.id, user.username))

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

    def _authentic(self, user: User) -> bool:
        try:
            expected = user_tag(self._keyring, user.key_id, user.id, user.username, user.password_hash)
        except IntegrityError:
            return False
        return hmac.compare_digest(expected, user.tag)

    def issue(self, identity: Identity, now: float | None = None) -> IssuedToken:
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
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), self._ttl)

    def verify(self, token: str) -> Identity:
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
        sub, name = claims.get("sub"), claims.get("name")
        if claims.get("typ") != TOKEN_TYPE or not isinstance(name, str) or not _DIGITS.fullmatch(str(sub)):
            raise InvalidToken()
        return Identity(int(str(sub)), name)
