"""The SQLite implementation of vault.store.Store, on aiosqlite.

One writer connection (SQLite has one writer at a time; a lock keeps multi-statement
transactions whole) and one reader connection; WAL lets reads run beside the writes.
``page_size=65536`` keeps a 1 MiB segment to 16 overflow pages, and ``secure_delete=FAST``
zeroes deleted rows (and so the wrapped keys of deleted files) in the b-tree pages.
"""

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from storage.reserve import Reserve
from vault.errors import (
    DatabaseDamaged,
    Forbidden,
    IntegrityError,
    OffsetMismatch,
    StorageBusy,
    StorageFull,
    UserExists,
    VaultError,
)
from vault.format import Header
from vault.pipeline import PIN
from vault.store import Account, AuditEntry, Grant, Link, RefreshToken, Resumable, StoredFile, User
from vault.tables import NOT_COPIED, TABLES, columns

log = logging.getLogger(__name__)
INVITE_REFUSED = "Invite code unknown, used or expired"

# 2: users.token_epoch and refresh_tokens; 3: users.disabled, last_login, invites; 4: segments.size
SCHEMA_VERSION = 4
STAGED, LIVE, DELETED = 0, 1, 2
PURGE_BATCH = 32  # segments deleted per write transaction, so purging never holds the lock long
WAL_LIMIT = 16 * 1024 * 1024  # bytes of WAL between checkpoints, and kept (not freed) after one
VACUUM_BATCH = 16  # free pages given back to the file system per write transaction (1 MiB)
# Bytes of free pages (deleted and replaced files) kept inside the database for the next uploads
# to write into: growing the file again costs the kernel 1-2 CPU-s per GB more than rewriting
# pages it already holds, and giving pages back moves the live pages after them (README, Space)
KEEP_FREE = 1024 * 1024 * 1024
_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA secure_delete = FAST",
    # The default checkpoint (1000 pages) would be 62.5 MiB of 64 KiB pages: a WAL that size
    # on a full disk cannot be checkpointed. A small WAL, reused in place after each
    # checkpoint, is also room that a delete on a full disk can still write to.
    f"PRAGMA wal_autocheckpoint = {WAL_LIMIT // 65536}",
    f"PRAGMA journal_size_limit = {WAL_LIMIT}",
)
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's lock (and for ours)
INCREMENTAL_VACUUM = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
BUSY_SLACK_MS = 250  # a write that queued longer than this for our own lock waits less in SQLite
# SQLite's primary result codes (the low byte of an extended code) that are not bugs of ours
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 5, 6, 11, 13, 26
_FILE_COLUMNS = (
    "file_id, owner, name, version, suite, seg_size, size, seg_count, sha256,"
    " key_id, wrapped_key, header_tag, created, seg_root"
)


# A grant or link is written only beside a LIVE file of its name, in the same statement: one
# created while its file is deleted cannot survive to serve the next upload of that name.
_FILE_IS_LIVE = f"EXISTS (SELECT 1 FROM files WHERE owner = ? AND name = ? AND state = {LIVE})"
# A file that a transfer of a live process pinned in the shared state (storage/sqlite_state.py).
_PINNED = (
    "EXISTS (SELECT 1 FROM state_holds h JOIN state_holders p ON p.holder = h.holder"
    f" WHERE h.kind = '{PIN}' AND h.key = lower(hex(files.file_id)) AND p.expires > ?)"
)
_AUDIT_COLUMNS = "seq, at, actor, address, action, target, outcome, key_id, mac"
_GRANT_COLUMNS = "owner, name, grantee, created, key_id, tag"
_USER_COLUMNS = "id, username, password_hash, key_id, tag, token_epoch, disabled"
_REFRESH_COLUMNS = "id, user_id, family, epoch, created, expires, used, revoked, key_id, tag"
_LINK_COLUMNS = (
    "id, token_hash, owner, name, created, expires, password_hash, max_downloads,"
    " bytes_served, failures, locked_until, key_id, tag"
)
R = TypeVar("R")


def _prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _record(kind: type[R], row: Any) -> R:
    """A row as a record, each column checked against the field's type (a tampered column of
    the wrong type is an IntegrityError, as for files)."""
    values: list[object] = []
    for value, field in zip(row, dataclasses.fields(kind), strict=True):  # type: ignore[arg-type]
        if not isinstance(value, _TYPES[field.type]) or isinstance(value, bool):
            raise IntegrityError()
        is_float = field.type in (float, float | None) and isinstance(value, int)
        values.append(float(cast(int, value)) if is_float else value)
    return kind(*values)


_TYPES: dict[object, tuple[type, ...]] = {
    int: (int,),
    str: (str,),
    bytes: (bytes,),
    float: (float, int),
    float | None: (float, int, type(None)),
    int | None: (int, type(None)),
    bytes | None: (bytes, type(None)),
}


def _user(row: Any) -> User:
    return _record(User, row)


def _lenient_text(raw: bytes) -> str:
    """TEXT that is not UTF-8 (only a tampered row has that) decodes with U+FFFD, so the
    header check, not a decoding exception, turns it away."""
    return raw.decode("utf-8", errors="replace")


def _stored_file(row: Any) -> StoredFile:
    """A LIVE row as a record; a column of the wrong type (tampering) is an IntegrityError."""
    try:
        return _convert_file_row(row)
    except (TypeError, ValueError):
        raise IntegrityError() from None


