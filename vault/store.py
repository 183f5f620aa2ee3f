"""The storage interface the core needs, and the records that cross it.

storage/ implements :class:`Store` twice: SQLite (storage/sqlite.py, the default) and
PostgreSQL (storage/postgres.py, ``storage: postgres``); nothing above it sees SQL. Both keep the
same rows and every rule below; in PostgreSQL several processes may write at once, so each
"one transaction" here is also serialised where it must be (per (owner, name) for commits,
deletes, grants and links; the audit head), and deleted rows are not zeroed on disk
(docs/FORMAT.md). A file row goes
STAGED (segments being written, never visible) -> LIVE (header committed, visible under its
name) -> DELETED (replaced or deleted, segments purged when no download still reads them).
"""

from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from vault.format import Header


@dataclass(frozen=True)
class User:
    """An account row; ``tag`` authenticates the rest under master key ``key_id``. Access tokens
    carry the ``token_epoch`` they were issued under; raising it revokes every one of them."""

    id: int
    username: str
    password_hash: bytes
    key_id: int
    tag: bytes
    token_epoch: int = 0
    disabled: int = 0  # 1: logins and refreshes refused (tagged once set)


@dataclass(frozen=True)
class Account:
    """One line of ``run.py admin list-users``: an account and its LIVE files' plaintext bytes
    (``quota`` None: the configured default; times in seconds since the epoch)."""

    username: str
    created: float
    quota: int | None
    disabled: int
    last_login: float | None
    files: int
    used: int
    stored: int  # bytes of segments in the database (encrypted, with uploads in progress)


@dataclass(frozen=True)
class StoredFile:
    """A LIVE file row: the header plus what is needed to verify and open it."""

    header: Header
    key_id: int
    wrapped_key: bytes
    header_tag: bytes


@dataclass(frozen=True)
class Resumable:
    """A STAGED resumable (tus) upload: everything needed to go on after a restart."""

    tus_id: str
    file_id: bytes
    owner: int
    name: str
    length: int
    offset: int
    seg_size: int
    key_id: int
    wrapped_key: bytes
    tail: bytes | None
    expires: float
    metadata: str
    created: float
    tag: bytes


@dataclass(frozen=True)
class Grant:
    """Read access to the owner's file ``name`` for user ``grantee``."""

    owner: int
    name: str
    grantee: int
    created: float
    key_id: int
    tag: bytes


@dataclass(frozen=True)
class Link:
    """A public link to the owner's file ``name``; ``token_hash`` is SHA-256 of its secret."""

    id: str
    token_hash: bytes
    owner: int
    name: str
    created: float
    expires: float | None
    password_hash: bytes | None
    max_downloads: int | None
    bytes_served: int
    failures: int
    locked_until: float
    key_id: int
    tag: bytes


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry; ``mac`` chains it to the one before (vault/audit.py)."""

    seq: int
    at: float
    actor: str
    address: str
    action: str
    target: str
    outcome: str
    key_id: int
    mac: bytes


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token: ``id`` is SHA-256 of the opaque token, which is never stored. Tokens
    rotated from one login share its ``family``. ``used`` (when it was rotated) and ``revoked``
    (when its family was) are None until then; ``tag`` covers every field and is rewritten
    with them."""

    id: bytes
    user_id: int
    family: str
    epoch: int
    created: float
    expires: float
    used: float | None
    revoked: float | None
    key_id: int
    tag: bytes


@dataclass(frozen=True)
class Collected:
    """What one garbage collection of a blob store found (``run.py admin gc`` prints it)."""

    objects: int  # under the store's prefix
    referenced: int  # named by a segment row
    removed: int  # orphans older than the lease: deleted
    removed_bytes: int
    young: int  # orphans younger than the lease: kept (an upload may be about to name them)
    foreign: int  # keys vault does not write: left alone


@runtime_checkable
class BlobCollector(Protocol):
    """A store that keeps segment bytes outside its rows (storage/s3.py) and so can leave
    orphans behind: objects no segment row names."""

    async def collect(self, lease: float | None = None) -> Collected:
        """Delete the orphans older than ``lease`` seconds (default: the configured lease)."""


