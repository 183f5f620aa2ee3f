"""Row authentication: the database rows the core trusts carry an HMAC (``tag``) under the
master-derived row key ``key_id`` (vault/keys.py ``row_tag``), so that someone who can write the
database cannot swap a password hash, grant themselves a file, plant a link or revive a
refresh token.

Each kind of row is one :class:`RowKind`, naming its label and its authenticated fields once.
``seal`` and ``authentic`` are the only ways to make and check a tag (fernet.py's one
``_verify_signature``), and ``rotate`` re-seals every kind in :data:`ROW_KINDS` under the new
primary key (``MultiFernet.rotate``), so a kind added there cannot be forgotten by rotate-key.
Not here: a resumable upload's tag is under its own file key (vault/format.py ``upload_tag``),
which rotate-key re-wraps with the files' keys, and the audit log is a chain (vault/audit.py).
"""

import dataclasses
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vault.errors import IntegrityError
from vault.keys import Keyring, row_tag
from vault.store import Grant, Link, RefreshToken, Store, User

log = logging.getLogger(__name__)

R = TypeVar("R", User, Grant, Link, RefreshToken)
Field = bytes | str | int | float | None


@dataclass(frozen=True)
class RowKind(Generic[R]):
    row: type[R]
    label: bytes
    fields: Callable[[R], tuple[Field, ...]]  # the authenticated columns, in tag order
    every: Callable[[Store], Awaitable[list[R]]]  # all rows of the kind, for rotation
    save: Callable[[Store, R], Awaitable[object]]  # write back a re-sealed row's key id and tag

    def tag(self, keyring: Keyring, row: R) -> bytes:
        """The tag of ``row`` under its own ``key_id``; IntegrityError if that key is gone."""
        return row_tag(keyring, row.key_id, self.label, *self.fields(row))

    def seal(self, keyring: Keyring, row: R) -> R:
        """``row`` under the primary key, with its tag."""
        rekeyed = dataclasses.replace(row, key_id=keyring.primary)
        return dataclasses.replace(rekeyed, tag=self.tag(keyring, rekeyed))

    def authentic(self, keyring: Keyring, row: R) -> bool:
        try:
            expected = self.tag(keyring, row)
        except IntegrityError:  # tagged under a master key no longer in the ring
            return False
        return hmac.compare_digest(expected, row.tag)


def _user_fields(u: User) -> tuple[Field, ...]:
    # The epoch is appended only once raised, so rows written before it existed still verify.
    # The disabled flag likewise only while set (version 3), after the epoch.
    extra = (u.token_epoch, u.disabled) if u.disabled else (u.token_epoch,) if u.token_epoch else ()
    return (u.key_id, u.id, u.username, u.password_hash, *extra)


def _save_link(store: Store, link: Link) -> Awaitable[None]:
    return store.set_link_tag(link.id, link.key_id, link.tag)


def _save_refresh(store: Store, token: RefreshToken) -> Awaitable[None]:
    return store.set_refresh_tag(token.id, token.key_id, token.tag)


USER = RowKind(User, b"user", _user_fields, lambda s: s.all_users(), lambda s, u: s.update_user(u))
GRANT = RowKind(
    Grant,
    b"grant",
    lambda g: (g.owner, g.name, g.grantee),
    lambda s: s.all_grants(),
    lambda s, g: s.put_grant(g),
)
LINK = RowKind(
    Link,
    b"link",
    lambda k: (k.id, k.token_hash, k.owner, k.name, k.created, k.expires, k.password_hash, k.max_downloads),
    lambda s: s.all_links(),
    _save_link,
)  # the counters (bytes served, failed passwords) are not authenticated: they only restrict
REFRESH = RowKind(
    RefreshToken,
    b"refresh",
    lambda t: (t.id, t.user_id, t.family, t.epoch, t.created, t.expires, t.used, t.revoked),
    lambda s: s.all_refresh(),
    _save_refresh,
)
ROW_KINDS: tuple[RowKind[Any], ...] = (
    USER,
    GRANT,
    LINK,
    REFRESH,
)


async def rotate(store: Store, keyring: Keyring) -> dict[str, tuple[int, int]]:
    """Re-seal every authentic row of every kind under the primary key; a row that does not
    verify stays as it is (refused). Returns {label: (re-sealed, refused)}."""
    report = {}
    for kind in ROW_KINDS:
        report[kind.label.decode()] = await _rotate_kind(store, keyring, kind)
    return report


async def _rotate_kind(store: Store, keyring: Keyring, kind: RowKind[Any]) -> tuple[int, int]:
    sealed = refused = 0
    for row in await kind.every(store):
        if kind.authentic(keyring, row):
            await kind.save(store, kind.seal(keyring, row))
            sealed += 1
        else:
            log.error("a %s row failed its integrity check: left as it is", kind.label.decode())
            refused += 1
    return sealed, refused