def _convert_file_row(row: Any) -> StoredFile:
    (
        file_id,
        owner,
        name,
        version,
        suite,
        seg_size,
        size,
        seg_count,
        sha,
        key_id,
        wrapped,
        tag,
        created,
        root,
    ) = row
    if not all(isinstance(v, bytes) for v in (file_id, sha, wrapped, tag, root)) or not isinstance(name, str):
        raise TypeError("blob or text column of the wrong type")
    header = Header(
        version=int(version),
        suite=int(suite),
        seg_size=int(seg_size),
        file_id=bytes(file_id),
        owner=int(owner),
        name=str(name),
        size=int(size),
        seg_count=int(seg_count),
        sha256=bytes(sha),
        created=float(created),
        seg_root=bytes(root),
    )
    return StoredFile(header, int(key_id), bytes(wrapped), bytes(tag))


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring an older database to this version (schema.sql has already added the new tables)."""
    async with db.execute("PRAGMA table_info(users)") as cursor:
        columns = {row[1] for row in await cursor.fetchall()}
    if "token_epoch" not in columns:
        await db.execute("ALTER TABLE users ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0")
    if "disabled" not in columns:  # version 3
        await db.execute("ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0")
        await db.execute("ALTER TABLE users ADD COLUMN last_login REAL")
    async with db.execute("PRAGMA table_info(segments)") as cursor:
        if "size" not in {row[1] for row in await cursor.fetchall()}:  # version 4
            await db.execute("ALTER TABLE segments ADD COLUMN size INTEGER")


async def _insert_refresh(db: aiosqlite.Connection, t: RefreshToken) -> None:
    await db.execute(
        f"INSERT INTO refresh_tokens ({_REFRESH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (t.id, t.user_id, t.family, t.epoch, t.created, t.expires, t.used, t.revoked, t.key_id, t.tag),
    )


async def _prune_refresh(db: aiosqlite.Connection, user_id: int, before: float) -> None:
    await db.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND expires < ?", (user_id, before))


def _domain_error(exc: sqlite3.Error) -> VaultError | None:
    """The domain error for an SQLite failure that is a state of the database, not a bug: the
    one place these are mapped (handlers/ maps the domain errors to statuses)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return StorageBusy()
    if code == SQLITE_FULL:
        return StorageFull()
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return DatabaseDamaged(str(exc))
    return None


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        error = _domain_error(exc)
        if error is None:
            raise
        log.warning("database: %s", exc)
        raise error from None


async def _connect(
    path: Path, busy_timeout: float, opened: list[aiosqlite.Connection]
) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    opened.append(db)
    await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    await db.execute("PRAGMA page_size = 65536")  # effective only for a new database
    # Also only for a new database, or at the next VACUUM (`run.py admin compact`): free pages
    # can then be given back to the file system after deletes (SQLiteStore.give_back).
    await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    for pragma in _PRAGMAS:
        await db.execute(pragma)
    return db