@runtime_checkable
class BlobMover(Protocol):
    """A blob store that can move a segment's bytes between its row in the metadata store and
    its object (``run.py admin migrate``, server stopped)."""

    async def move_segment(self, file_id: bytes, index: int, tag: bytes, to_objects: bool) -> bool:
        """Move one segment (its blob's last 32 bytes must be ``tag``, or IntegrityError);
        True if moved, False if it was already there. Safe to repeat after a crash."""


class FileStore(Protocol):
    """Files and their segments, resumable uploads, and what each user stores and may store
    (FileService, Quotas and the upload/download pipeline)."""

    async def stored_bytes(self, owner: int) -> int:
        """Bytes the owner's segments take in the store."""

    async def stage_file(self, file_id: bytes, owner: int, created: float) -> None:
        """Reserve a STAGED row for an upload in progress."""

    async def put_segment(
        self, file_id: bytes, index: int, tag: bytes, blob: bytes | bytearray, size: int | None = None
    ) -> None:
        """Insert a segment, replacing one at the same index (a resumed upload rewrites). A blob
        store in front (storage/s3.py) keeps the bytes elsewhere and passes ``blob=b""`` with
        their ``size``, which ``stored_bytes`` and ``accounts`` count instead of ``len(blob)``."""

    async def read_tags(self, file_id: bytes, count: int) -> list[tuple[int, bytes]]:
        """(index, tag) of the segments with index < count that exist, in index order."""

    async def commit_file(self, stored: StoredFile) -> None:
        """In one transaction: mark the owner's LIVE file of that name DELETED and make this
        STAGED row LIVE with its header. Readers see the old version or the new, never neither."""

    async def discard_file(self, file_id: bytes) -> None:
        """Drop a STAGED file and its segments."""

    async def get_file(self, owner: int, name: str) -> StoredFile | None: ...

    async def list_files(self, owner: int) -> list[StoredFile]: ...

    async def files_after(self, owner: int, after: str | None, limit: int) -> list[StoredFile]:
        """At most ``limit`` of the owner's LIVE files, in code point order of their names, the
        first after ``after`` (None: from the first): one page, read through an index (keyset
        pagination: a page costs its length, not the files before it)."""

    async def delete_file(self, owner: int, name: str) -> bool:
        """Mark the LIVE file DELETED and drop its grants and links; True if there was one."""

    async def read_segment(self, file_id: bytes, index: int, tag: bytes) -> bytes | None:
        """The stored blob of segment ``index``, None if there is none. ``tag`` is the one the
        header committed to: the caller still checks the blob against it, and a blob store
        finds the object by it (so a rewritten segment is never read under its old tag)."""

    async def create_resumable(self, upload: Resumable) -> None: ...

    async def get_resumable(self, owner: int, tus_id: str) -> Resumable | None: ...

    async def save_progress(
        self, file_id: bytes, old_offset: int, new_offset: int, tail: bytes, expires: float
    ) -> bool:
        """Move a resumable upload's offset forward if it is still at old_offset."""

    async def purge(self, keep: Collection[bytes], staged_too: bool = False, now: float = 0.0) -> int:
        """Remove DELETED files, resumable uploads that expired before ``now``, and (if asked)
        other STAGED files, none of them in ``keep`` (this process's pins) nor pinned by a live
        process in the shared state, where the store keeps it (``StateStore``, kind ``pin``, key
        the file id in hex: checked again in the statement that starts removing a file, since
        with shared state ``staged_too`` is asked every lease and a STAGED row nobody pins is an
        upload whose process died); return how many."""

    async def usage(self, owner: int) -> tuple[int, int]:
        """(bytes, files): LIVE files plus the declared length of resumable uploads under way."""

    async def get_limits(self, user_id: int) -> tuple[int | None, int | None]:
        """The user's (quota, max_file_size) overrides; None where the default applies."""


