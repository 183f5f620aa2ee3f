"""Refresh tokens: opaque, rotated on every use, revoked a whole family at a time.

A login starts a *family* (one session). Its refresh token is 256 random bits, given to the
client once and stored only as its SHA-256. Using it rotates it: in one transaction the row is
marked used and a new token of the same family, with a full term, is inserted. A used token
presented again means that two parties hold the family (the client and whoever copied the
token), so the whole family is revoked and the caller gets 401; the next refresh by the other
party fails too. Access tokens name their family (the ``sid`` claim), so revoking a family ends
its access tokens at once: the revoked families are kept in memory for as long as an access
token of theirs could live, and reloaded from the database after a restart. With several
processes (``poll``), each reads the families revoked since its last look at most every
``poll`` seconds, so a logout in one reaches the others within that time.

Every row carries a tag over all of its columns (``used`` and ``revoked`` included), rewritten
with them under the primary master key, so that clearing a row's ``revoked`` without the master
key makes the row fail its check (docs/FORMAT.md, Accounts).
"""

import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Callable

from vault.errors import ExpiredToken, InvalidField, InvalidToken, RevokedToken
from vault.keys import Keyring
from vault.rows import REFRESH
from vault.store import AccountStore, RefreshToken

log = logging.getLogger(__name__)

REFRESH_BYTES = 32  # 256 bits; token_urlsafe gives 43 characters
FAMILY_BYTES = 16
MAX_REFRESH_CHARS = 256  # longer is not one of ours: not even hashed
REVOKED_PRUNE_AT = 10_000  # remembered families before expired ones are swept
POLL_OVERLAP = 10.0  # seconds each poll reads again: a revocation is stamped before it commits


def refresh_id(token: str) -> bytes:
    """The stored id of a refresh token: its SHA-256 (the token has 256 bits: no salt needed)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def check_refresh_field(token: object) -> str:
    if not isinstance(token, str) or not token:
        raise InvalidField("Field 'refresh_token' is required and must be a non-empty string")
    return token


class RefreshTokens:
    """Issues, rotates and revokes refresh tokens; answers whether a family is revoked."""

    def __init__(
        self,
        store: AccountStore,
        keyring: Keyring,
        *,
        ttl: int,
        access_ttl: int,
        clock: Callable[[], float] = time.time,
        poll: float | None = None,
    ) -> None:
        self._store = store
        self._poll = poll  # seconds between reads of revocations made elsewhere; None: never
        self._keyring = keyring
        self.ttl = ttl
        self._access_ttl = access_ttl
        self._clock = clock
        self._revoked: dict[str, float] = {}  # family -> until when its access tokens may live
        self._loaded = False
        self._polled = 0.0  # when the revoked families were last read

    def _sealed(self, token: RefreshToken) -> RefreshToken:
        """The row under the primary key, with its tag computed over every column."""
        return REFRESH.seal(self._keyring, token)

    def _authentic(self, token: RefreshToken) -> bool:
        return REFRESH.authentic(self._keyring, token)

    def _new(self, user_id: int, family: str, epoch: int, now: float) -> tuple[str, RefreshToken]:
        token = secrets.token_urlsafe(REFRESH_BYTES)
        row = RefreshToken(refresh_id(token), user_id, family, epoch, now, now + self.ttl, None, None, 0, b"")
        return token, self._sealed(row)

    async def start(self, user_id: int, epoch: int) -> tuple[str, str]:
        """A new family for a login: (refresh token, family)."""
        now = self._clock()
        token, row = self._new(user_id, secrets.token_hex(FAMILY_BYTES), epoch, now)
        await self._store.add_refresh(row, prune_before=now - self._access_ttl)
        return token, row.family

    async def find(self, token: str) -> RefreshToken | None:
        """The authentic row of ``token``, whatever its state, or None."""
        row = await self._store.get_refresh(refresh_id(token)) if len(token) <= MAX_REFRESH_CHARS else None
        if row is not None and not self._authentic(row):
            log.error("a refresh token row of user %d failed its integrity check", row.user_id)
            return None
        return row

    async def redeem(self, token: object) -> RefreshToken:
        """The row of a refresh token that may be rotated now. A token that was rotated already
        revokes its family; revoked, expired, unknown and forged tokens are refused."""
        row = await self.find(check_refresh_field(token))
        if row is None:
            raise InvalidToken()
        if row.revoked is not None:
            raise RevokedToken()
        if row.used is not None:
            log.warning(
                "user %d: a rotated refresh token was used again; its session is revoked", row.user_id
            )
            await self.revoke(row.user_id, row.family)
            raise RevokedToken()
        if row.expires <= self._clock():
            raise ExpiredToken()
        return row

    async def rotate(self, row: RefreshToken) -> str:
        """Mark ``row`` used and return its successor. If it was used or revoked meanwhile (two
        refreshes with one token at once count as reuse), revoke the family and refuse."""
        now = self._clock()
        token, successor = self._new(row.user_id, row.family, row.epoch, now)
        used = self._sealed(dataclasses.replace(row, used=now))
        if not await self._store.rotate_refresh(row, used, successor, prune_before=now - self._access_ttl):
            log.warning(
                "user %d: a refresh token was used twice at once; its session is revoked", row.user_id
            )
            await self.revoke(row.user_id, row.family)
            raise RevokedToken()
        return token

    async def revoke(self, user_id: int, family: str | None) -> None:
        """Revoke one family of the user, whose access tokens die at once, or all of them (the
        caller raises the user's token epoch for that, which ends every access token)."""
        now = self._clock()
        await self._store.revoke_refresh(
            user_id, family, lambda t: self._sealed(dataclasses.replace(t, revoked=now))
        )
        if family is not None:
            self._remember(family, now)

    async def family_revoked(self, family: str) -> bool:
        now = self._clock()
        if not self._loaded or (self._poll is not None and now - self._polled >= self._poll):
            since = now - self._access_ttl if not self._loaded else self._polled - POLL_OVERLAP
            self._polled = now  # before the read: requests meanwhile do not read again
            for revoked, when in await self._store.revoked_families(max(since, now - self._access_ttl)):
                self._remember(revoked, when)
            self._loaded = True
        until = self._revoked.get(family)
        return until is not None and until > self._clock()

    def _remember(self, family: str, when: float) -> None:
        until = when + self._access_ttl
        self._revoked[family] = max(until, self._revoked.get(family, until))
        if len(self._revoked) > REVOKED_PRUNE_AT:
            now = self._clock()
            self._revoked = {f: t for f, t in self._revoked.items() if t > now}