async def _prepare(writer: aiosqlite.Connection) -> None:
    """Create or migrate the schema; a database that is up to date is not written to."""
    (version,) = await (await writer.execute("PRAGMA user_version")).fetchone() or (0,)
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema {version} is newer than this vault ({SCHEMA_VERSION})")
    schema = resources.files("storage").joinpath("schema.sql").read_text(encoding="utf-8")
    await writer.executescript(schema)  # CREATE ... IF NOT EXISTS: writes only what is missing
    await _migrate(writer)
    if version != SCHEMA_VERSION:
        await writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class SQLiteStore:
    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        busy_timeout: float,
        reserve: Reserve,
        incremental: bool,
        keep_free: int = 0,
        page_size: int = 65536,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        self._busy_timeout = busy_timeout
        self._busy_ms = int(busy_timeout * 1000)  # the writer's busy_timeout now
        self._orphans_checked = False  # purge has looked for segments without a file row
        self._reserve = reserve
        self._incremental = incremental  # auto_vacuum = INCREMENTAL: free pages can be given back
        self._keep_free = keep_free  # bytes of free pages give_back leaves for the next uploads
        self._page_size = page_size
        self._giving_back: asyncio.Task[None] | None = None
        self._give_back_again = False
        self._closing = False  # give_back stops after its batch under way

    @classmethod
    async def open(
        cls,
        path: Path,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        reserve: int = 0,
        keep_free: int = KEEP_FREE,
    ) -> "SQLiteStore":
        """Open (creating or migrating) the database, with ``reserve`` bytes of disk held back
        beside it for writes that free space (storage/reserve.py), keeping up to ``keep_free``
        bytes of free pages inside it for the next uploads (give_back). On any failure every
        connection opened so far is closed again: its thread would otherwise keep the process
        alive."""
        path.parent.mkdir(parents=True, exist_ok=True)
        held = Reserve(path.with_name(path.name + ".reserve"), reserve)
        held.make_room()  # opening writes the WAL and its index: on a full disk, room for them
        opened: list[aiosqlite.Connection] = []
        try:
            with _translated():
                writer = await _connect(path, busy_timeout, opened)
                await _prepare(writer)
                reader = await _connect(path, busy_timeout, opened)
                reader.text_factory = _lenient_text
                (mode,) = await (await writer.execute("PRAGMA auto_vacuum")).fetchone() or (0,)
                (page,) = await (await writer.execute("PRAGMA page_size")).fetchone() or (65536,)
        except BaseException:
            for db in opened:
                await db.close()
            raise
        held.hold()
        return cls(writer, reader, busy_timeout, held, mode == INCREMENTAL_VACUUM, keep_free, int(page))

    async def close(self) -> None:
        self._closing = True
        if self._giving_back is not None:
            await asyncio.gather(self._giving_back, return_exceptions=True)
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def _locked(self, upload: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """The writer, to this task alone. Waiting for it here and then for another process's
        lock in SQLite share one budget, ``busy_timeout``: past it the write is StorageBusy
        (503), never a wait of twice the timeout. An ``upload``'s write is refused
        (StorageFull) while the disk reserve is given up; any other write may use it."""
        deadline = time.monotonic() + self._busy_timeout
        if self._lock.locked():
            try:
                async with asyncio.timeout(self._busy_timeout):
                    await self._lock.acquire()
            except TimeoutError:
                log.warning("database: a write queued %.1f s for the writer", self._busy_timeout)
                raise StorageBusy() from None
        else:
            await self._lock.acquire()  # free: no timer for the common case
        try:
            # checked holding the lock: the writes of an upload queued behind a failed one
            # must not take the space that failure gave up
            if not upload:
                self._reserve.make_room()
            elif not self._reserve.hold() and not await self._room_inside():
                raise StorageFull()
            with _translated():
                await self._budget(deadline)
                yield self._writer
        except StorageFull:
            self._reserve.release()  # space ran out despite it: the next small write has room
            raise
        finally:
            self._lock.release()

    async def _room_inside(self) -> bool:
        """Whether a database that keeps the pages of deleted files (made before incremental
        auto-vacuum) has a reserve's worth free inside: uploads may go on in those pages (the
        given-up reserve stays free on the file system for the small writes), as the reserve
        cannot be taken back from the file system until `admin compact`."""
        if self._incremental:
            return False  # its free pages are on their way back to the file system
        with _translated():
            free = await self._writer.execute_fetchall("PRAGMA freelist_count", ())
            size = await self._writer.execute_fetchall("PRAGMA page_size", ())
        return int(list(free)[0][0]) * int(list(size)[0][0]) >= self._reserve.size

    async def _budget(self, deadline: float) -> None:
        """Give SQLite's busy wait only what is left of the write's budget (a PRAGMA only when
        that changed noticeably: without queueing, never)."""
        left = max(int((deadline - time.monotonic()) * 1000), 1)
        if abs(left - self._busy_ms) > BUSY_SLACK_MS:
            await self._writer.execute(f"PRAGMA busy_timeout = {left}")
            self._busy_ms = left

    @asynccontextmanager
    async def _transaction(
        self, durable: bool = False, upload: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction. ``durable``: its COMMIT syncs the WAL to disk before it
        returns (and so every write before it: the segments of an upload), where NORMAL
        would leave it to the next checkpoint (bench/durability.py measures the cost)."""
        async with self._locked(upload) as db:
            if durable:
                await db.execute("PRAGMA synchronous = FULL")
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                        await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
            finally:
                if durable:
                    await db.execute("PRAGMA synchronous = NORMAL")

    async def _all(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        """Run a read in one hop on the reader's thread (execute and fetch together), so no
        statement is ever left mid-flight between hops: SQLite keeps one read snapshot while any
        statement of a connection is active, and another read would see that old snapshot
        instead of every commit acknowledged before it began. A row that cannot even be
        decoded is an IntegrityError."""
        try:
            with _translated():
                return list(await self._reader.execute_fetchall(sql, params))
        except (sqlite3.DataError, sqlite3.OperationalError) as exc:
            log.error("reading the database failed: %s", exc)
            # its traceback holds the failed cursor, which would keep the statement (and so
            # the old snapshot) alive until the garbage collector came by
            exc.with_traceback(None)
            raise IntegrityError() from None

    async def _one(self, sql: str, params: tuple[object, ...]) -> Any:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _write(self, sql: str, params: tuple[object, ...], upload: bool = False) -> int:
        async with self._locked(upload) as db:
            cursor = await db.execute(sql, params)
            return cursor.rowcount

    async def create_user(self, user: User, invite: bytes | None = None) -> None:
        now = time.time()
        async with self._transaction() as db:
            if invite is not None:
                cursor = await db.execute(
                    "UPDATE invites SET used = ?, user_id = ? WHERE code_hash = ? AND used IS NULL"
                    " AND expires > ?",
                    (now, user.id, invite, now),
                )
                if cursor.rowcount != 1:
                    raise Forbidden(INVITE_REFUSED)
            try:
                await db.execute(
                    "INSERT INTO users (id, username, password_hash, key_id, tag, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (user.id, user.username, user.password_hash, user.key_id, user.tag, now),
                )
            except sqlite3.IntegrityError:
                raise UserExists() from None  # the rollback gives the invite back

    async def get_user(self, username: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,))
        return _user(row) if row else None

    async def stage_file(self, file_id: bytes, owner: int, created: float) -> None:
        await self._write(
            "INSERT INTO files (file_id, owner, state, created) VALUES (?, ?, ?, ?)",
            (file_id, owner, STAGED, created),
            upload=True,
        )

    async def put_segment(
        self, file_id: bytes, index: int, tag: bytes, blob: bytes | bytearray, size: int | None = None
    ) -> None:
        """Store (or replace) a segment of a staged file. A segment a resumable upload has
        already saved (wholly below its stored offset) is never replaced: a request that
        started from an old offset is refused (OffsetMismatch) before it can change it."""
        written = await self._write(
            "INSERT OR REPLACE INTO segments (file_id, idx, tag, data, size) SELECT ?, ?, ?, ?, ?"
            " WHERE NOT EXISTS (SELECT 1 FROM files WHERE file_id = ? AND state = ?"
            " AND upload_offset >= (? + 1) * seg_size)",
            (file_id, index, tag, blob, size, file_id, STAGED, index),
            upload=True,
        )
        if written != 1:
            raise OffsetMismatch("This upload has moved on; ask HEAD for its offset")

    async def read_tags(self, file_id: bytes, count: int) -> list[tuple[int, bytes]]:
        rows = await self._all(
            "SELECT idx, tag FROM segments WHERE file_id = ? AND idx < ? ORDER BY idx", (file_id, count)
        )
        try:
            return [(int(idx), bytes(tag)) for idx, tag in rows]
        except (TypeError, ValueError):
            raise IntegrityError() from None

    async def create_resumable(self, upload: Resumable) -> None:
        u = upload
        await self._write(
            "INSERT INTO files (file_id, owner, state, name, seg_size, key_id, wrapped_key, created,"
            " tus_id, upload_length, upload_offset, tail, expires, metadata, header_tag)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (u.file_id, u.owner, STAGED, u.name, u.seg_size, u.key_id, u.wrapped_key, u.created)
            + (u.tus_id, u.length, u.offset, u.tail, u.expires, u.metadata, u.tag),
            upload=True,
        )

    async def get_resumable(self, owner: int, tus_id: str) -> Resumable | None:
        row = await self._one(
            "SELECT tus_id, file_id, owner, name, upload_length, upload_offset, seg_size, key_id,"
            " wrapped_key, tail, expires, metadata, created, header_tag FROM files"
            " WHERE tus_id = ? AND owner = ? AND state = ?",
            (tus_id, owner, STAGED),
        )
        if row is None:
            return None
        try:
            return Resumable(
                tus_id=str(row[0]),
                file_id=bytes(row[1]),
                owner=int(row[2]),
                name=str(row[3]),
                length=int(row[4]),
                offset=int(row[5]),
                seg_size=int(row[6]),
                key_id=int(row[7]),
                wrapped_key=bytes(row[8]),
                tail=None if row[9] is None else bytes(row[9]),
                expires=float(row[10]),
                metadata=str(row[11]),
                created=float(row[12]),
                tag=bytes(row[13]),
            )
        except (TypeError, ValueError):
            raise IntegrityError() from None

    async def save_progress(
        self, file_id: bytes, old_offset: int, new_offset: int, tail: bytes, expires: float
    ) -> bool:
        changed = await self._write(
            "UPDATE files SET upload_offset = ?, tail = ?, expires = ?"
            " WHERE file_id = ? AND state = ? AND upload_offset = ?",
            (new_offset, tail, expires, file_id, STAGED, old_offset),
            upload=True,
        )
        return changed == 1

    async def commit_file(self, stored: StoredFile) -> None:
        """Make a staged file live, durably: on disk before the upload's reply."""
        h = stored.header
        async with self._transaction(durable=True, upload=True) as db:
            await db.execute(
                "UPDATE files SET state = ? WHERE owner = ? AND name = ? AND state = ?",
                (DELETED, h.owner, h.name, LIVE),
            )
            cursor = await db.execute(
                "UPDATE files SET state = ?, name = ?, version = ?, suite = ?, seg_size = ?, size = ?,"
                " seg_count = ?, sha256 = ?, key_id = ?, wrapped_key = ?, header_tag = ?, created = ?,"
                " seg_root = ?,"
                " tus_id = NULL, upload_length = NULL, upload_offset = NULL, tail = NULL, expires = NULL"
                " WHERE file_id = ? AND owner = ? AND state = ?",
                (
                    LIVE,
                    h.name,
                    h.version,
                    h.suite,
                    h.seg_size,
                    h.size,
                    h.seg_count,
                    h.sha256,
                    stored.key_id,
                    stored.wrapped_key,
                    stored.header_tag,
                    h.created,
                    h.seg_root,
                    h.file_id,
                    h.owner,
                    STAGED,
                ),
            )
            if cursor.rowcount != 1:
                raise RuntimeError("commit of a file that is not staged")

    async def discard_file(self, file_id: bytes) -> None:
        await self._remove(file_id, STAGED)

    async def _remove(self, file_id: bytes, state: int, unpinned: bool = False) -> int:
        """Remove a file in ``state``: mark it DELETED, delete its segments in batches, then the
        row. A crash part-way leaves a DELETED row for the next purge; a file that is no longer
        in ``state`` (say, it committed meanwhile), or, if ``unpinned``, that a live process has
        pinned in the shared state, is left alone. Returns 1 if it removed it."""
        pinned = f" AND NOT {_PINNED}" if unpinned else ""
        changed = await self._write(
            f"UPDATE files SET state = ? WHERE file_id = ? AND state = ?{pinned}",
            (DELETED, file_id, state) + ((time.time(),) if unpinned else ()),
        )
        if changed != 1:
            return 0
        while True:
            async with self._locked() as db:
                cursor = await db.execute(
                    "DELETE FROM segments WHERE rowid IN"
                    " (SELECT rowid FROM segments WHERE file_id = ? LIMIT ?)",
                    (file_id, PURGE_BATCH),
                )
            if cursor.rowcount < PURGE_BATCH:
                break
        await self._write("DELETE FROM files WHERE file_id = ? AND state = ?", (file_id, DELETED))
        return 1

    async def get_file(self, owner: int, name: str) -> StoredFile | None:
        row = await self._one(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = ? AND name = ? AND state = ?",
            (owner, name, LIVE),
        )
        return _stored_file(row) if row else None

    async def list_files(self, owner: int) -> list[StoredFile]:
        rows = await self._all(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = ? AND state = ? ORDER BY name",
            (owner, LIVE),
        )
        return [_stored_file(row) for row in rows]

    async def files_after(self, owner: int, after: str | None, limit: int) -> list[StoredFile]:
        rows = await self._all(  # files_live_name; BINARY on UTF-8 is code point order
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = ? AND state = ? AND name > ?"
            " ORDER BY name LIMIT ?",
            (owner, LIVE, after or "", limit),
        )
        return [_stored_file(row) for row in rows]

    async def delete_file(self, owner: int, name: str) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE files SET state = ? WHERE owner = ? AND name = ? AND state = ?",
                (DELETED, owner, name, LIVE),
            )
            if cursor.rowcount != 1:
                return False
            await db.execute("DELETE FROM grants WHERE owner = ? AND name = ?", (owner, name))
            await db.execute(
                "INSERT OR IGNORE INTO revoked_links (token_hash, revoked)"
                " SELECT token_hash, ? FROM links WHERE owner = ? AND name = ?",
                (time.time(), owner, name),
            )
            await db.execute("DELETE FROM links WHERE owner = ? AND name = ?", (owner, name))
        return True

    async def get_user_by_id(self, user_id: int) -> User | None:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(row) if row else None

    async def update_user(self, user: User) -> None:
        await self._write(
            "UPDATE users SET password_hash = ?, key_id = ?, tag = ?, token_epoch = ?, disabled = ?"
            " WHERE id = ?",
            (user.password_hash, user.key_id, user.tag, user.token_epoch, user.disabled, user.id),
        )

    async def replace_user(self, old: User, new: User) -> bool:
        changed = await self._write(
            "UPDATE users SET password_hash = ?, key_id = ?, tag = ?, token_epoch = ?, disabled = ?"
            " WHERE id = ? AND tag = ?",
            (new.password_hash, new.key_id, new.tag, new.token_epoch, new.disabled, old.id, old.tag),
        )
        return changed == 1

    # ------------------------------------------------------------------ refresh tokens

    async def add_refresh(self, token: RefreshToken, prune_before: float) -> None:
        async with self._transaction() as db:
            await _insert_refresh(db, token)
            await _prune_refresh(db, token.user_id, prune_before)

    async def get_refresh(self, token_id: bytes) -> RefreshToken | None:
        row = await self._one(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE id = ?", (token_id,))
        return _record(RefreshToken, row) if row else None

    async def rotate_refresh(
        self, old: RefreshToken, used: RefreshToken, new: RefreshToken, prune_before: float
    ) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE refresh_tokens SET used = ?, key_id = ?, tag = ?"
                " WHERE id = ? AND tag = ? AND used IS NULL AND revoked IS NULL",
                (used.used, used.key_id, used.tag, old.id, old.tag),
            )
            if cursor.rowcount != 1:
                return False
            await _insert_refresh(db, new)
            await _prune_refresh(db, new.user_id, prune_before)
        return True

    async def revoke_refresh(
        self, user_id: int, family: str | None, revoke: Callable[[RefreshToken], RefreshToken]
    ) -> int:
        where = "user_id = ? AND used IS NULL AND revoked IS NULL"
        params: tuple[object, ...] = (user_id,)
        if family is not None:
            where, params = where + " AND family = ?", (user_id, family)
        async with self._transaction() as db:
            try:
                async with db.execute(
                    f"SELECT rowid, {_REFRESH_COLUMNS} FROM refresh_tokens WHERE {where}", params
                ) as cur:
                    rows = list(await cur.fetchall())
            except (sqlite3.DataError, sqlite3.OperationalError):
                raise IntegrityError() from None
            revoked = 0
            for rowid, *row in rows:
                try:
                    done = revoke(_record(RefreshToken, row))
                except IntegrityError:  # a column of the wrong type: unusable anyway, drop it
                    await db.execute("DELETE FROM refresh_tokens WHERE rowid = ?", (rowid,))
                    continue
                await db.execute(
                    "UPDATE refresh_tokens SET revoked = ?, key_id = ?, tag = ? WHERE rowid = ?",
                    (done.revoked, done.key_id, done.tag, rowid),
                )
                revoked += 1
        return revoked

    async def revoked_families(self, since: float) -> list[tuple[str, float]]:
        rows = await self._all(
            "SELECT family, MAX(revoked) FROM refresh_tokens WHERE revoked >= ? GROUP BY family", (since,)
        )
        return [(f, float(when)) for f, when in rows if isinstance(f, str) and isinstance(when, (int, float))]

    async def all_files(self) -> list[StoredFile]:
        rows = await self._all(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? ORDER BY owner, name", (LIVE,)
        )
        return [_stored_file(row) for row in rows]

    async def file_names(self) -> list[tuple[int, str]]:
        # The literal state matches the partial index files_live_name, which then answers
        # alone: a damaged page of the table itself does not stop this list.
        rows = await self._all(f"SELECT owner, name FROM files WHERE state = {LIVE} ORDER BY owner, name", ())
        return [(int(owner), str(name)) for owner, name in rows]

    async def wrapped_keys(self) -> list[tuple[bytes, int, bytes]]:
        rows = await self._all(
            "SELECT file_id, key_id, wrapped_key FROM files"
            " WHERE wrapped_key IS NOT NULL AND state IN (?, ?)",
            (LIVE, STAGED),
        )
        return [(bytes(fid), int(kid), bytes(wrapped)) for fid, kid, wrapped in rows]

    async def set_wrapped_key(self, file_id: bytes, old_key_id: int, key_id: int, wrapped: bytes) -> bool:
        changed = await self._write(
            "UPDATE files SET key_id = ?, wrapped_key = ? WHERE file_id = ? AND key_id = ?",
            (key_id, wrapped, file_id, old_key_id),
        )
        return changed == 1

    async def all_users(self) -> list[User]:
        rows = await self._all(f"SELECT {_USER_COLUMNS} FROM users", ())
        return [_user(row) for row in rows]

    async def all_grants(self) -> list[Grant]:
        return [_record(Grant, row) for row in await self._all(f"SELECT {_GRANT_COLUMNS} FROM grants", ())]

    async def all_links(self) -> list[Link]:
        return [_record(Link, row) for row in await self._all(f"SELECT {_LINK_COLUMNS} FROM links", ())]

    async def set_link_tag(self, link_id: str, key_id: int, tag: bytes) -> None:
        await self._write("UPDATE links SET key_id = ?, tag = ? WHERE id = ?", (key_id, tag, link_id))

    async def all_refresh(self) -> list[RefreshToken]:
        rows = await self._all(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens", ())
        return [_record(RefreshToken, row) for row in rows]

    async def set_refresh_tag(self, token_id: bytes, key_id: int, tag: bytes) -> None:
        await self._write(
            "UPDATE refresh_tokens SET key_id = ?, tag = ? WHERE id = ?", (key_id, tag, token_id)
        )

    async def key_ids_in_use(self) -> set[int]:
        rows = await self._all(
            "SELECT key_id FROM files WHERE wrapped_key IS NOT NULL UNION SELECT key_id FROM users"
            " UNION SELECT key_id FROM grants UNION SELECT key_id FROM links"
            " UNION SELECT key_id FROM refresh_tokens UNION SELECT key_id FROM audit",
            (),
        )
        return {int(row[0]) for row in rows}

    async def append_audit(self, build: Callable[[int, bytes], AuditEntry]) -> AuditEntry:
        """Number and chain the entry inside the insert's transaction, so writers in other
        processes (``run.py admin`` beside the server) interleave instead of colliding."""
        async with self._transaction() as db:
            async with db.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1") as cursor:
                last = await cursor.fetchone()
            seq = int(last[0]) + 1 if last else 1
            previous = bytes(last[1]) if last and isinstance(last[1], bytes) else bytes(32)
            e = build(seq, previous)
            await db.execute(
                f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.seq, e.at, e.actor, e.address, e.action, e.target, e.outcome, e.key_id, e.mac),
            )
        return e

    async def set_audit_mac(self, seq: int, key_id: int, mac: bytes) -> None:
        await self._write("UPDATE audit SET key_id = ?, mac = ? WHERE seq = ?", (key_id, mac, seq))

    async def audit_entries(self, after: int, limit: int) -> list[AuditEntry]:
        rows = await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [_record(AuditEntry, row) for row in rows]

    async def get_limits(self, user_id: int) -> tuple[int | None, int | None]:
        row = await self._one("SELECT quota, max_file_size FROM users WHERE id = ?", (user_id,))
        if row is None:
            return None, None
        quota, max_file_size = row
        if not all(v is None or (isinstance(v, int) and v >= 0) for v in (quota, max_file_size)):
            raise IntegrityError()
        return quota, max_file_size

    async def set_limits(self, username: str, quota: int | None, max_file_size: int | None) -> bool:
        changed = await self._write(
            "UPDATE users SET quota = ?, max_file_size = ? WHERE username = ?",
            (quota, max_file_size, username),
        )
        return changed == 1

    async def usage(self, owner: int) -> tuple[int, int]:
        row = await self._one(
            "SELECT COALESCE(SUM(CASE WHEN state = ? THEN size ELSE upload_length END), 0),"
            " COALESCE(SUM(state = ?), 0) FROM files"
            " WHERE owner = ? AND (state = ? OR (state = ? AND tus_id IS NOT NULL))",
            (LIVE, LIVE, owner, LIVE, STAGED),
        )
        return int(row[0]), int(row[1])

    async def put_grant(self, grant: Grant) -> bool:
        g = grant
        changed = await self._write(
            "INSERT OR REPLACE INTO grants (owner, name, grantee, created, key_id, tag)"
            f" SELECT ?, ?, ?, ?, ?, ? WHERE {_FILE_IS_LIVE}",
            (g.owner, g.name, g.grantee, g.created, g.key_id, g.tag, g.owner, g.name),
        )
        return changed == 1

    async def get_grant(self, owner: int, name: str, grantee: int) -> Grant | None:
        row = await self._one(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE owner = ? AND name = ? AND grantee = ?",
            (owner, name, grantee),
        )
        return _record(Grant, row) if row else None

    async def delete_grant(self, owner: int, name: str, grantee: int) -> bool:
        changed = await self._write(
            "DELETE FROM grants WHERE owner = ? AND name = ? AND grantee = ?", (owner, name, grantee)
        )
        return changed == 1

    async def grants_of(self, owner: int, name: str) -> list[Grant]:
        rows = await self._all(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE owner = ? AND name = ?",
            (owner, name),
        )
        return [_record(Grant, row) for row in rows]

    async def shared_files(self, grantee: int) -> list[tuple[Grant, StoredFile]]:
        """Every grant to ``grantee`` with the LIVE file it names, in one query."""
        grant_cols = ", ".join(f"g.{c.strip()}" for c in _GRANT_COLUMNS.split(","))
        file_cols = ", ".join(f"f.{c.strip()}" for c in _FILE_COLUMNS.split(","))
        rows = await self._all(
            f"SELECT {grant_cols}, {file_cols} FROM grants g JOIN files f"
            " ON f.owner = g.owner AND f.name = g.name AND f.state = ?"
            " WHERE g.grantee = ? ORDER BY g.owner, g.name",
            (LIVE, grantee),
        )
        width = len(_GRANT_COLUMNS.split(","))
        return [(_record(Grant, row[:width]), _stored_file(row[width:])) for row in rows]

    async def put_link(self, link: Link) -> bool:
        k = link
        changed = await self._write(
            f"INSERT INTO links ({_LINK_COLUMNS}) SELECT {', '.join('?' * 13)} WHERE {_FILE_IS_LIVE}",
            (k.id, k.token_hash, k.owner, k.name, k.created, k.expires, k.password_hash, k.max_downloads)
            + (k.bytes_served, k.failures, k.locked_until, k.key_id, k.tag, k.owner, k.name),
        )
        return changed == 1

    async def get_link(self, token_hash: bytes) -> Link | None:
        row = await self._one(f"SELECT {_LINK_COLUMNS} FROM links WHERE token_hash = ?", (token_hash,))
        return _record(Link, row) if row else None

    async def links_of(self, owner: int) -> list[Link]:
        rows = await self._all(
            f"SELECT {_LINK_COLUMNS} FROM links WHERE owner = ? ORDER BY created, id",
            (owner,),
        )
        return [_record(Link, row) for row in rows]

    async def links_after(
        self, owner: int, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[Link, StoredFile | None]]:
        created, link_id = after or (-1.0, "")
        rows = await self._all(  # links_created
            f"SELECT {_prefixed(_LINK_COLUMNS, 'l')}, {_prefixed(_FILE_COLUMNS, 'f')}"
            " FROM links l LEFT JOIN files f ON f.owner = l.owner AND f.name = l.name AND f.state = ?"
            " WHERE l.owner = ? AND (l.created > ? OR (l.created = ? AND l.id > ?))"
            " ORDER BY l.created, l.id LIMIT ?",
            (LIVE, owner, created, created, link_id, limit),
        )
        width = len(_LINK_COLUMNS.split(","))
        return [
            (_record(Link, row[:width]), None if row[width] is None else _stored_file(row[width:]))
            for row in rows
        ]

    async def shared_after(
        self, grantee: int, after: str | None, limit: int
    ) -> list[tuple[Grant, StoredFile, str]]:
        key = "(u.username || '/' || g.name) COLLATE BINARY"  # code point order, as UTF-8 bytes
        rows = await self._all(
            f"SELECT {_prefixed(_GRANT_COLUMNS, 'g')}, {_prefixed(_FILE_COLUMNS, 'f')}, u.username"
            " FROM grants g JOIN files f ON f.owner = g.owner AND f.name = g.name AND f.state = ?"
            f" JOIN users u ON u.id = g.owner WHERE g.grantee = ? AND {key} > ? ORDER BY {key} LIMIT ?",
            (LIVE, grantee, after or "", limit),
        )
        width = len(_GRANT_COLUMNS.split(","))
        return [(_record(Grant, row[:width]), _stored_file(row[width:-1]), str(row[-1])) for row in rows]

    async def delete_link(self, owner: int, link_id: str) -> bool:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO revoked_links (token_hash, revoked)"
                " SELECT token_hash, ? FROM links WHERE owner = ? AND id = ?",
                (time.time(), owner, link_id),
            )
            cursor = await db.execute("DELETE FROM links WHERE owner = ? AND id = ?", (owner, link_id))
            return cursor.rowcount == 1

    async def link_revoked(self, token_hash: bytes) -> bool:
        return await self._one("SELECT 1 FROM revoked_links WHERE token_hash = ?", (token_hash,)) is not None

    async def charge_link(self, link_id: str, nbytes: int) -> None:
        await self._write("UPDATE links SET bytes_served = bytes_served + ? WHERE id = ?", (nbytes, link_id))

    async def set_link_failures(self, link_id: str, failures: int, locked_until: float) -> None:
        await self._write(
            "UPDATE links SET failures = ?, locked_until = ? WHERE id = ?", (failures, locked_until, link_id)
        )

    async def add_link_failure(
        self, link_id: str, now: float, lock_out: Callable[[int, float], float]
    ) -> int:
        async with self._transaction() as db:
            async with db.execute("SELECT failures FROM links WHERE id = ?", (link_id,)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return 0
            failures = (row[0] if isinstance(row[0], int) else 0) + 1
            await db.execute(
                "UPDATE links SET failures = ?, locked_until = ? WHERE id = ?",
                (failures, lock_out(failures, now), link_id),
            )
        return failures

    async def read_segment(self, file_id: bytes, index: int, tag: bytes) -> bytes | None:
        row = await self._one("SELECT data FROM segments WHERE file_id = ? AND idx = ?", (file_id, index))
        return None if row is None else bytes(row[0])

    async def purge(self, keep: Collection[bytes], staged_too: bool = False, now: float = 0.0) -> int:
        """As FileStore.purge; a file pinned in the shared state (storage/sqlite_state.py: a
        transfer in another process) is kept too, checked again in the statement that starts
        removing it."""
        rows = await self._all(
            "SELECT file_id, state FROM files WHERE (state = ?"
            " OR (state = ? AND tus_id IS NOT NULL AND expires < ?)"
            f" OR (state = ? AND tus_id IS NULL AND ?)) AND NOT {_PINNED}",
            (DELETED, STAGED, now, STAGED, staged_too, time.time()),
        )
        victims = [(bytes(fid), int(state)) for fid, state in rows]
        removed = 0
        for file_id, state in victims:
            if file_id not in keep:  # a live view: a transfer may have pinned it meanwhile
                removed += await self._remove(file_id, state, unpinned=True)
        if staged_too and (removed or not self._orphans_checked):  # a full scan: not every time
            self._orphans_checked = True
            await self._write("DELETE FROM segments WHERE file_id NOT IN (SELECT file_id FROM files)", ())
        if removed:
            log.info("purged %d replaced, deleted, expired or abandoned file(s)", removed)
            self._give_back_soon()
        return removed

    def _give_back_soon(self) -> None:
        """give_back in the background: a delete answers without waiting for it. Calls while
        one runs fold into one more pass."""
        self._give_back_again = True
        if self._giving_back is None or self._giving_back.done():
            self._giving_back = asyncio.ensure_future(self._give_back_in_background())

    async def _give_back_in_background(self) -> None:
        while self._give_back_again:
            self._give_back_again = False
            try:
                await self.give_back()
            except VaultError as exc:  # the next purge tries again
                log.warning("giving free pages back to the file system failed: %s", exc.message)

    def _room_to_keep(self) -> bool:
        """Whether free pages may stay inside for the next uploads: only while the disk reserve
        is held and the file system has at least ``keep_free`` free besides (a disk that ran
        full gets every deleted byte back)."""
        return self._reserve.held and self._reserve.free() >= self._keep_free

    async def give_back(self) -> None:
        """Give the database's free pages back to the file system (a database made before
        auto_vacuum was set keeps them until `run.py admin compact`) beyond ``keep_free`` bytes,
        which the next uploads write into, and all of them when the disk is short
        (_room_to_keep); a batch per transaction so other writes go on between, then hold the
        disk reserve again if there is room. Moving a page in use into a free one costs a page
        of WAL: at most the deleted bytes."""
        if self._incremental:
            left = None
            gave = False
            while not self._closing:
                async with self._locked() as db:  # counted and given in one hold: no other pass between
                    rows = await db.execute_fetchall("PRAGMA freelist_count", ())
                    free = int(list(rows)[0][0])
                    keep = self._keep_free // self._page_size if self._room_to_keep() else 0
                    if free <= keep or free == left:  # none to give, or none given last time: stop
                        break
                    left = free
                    gave = True
                    await db.executescript(f"PRAGMA incremental_vacuum({min(free - keep, VACUUM_BATCH)})")
            if gave:
                async with self._locked() as db:  # the file shrinks when a checkpoint copies the WAL back
                    await db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._reserve.hold()

    # ------------------------------------------------------------------ invites and accounts

    async def add_invite(self, code_hash: bytes, key_id: int, expires: float) -> None:
        await self._write(
            "INSERT INTO invites (code_hash, key_id, created, expires) VALUES (?, ?, ?, ?)",
            (code_hash, key_id, time.time(), expires),
        )

    async def set_last_login(self, user_id: int, at: float) -> None:
        await self._write("UPDATE users SET last_login = ? WHERE id = ?", (at, user_id))

    async def accounts(self) -> list[Account]:
        """Every account with its LIVE files and their bytes (plaintext), by name."""
        rows = await self._all(
            "SELECT u.username, u.created, u.quota, u.disabled, u.last_login,"
            " COUNT(f.file_id), COALESCE(SUM(f.size), 0),"
            " (SELECT COALESCE(SUM(COALESCE(s.size, length(s.data))), 0) FROM files g JOIN segments s"
            "  ON s.file_id = g.file_id WHERE g.owner = u.id)"
            " FROM users u LEFT JOIN files f ON f.owner = u.id AND f.state = ?"
            " GROUP BY u.id ORDER BY u.username COLLATE NOCASE",
            (LIVE,),
        )
        return [_record(Account, row) for row in rows]

    async def stored_bytes(self, owner: int) -> int:
        row = await self._one(
            "SELECT COALESCE(SUM(COALESCE(s.size, length(s.data))), 0) FROM files f JOIN segments s"
            " ON s.file_id = f.file_id WHERE f.owner = ?",
            (owner,),
        )
        return int(row[0])

    async def delete_user(self, user_id: int) -> bool:
        """In one transaction: the account, its refresh tokens, its grants (given and received)
        and links (their secrets kept as revoked, so they answer 410), and every file of it marked
        DELETED for the next purge. False if there was no such account."""
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM users WHERE id = ?", (user_id,))
            if cursor.rowcount != 1:
                return False
            await db.execute("UPDATE files SET state = ? WHERE owner = ?", (DELETED, user_id))
            await db.execute("DELETE FROM grants WHERE owner = ? OR grantee = ?", (user_id, user_id))
            await db.execute(
                "INSERT OR IGNORE INTO revoked_links (token_hash, revoked)"
                " SELECT token_hash, ? FROM links WHERE owner = ?",
                (time.time(), user_id),
            )
            await db.execute("DELETE FROM links WHERE owner = ?", (user_id,))
            await db.execute("DELETE FROM refresh_tokens WHERE user_id = ?", (user_id,))
        return True

    async def backup(self, dest: Path) -> None:
        """A consistent copy of the database at ``dest`` (which must not exist), taken in one
        read transaction by ``VACUUM INTO`` while writers carry on (WAL); compacted as it goes."""
        async with self._lock:  # on the writer, whose statements are all finished
            await self._writer.execute("VACUUM INTO ?", (str(dest),))

    async def compact(self) -> tuple[int, int]:
        """VACUUM: give free pages back to the file system; (bytes before, bytes after)."""
        before = await self.database_size()
        async with self._lock:
            await self._writer.execute("VACUUM")
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before, await self.database_size()

    async def database_size(self) -> int:
        """Bytes of the database file (pages in use and free), not counting the WAL."""
        (count,) = await self._one("PRAGMA page_count", ())
        (size,) = await self._one("PRAGMA page_size", ())
        return int(count) * int(size)

    async def check(self) -> str:
        """SQLite's own structural check of the whole database: ``ok`` or what is wrong."""
        rows = await self._all("PRAGMA integrity_check", ())
        return "; ".join(str(row[0]) for row in rows)

    async def healthy(self) -> bool:
        """Whether the database answers a read of its schema and of the accounts table."""
        try:
            await self._one("SELECT (SELECT COUNT(*) FROM sqlite_master), (SELECT id FROM users LIMIT 1)", ())
        except IntegrityError:
            return False
        return True

    # ------------------------------------------------------------------ rows as they are (admin migrate)

    async def dump_rows(self, table: str) -> list[tuple[object, ...]]:
        """Every row of a table of vault/tables.py (or a state table), as stored."""
        names = columns(table) if table in TABLES else "*"
        return [tuple(row) for row in await self._all(f"SELECT {names} FROM {_known(table)}", ())]

    async def replace_rows(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """In one transaction: the table's rows become exactly ``rows``."""
        async with self._transaction() as db:
            await db.execute(f"DELETE FROM {_known(table)}")
            await db.executemany(_insert(table), rows)

    async def append_rows(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """Insert ``rows`` in one transaction (a key already there is an error)."""
        async with self._transaction() as db:
            await db.executemany(_insert(table), rows)

    async def file_row(self, file_id: bytes) -> tuple[object, ...] | None:
        row = await self._one(f"SELECT {columns('files')} FROM files WHERE file_id = ?", (file_id,))
        return None if row is None else tuple(row)

    async def file_states(self) -> list[tuple[bytes, int]]:
        """(file id, state) of every file row."""
        return [
            (bytes(fid), int(state)) for fid, state in await self._all("SELECT file_id, state FROM files", ())
        ]

    async def segment_rows(self, file_id: bytes) -> list[tuple[int, bytes, int | None]]:
        """(index, tag, object size: None where the bytes are in the row) of a file's segments."""
        rows = await self._all(
            "SELECT idx, tag, size FROM segments WHERE file_id = ? ORDER BY idx", (file_id,)
        )
        return [(int(i), bytes(t), None if n is None else int(n)) for i, t, n in rows]

    async def drop_file_rows(self, file_id: bytes) -> None:
        """Delete a file row and its segment rows at once (a migration's target, server stopped)."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM segments WHERE file_id = ?", (file_id,))
            await db.execute("DELETE FROM files WHERE file_id = ?", (file_id,))

    async def row_counts(self) -> dict[str, int]:
        counts = {}
        for table in TABLES:
            (count,) = await self._one(f"SELECT COUNT(*) FROM {table}", ())
            counts[table] = int(count)
        return counts


def _known(table: str) -> str:
    """A table name from the allow-list, for SQL."""
    if table not in TABLES and table not in NOT_COPIED:
        raise ValueError(f"unknown table {table!r}")
    return table


def _insert(table: str) -> str:
    return f"INSERT INTO {_known(table)} ({columns(table)}) VALUES ({', '.join('?' * len(TABLES[table]))})"