class AccountStore(Protocol):
    """Accounts, their limits and refresh tokens (Authenticator, RefreshTokens, admin)."""

    async def add_invite(self, code_hash: bytes, key_id: int, expires: float) -> None: ...

    async def set_last_login(self, user_id: int, at: float) -> None: ...

    async def create_user(self, user: User, invite: bytes | None = None) -> None:
        """Insert a user; raise UserExists if the name is taken. With ``invite`` (a code hash),
        in the same transaction use up that unused, unexpired invite or raise Forbidden."""

    async def get_user(self, username: str) -> User | None: ...

    async def get_user_by_id(self, user_id: int) -> User | None: ...

    async def update_user(self, user: User) -> None:
        """Replace the password hash, key id, tag and token epoch of the user with ``user.id``."""

    async def replace_user(self, old: User, new: User) -> bool:
        """Like update_user, but only if the row still has ``old``'s tag (compare-and-set)."""

    async def set_limits(self, username: str, quota: int | None, max_file_size: int | None) -> bool: ...

    async def add_refresh(self, token: RefreshToken, prune_before: float) -> None:
        """Insert a refresh token; drop the user's tokens that expired before ``prune_before``."""

    async def get_refresh(self, token_id: bytes) -> RefreshToken | None: ...

    async def rotate_refresh(
        self, old: RefreshToken, used: RefreshToken, new: RefreshToken, prune_before: float
    ) -> bool:
        """In one transaction: if the row is still exactly ``old`` (its tag, neither used nor
        revoked), replace it by ``used``, insert ``new`` and prune as add_refresh does; else
        change nothing and return False."""

    async def revoke_refresh(
        self, user_id: int, family: str | None, revoke: Callable[[RefreshToken], RefreshToken]
    ) -> int:
        """In one transaction: replace each of the user's tokens that is neither used nor revoked
        (of ``family`` only, if given) by ``revoke(token)``; return how many."""

    async def revoked_families(self, since: float) -> list[tuple[str, float]]:
        """(family, when) of the families revoked at ``since`` or later."""


class SharingStore(Protocol):
    """Grants and public links (Sharing), which also looks up the live file they name."""

    async def get_file(self, owner: int, name: str) -> StoredFile | None: ...

    async def put_grant(self, grant: Grant) -> bool:
        """Insert or replace the grant for (owner, name, grantee) if the owner has a LIVE file
        of that name, checked in the same statement; False if not."""

    async def get_grant(self, owner: int, name: str, grantee: int) -> Grant | None: ...

    async def delete_grant(self, owner: int, name: str, grantee: int) -> bool: ...

    async def grants_of(self, owner: int, name: str) -> list[Grant]: ...

    async def shared_files(self, grantee: int) -> list[tuple[Grant, StoredFile]]:
        """Every grant to ``grantee`` joined with the LIVE file it names (one query: a listing
        costs one pass over the grants, not grants x the owners' files)."""

    async def put_link(self, link: Link) -> bool:
        """Insert the link if the owner has a LIVE file of its name, checked in the same
        statement; False if not."""

    async def get_link(self, token_hash: bytes) -> Link | None: ...

    async def links_of(self, owner: int) -> list[Link]:
        """The owner's links by (created, id)."""

    async def links_after(
        self, owner: int, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[Link, StoredFile | None]]:
        """At most ``limit`` of the owner's links by (created, id), the first after ``after``
        (None: from the first), each with the LIVE file it names (None: none): one page."""

    async def shared_after(
        self, grantee: int, after: str | None, limit: int
    ) -> list[tuple[Grant, StoredFile, str]]:
        """At most ``limit`` of the grants to ``grantee`` that name a LIVE file, with that file
        and the owner's username, in code point order of ``username/name``, the first after
        ``after`` (None: from the first): one page."""

    async def delete_link(self, owner: int, link_id: str) -> bool:
        """Delete a link, remembering its secret's hash as revoked."""

    async def link_revoked(self, token_hash: bytes) -> bool: ...

    async def charge_link(self, link_id: str, nbytes: int) -> None:
        """Add to the bytes a link has served."""

    async def add_link_failure(
        self, link_id: str, now: float, lock_out: Callable[[int, float], float]
    ) -> int:
        """In one transaction: count one more wrong password and set ``locked_until`` to
        ``lock_out(new count, now)``; returns the new count (0: no such link)."""

    async def set_link_failures(self, link_id: str, failures: int, locked_until: float) -> None: ...


class AuditStore(Protocol):
    """The audit log (AuditLog)."""

    async def append_audit(self, build: Callable[[int, bytes], AuditEntry]) -> AuditEntry:
        """In one write transaction: ``build(next seq, mac of the last entry)`` and insert it."""

    async def set_audit_mac(self, seq: int, key_id: int, mac: bytes) -> None:
        """Re-chain one entry under another master key (key rotation, server stopped)."""

    async def audit_entries(self, after: int, limit: int) -> list[AuditEntry]:
        """Entries with seq > after, in seq order, at most ``limit``."""


@dataclass(frozen=True)
class Hold:
    """Part of a limited counter that one process holds (StateStore.hold): ``amount`` units of
    (``kind``, ``key``), e.g. one upload slot of a user or bytes of a user's quota. ``id`` is
    unique among all holds, ever."""

    id: str
    kind: str
    key: str
    amount: int


@dataclass(frozen=True)
class Counter:
    """A small shared record (StateStore.counter): a ``count``, a time ``stamp`` (seconds since
    the epoch) and a ``version`` that every change raises; version 0: never set, or expired."""

    count: int = 0
    stamp: float = 0.0
    version: int = 0


class StateStore(Protocol):
    """The state every process serving one vault must see alike, as a few primitives that SQL
    does well (docs/ARCHITECTURE.md, "Several processes"). vault/state.py ``LocalState`` keeps
    it in memory (one process: the default); storage/ keeps it in the database for several.

    - **Holds** (counters with limits, leased): upload slots per user, quota bytes held by
      uploads under way, link bytes reserved by downloads under way, pins (files a transfer
      reads or writes: purge leaves them, and a STAGED row nobody pins is a crashed upload),
      the one PATCH at a time of a tus upload. A hold belongs to this process (``holder``),
      which renews its lease (``renew``); when a process dies its holds die with its lease.
    - **Counters** (compare-and-set records with expiry): login failures per account and per
      address, registrations per window, the version of a (kind, key) whose stored total
      changed (a user's bytes after a commit), so a hold computed from a total read before the
      change is refused and the caller reads again, and a total kept here beside its holds (a
      link's bytes served: ``settle`` turns a hold into count, ``tally`` reads both at once).
    - **Mutexes**: one password guess at a time per link.

    Every call is one atomic operation: the in-memory implementation has no await between its
    check and its update, a SQL one runs it in one transaction (``BEGIN IMMEDIATE``; in
    PostgreSQL an ``UPDATE ... RETURNING`` or a transaction-scoped advisory lock on the key).
    ``kind`` and ``key`` are short strings (at most 64 characters). The audit chain head needs
    no primitive here: ``AuditStore.append_audit`` numbers and chains each entry inside its own
    insert transaction, which a store must serialise across processes. Revoked sessions are read
    from ``AccountStore.revoked_families``, polled (``shared``: at least every second)."""

    holder: str  # this process's id; its holds live as long as its lease
    shared: bool  # False: this process is the only one (nothing to poll, start-up purges all)

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
        """Atomically, with H the sum of the live holds of (kind, key): grant
        ``g = min(amount, max(limit - H, 0))`` (``amount`` when ``limit`` is None). If ``g < need``
        (default ``amount``), or ``version`` is given and differs from the version of the
        counter (kind, key), record nothing and return None; else record a hold of ``g`` by
        this process and return it (``g`` may be 0 when ``need`` allows)."""

    async def resize(
        self, hold: Hold, amount: int, limit: int | None, *, version: int | None = None
    ) -> Hold | None:
        """Atomically change ``hold`` to ``amount`` if the live holds of its (kind, key),
        ``hold`` counted at its new amount, stay within ``limit`` (None: always) and the
        version matches as for ``hold``; the resized hold, or None (nothing changed). A hold
        that is no longer recorded (its lease lapsed) is None too."""

    async def release(self, hold: Hold) -> None:
        """Forget ``hold``; releasing one twice, or one whose lease lapsed, does nothing."""

    async def held(self, kind: str, key: str) -> int:
        """The sum of the live holds of (kind, key), every process's."""

    async def held_keys(self, kind: str) -> set[str]:
        """The keys of ``kind`` with a live hold, every process's (e.g. the pinned files)."""

    async def counter(self, kind: str, key: str) -> Counter:
        """The counter (kind, key); ``Counter()`` if it was never set or has expired."""

    async def set_counter(
        self, kind: str, key: str, count: int, stamp: float, *, version: int, expires: float | None
    ) -> Counter | None:
        """Compare-and-set: if the counter's version is still ``version`` (0: not set or
        expired), store ``count`` and ``stamp`` with the next version, forgotten after
        ``expires`` (seconds since the epoch; None: kept); the new counter, or None."""

    async def bump(self, kind: str, key: str) -> int:
        """Raise the counter's version by one, keeping count and stamp; the new version."""

    async def settle(self, hold: Hold, amount: int) -> int:
        """Atomically forget ``hold`` and add ``amount`` to the count of the counter (its kind,
        its key), raising the counter's version and keeping its stamp and expiry (a counter not
        set, or expired, starts from count 0, stamp 0, no expiry); the new version. What a hold
        reserved becomes what was used in one step: ``tally`` never sees it in both, or in
        neither. A hold no longer recorded (released, its lease lapsed) is counted all the same."""

    async def tally(self, kind: str, key: str) -> tuple[Counter, int]:
        """The counter (kind, key) and the sum of its live holds, read at one instant."""

    def mutex(self, kind: str, key: str) -> AbstractAsyncContextManager[None]:
        """Exclusive use of (kind, key) among all processes, waited for in turn; a holder that
        dies gives it up with its lease."""

    async def renew(self) -> None:
        """Extend this process's lease, and forget the holds of processes whose lease lapsed
        (called every ``lease / 3`` seconds while serving)."""

    async def close(self) -> None:
        """Release everything this process holds."""


class Store(FileStore, AccountStore, SharingStore, AuditStore, Protocol):
    """Every role, as one database serves them (storage/sqlite.py), plus what key rotation,
    offline verification and shutdown need (admin, vault/rows.py)."""

    async def all_users(self) -> list[User]: ...

    async def all_grants(self) -> list[Grant]: ...

    async def all_links(self) -> list[Link]: ...

    async def all_refresh(self) -> list[RefreshToken]:
        """Every refresh-token row (for re-tagging under a new master key)."""

    async def set_link_tag(self, link_id: str, key_id: int, tag: bytes) -> None: ...

    async def set_refresh_tag(self, token_id: bytes, key_id: int, tag: bytes) -> None: ...

    async def all_files(self) -> list[StoredFile]:
        """Every LIVE file of every owner (for offline verification)."""

    async def file_names(self) -> list[tuple[int, str]]:
        """(owner, name) of every LIVE file, read without the files' rows where the store can
        (SQLite: from an index), so verification can name files whose rows are unreadable."""

    async def wrapped_keys(self) -> list[tuple[bytes, int, bytes]]:
        """(file_id, key_id, wrapped_key) of every LIVE file and resumable upload."""

    async def set_wrapped_key(self, file_id: bytes, old_key_id: int, key_id: int, wrapped: bytes) -> bool: ...

    async def key_ids_in_use(self) -> set[int]: ...

    async def accounts(self) -> list[Account]:
        """Every account with its files and usage, by name."""

    async def delete_user(self, user_id: int) -> bool:
        """In one transaction: the account, its tokens, grants (given and received) and links
        (kept as revoked); its files marked DELETED for the next purge. False if none."""

    async def backup(self, dest: Path) -> None:
        """A consistent copy of the database at ``dest``, taken while writers carry on."""

    async def compact(self) -> tuple[int, int]:
        """Give free space back to the file system; the database's bytes (before, after)."""

    async def database_size(self) -> int: ...

    async def check(self) -> str:
        """The store's own structural check: ``ok`` or what is wrong."""

    async def healthy(self) -> bool:
        """Whether the store answers a read (GET /health)."""

    async def close(self) -> None: ...

    # Rows as they are, for ``run.py admin migrate`` (vault/migrate.py), server stopped; the
    # tables and their columns are vault/tables.py's.

    async def dump_rows(self, table: str) -> list[tuple[object, ...]]:
        """Every row of ``table``, columns in vault/tables.py's order, values as stored."""

    async def replace_rows(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """In one transaction: the table's rows become exactly ``rows``."""

    async def append_rows(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """Insert ``rows`` in one transaction."""

    async def file_row(self, file_id: bytes) -> tuple[object, ...] | None: ...

    async def file_states(self) -> list[tuple[bytes, int]]:
        """(file id, state) of every file row, whatever its state."""

    async def segment_rows(self, file_id: bytes) -> list[tuple[int, bytes, int | None]]:
        """(index, tag, object size: None where the bytes are in the row) of a file's segments."""

    async def drop_file_rows(self, file_id: bytes) -> None:
        """Delete a file row and its segment rows in one transaction."""

    async def row_counts(self) -> dict[str, int]:
        """Rows in each table that a migration copies."""


@runtime_checkable
class BlobFront(Protocol):
    """A blob layer in front of a metadata store (storage/s3.py): ``inner`` is that store,
    whose segment rows name the objects."""

    @property
    def inner(self) -> Store: ...
