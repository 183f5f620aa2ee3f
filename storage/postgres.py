"""The PostgreSQL implementation of vault.store.Store, on asyncpg (requirements-postgres.txt).

Same model as the SQLite store (storage/schema_postgres.sql mirrors storage/schema.sql), with
segments as ``bytea``. PostgreSQL runs many writers at once, so what SQLite's single writer gave
for free is asked for explicitly: a transaction-scoped advisory lock per (owner, name) makes a
commit, a delete and the grants and links beside a LIVE file one at a time per name (two
instances committing one name give exactly one LIVE version); one on the audit head makes the
chain contiguous; compare-and-set updates and ``SELECT ... FOR UPDATE`` keep the rest atomic.
Every row is checked and authenticated above the store exactly as with SQLite.

Unlike SQLite's ``secure_delete``, PostgreSQL does not zero deleted rows: a deleted file's
wrapped key stays in the table's pages until VACUUM reuses the space (README, Security model).
"""

import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from storage.sqlite import (
    _AUDIT_COLUMNS,
    _FILE_COLUMNS,
    _GRANT_COLUMNS,
    _LINK_COLUMNS,
    _REFRESH_COLUMNS,
    _USER_COLUMNS,
    DELETED,
    INVITE_REFUSED,
    LIVE,
    SCHEMA_VERSION,
    STAGED,
    _record,
    _stored_file,
)
from vault.errors import (
    ConfigError,
    Forbidden,
    IntegrityError,
    OffsetMismatch,
    StorageBusy,
    StorageFull,
    UserExists,
    VaultError,
)
from vault.pipeline import PIN
from vault.store import Account, AuditEntry, Grant, Link, RefreshToken, Resumable, StoredFile, User
from vault.tables import NOT_COPIED, REAL, TABLES, columns

log = logging.getLogger(__name__)
URL_VARIABLE = "VAULT_DATABASE_URL"
REQUIREMENTS = "requirements-postgres.txt"
POOL_SIZE = 10  # connections per process; a transfer holds one only for a statement
# Advisory lock keys: a fixed one for the schema and the audit head, one per (owner, name).
SCHEMA_LOCK, AUDIT_LOCK = 0x7661756C74000001, 0x7661756C74000002


def _file_is_live(owner: str, name: str) -> str:
    """A grant or link is written only beside a LIVE file of its name (as in storage/sqlite.py),
    and under the name's lock, so a delete of the file cannot slip in between."""
    return f"EXISTS (SELECT 1 FROM files WHERE owner = {owner} AND name = {name} AND state = {LIVE})"


def _pinned(now: str) -> str:
    """A file that a transfer of a live process pinned in the shared state (postgres_state.py)."""
    return (
        "EXISTS (SELECT 1 FROM state_holds h JOIN state_holders p ON p.holder = h.holder"
        f" WHERE h.kind = '{PIN}' AND h.key = encode(files.file_id, 'hex') AND p.expires > {now})"
    )


def _asyncpg() -> Any:
    """asyncpg, imported only when the PostgreSQL store is chosen (an optional dependency)."""
    try:
        import asyncpg  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ConfigError(
            f"storage: postgres needs the Python package asyncpg: pip install -r {REQUIREMENTS}"
        ) from None
    return asyncpg


def name_lock(owner: int, name: str) -> int:
    """The advisory lock key of the owner's file ``name`` (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"vault-name\0" + str(owner).encode() + b"\0" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _domain_error(exc: BaseException) -> VaultError | None:
    """The domain error for a PostgreSQL failure that is a state of the database, not a bug."""
    pg = _asyncpg()
    state = getattr(exc, "sqlstate", None) or ""
    if state == "53100":  # disk_full
        return StorageFull()
    if state.startswith("XX"):  # internal error, data or index corrupted
        return IntegrityError()
    busy = (
        state in ("55P03", "40P01", "40001", "57014", "53300", "57P01", "57P03")
        or state.startswith("08")
        or isinstance(exc, (pg.exceptions.InterfaceError, ConnectionError, OSError, TimeoutError))
    )
    return StorageBusy() if busy else None


@contextmanager
def _translated() -> Iterator[None]:
    pg = _asyncpg()
    try:
        yield
    except (pg.PostgresError, pg.exceptions.InterfaceError, OSError, TimeoutError) as exc:
        error = _domain_error(exc)
        if error is None:
            raise
        log.warning("database: %s", exc)
        raise error from None


def _count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 1`` or ``INSERT 0 1``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def _columns(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _params(count: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


def _typed(types: str) -> str:
    """``$1::T1, $2::T2, ...``: in ``INSERT ... SELECT`` PostgreSQL cannot infer the types."""
    return ", ".join(f"${i}::{kind.strip()}" for i, kind in enumerate(types.split(","), 1))


GRANT_TYPES = "BIGINT, TEXT, BIGINT, FLOAT8, BIGINT, BYTEA"  # _GRANT_COLUMNS
LINK_TYPES = "TEXT, BYTEA, BIGINT, TEXT, FLOAT8, FLOAT8, BYTEA, BIGINT, BIGINT, BIGINT, FLOAT8, BIGINT, BYTEA"


async def _insert_refresh(db: Any, t: RefreshToken) -> None:
    await db.execute(
        f"INSERT INTO refresh_tokens ({_REFRESH_COLUMNS}) VALUES ({_params(10)})",
        t.id,
        t.user_id,
        t.family,
        t.epoch,
        t.created,
        t.expires,
        t.used,
        t.revoked,
        t.key_id,
        t.tag,
    )


async def _prune_refresh(db: Any, user_id: int, before: float) -> None:
    await db.execute("DELETE FROM refresh_tokens WHERE user_id = $1 AND expires < $2", user_id, before)


async def _revoke_links(db: Any, where: str, *args: object) -> int:
    """Remember the secrets of the links matching ``where`` (on $1...) as revoked, so they
    answer 410, then drop those links; how many there were."""
    now = f"${len(args) + 1}"
    await db.execute(
        f"INSERT INTO revoked_links (token_hash, revoked) SELECT token_hash, {now} FROM links"
        f" WHERE {where} ON CONFLICT DO NOTHING",
        *args,
        time.time(),
    )
    return _count(await db.execute(f"DELETE FROM links WHERE {where}", *args))


class PostgresStore:
    def __init__(self, pool: Any, busy_timeout: float) -> None:
        self._pool = pool
        self._busy_timeout = busy_timeout
        self._orphans_checked = False  # purge has looked for segments without a file row

    @classmethod
    async def open(cls, url: str, busy_timeout: float = 10.0, pool_size: int = POOL_SIZE) -> "PostgresStore":
        """Connect (a pool) and create or check the schema. ``busy_timeout`` bounds every wait
        for a lock (``lock_timeout``): past it the write is StorageBusy (503)."""
        pg = _asyncpg()
        settings = {"lock_timeout": str(int(busy_timeout * 1000)), "application_name": "vault"}
        with _translated():
            pool = await pg.create_pool(
                url, min_size=1, max_size=pool_size, server_settings=settings, command_timeout=None
            )
        try:
            with _translated():
                await _prepare(pool)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, busy_timeout)

    @property
    def pool(self) -> Any:
        """The connection pool (storage/postgres_state.py shares it)."""
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """One write transaction (READ COMMITTED; committed durably: synchronous_commit on)."""
        with _translated():
            async with self._pool.acquire() as db, db.transaction():
                yield db

    async def _all(self, sql: str, *args: object) -> list[Any]:
        with _translated():
            return [tuple(row) for row in await self._pool.fetch(sql, *args)]

    async def _one(self, sql: str, *args: object) -> Any:
        rows = await self._all(sql, *args)
        return rows[0] if rows else None

    async def _write(self, sql: str, *args: object) -> int:
        with _translated():
            return _count(await self._pool.execute(sql, *args))

    # ------------------------------------------------------------------ accounts

    async def create_user(self, user: User, invite: bytes | None = None) -> None:
        now = time.time()
        pg = _asyncpg()
        async with self._transaction() as db:
            if invite is not None:
                used = await db.execute(
                    "UPDATE invites SET used = $1, user_id = $2 WHERE code_hash = $3 AND used IS NULL"
                    " AND expires > $1",
                    now,
                    user.id,
                    invite,
                )
                if _count(used) != 1:
                    raise Forbidden(INVITE_REFUSED)
            try:
                await db.execute(
                    "INSERT INTO users (id, username, password_hash, key_id, tag, created)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    user.id,
                    user.username,
                    user.password_hash,
                    user.key_id,
                    user.tag,
                    now,
                )
            except pg.UniqueViolationError:
                raise UserExists() from None  # the rollback gives the invite back

    async def get_user(self, username: str) -> User | None:
        row = await self._one(
            f"SELECT {_USER_COLUMNS} FROM users WHERE lower(username) = lower($1)", username
        )
        return _record(User, row) if row else None

    async def get_user_by_id(self, user_id: int) -> User | None:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
        return _record(User, row) if row else None

    async def update_user(self, user: User) -> None:
        await self._write(
            "UPDATE users SET password_hash = $1, key_id = $2, tag = $3, token_epoch = $4, disabled = $5"
            " WHERE id = $6",
            user.password_hash,
            user.key_id,
            user.tag,
            user.token_epoch,
            user.disabled,
            user.id,
        )

    async def replace_user(self, old: User, new: User) -> bool:
        changed = await self._write(
            "UPDATE users SET password_hash = $1, key_id = $2, tag = $3, token_epoch = $4, disabled = $5"
            " WHERE id = $6 AND tag = $7",
            new.password_hash,
            new.key_id,
            new.tag,
            new.token_epoch,
            new.disabled,
            old.id,
            old.tag,
        )
        return changed == 1

    async def add_invite(self, code_hash: bytes, key_id: int, expires: float) -> None:
        await self._write(
            "INSERT INTO invites (code_hash, key_id, created, expires) VALUES ($1, $2, $3, $4)",
            code_hash,
            key_id,
            time.time(),
            expires,
        )

    async def set_last_login(self, user_id: int, at: float) -> None:
        await self._write("UPDATE users SET last_login = $1 WHERE id = $2", at, user_id)

    async def get_limits(self, user_id: int) -> tuple[int | None, int | None]:
        row = await self._one("SELECT quota, max_file_size FROM users WHERE id = $1", user_id)
        if row is None:
            return None, None
        quota, max_file_size = row
        if not all(v is None or v >= 0 for v in (quota, max_file_size)):
            raise IntegrityError()
        return quota, max_file_size

    async def set_limits(self, username: str, quota: int | None, max_file_size: int | None) -> bool:
        changed = await self._write(
            "UPDATE users SET quota = $1, max_file_size = $2 WHERE lower(username) = lower($3)",
            quota,
            max_file_size,
            username,
        )
        return changed == 1

    async def accounts(self) -> list[Account]:
        rows = await self._all(
            "SELECT u.username, u.created, u.quota, u.disabled, u.last_login,"
            " COUNT(f.file_id), COALESCE(SUM(f.size), 0)::BIGINT,"
            " (SELECT COALESCE(SUM(COALESCE(s.size, length(s.data))), 0)::BIGINT FROM files g JOIN segments s"
            "  ON s.file_id = g.file_id WHERE g.owner = u.id)"
            f" FROM users u LEFT JOIN files f ON f.owner = u.id AND f.state = {LIVE}"
            " GROUP BY u.id ORDER BY lower(u.username)"
        )
        return [_record(Account, row) for row in rows]

    async def delete_user(self, user_id: int) -> bool:
        async with self._transaction() as db:
            if _count(await db.execute("DELETE FROM users WHERE id = $1", user_id)) != 1:
                return False
            await db.execute(f"UPDATE files SET state = {DELETED} WHERE owner = $1", user_id)
            await db.execute("DELETE FROM grants WHERE owner = $1 OR grantee = $1", user_id)
            await _revoke_links(db, "owner = $1", user_id)
            await db.execute("DELETE FROM refresh_tokens WHERE user_id = $1", user_id)
        return True

    async def all_users(self) -> list[User]:
        return [_record(User, row) for row in await self._all(f"SELECT {_USER_COLUMNS} FROM users")]

    # ------------------------------------------------------------------ refresh tokens

    async def add_refresh(self, token: RefreshToken, prune_before: float) -> None:
        async with self._transaction() as db:
            await _insert_refresh(db, token)
            await _prune_refresh(db, token.user_id, prune_before)

    async def get_refresh(self, token_id: bytes) -> RefreshToken | None:
        row = await self._one(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE id = $1", token_id)
        return _record(RefreshToken, row) if row else None

    async def rotate_refresh(
        self, old: RefreshToken, used: RefreshToken, new: RefreshToken, prune_before: float
    ) -> bool:
        async with self._transaction() as db:
            changed = await db.execute(
                "UPDATE refresh_tokens SET used = $1, key_id = $2, tag = $3"
                " WHERE id = $4 AND tag = $5 AND used IS NULL AND revoked IS NULL",
                used.used,
                used.key_id,
                used.tag,
                old.id,
                old.tag,
            )
            if _count(changed) != 1:
                return False
            await _insert_refresh(db, new)
            await _prune_refresh(db, new.user_id, prune_before)
        return True

    async def revoke_refresh(
        self, user_id: int, family: str | None, revoke: Callable[[RefreshToken], RefreshToken]
    ) -> int:
        where = "user_id = $1 AND used IS NULL AND revoked IS NULL"
        args: tuple[object, ...] = (user_id,)
        if family is not None:
            where, args = where + " AND family = $2", (user_id, family)
        revoked = 0
        async with self._transaction() as db:
            rows = await db.fetch(
                f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE {where} FOR UPDATE", *args
            )
            for row in rows:
                done = revoke(_record(RefreshToken, tuple(row)))
                await db.execute(
                    "UPDATE refresh_tokens SET revoked = $1, key_id = $2, tag = $3 WHERE id = $4",
                    done.revoked,
                    done.key_id,
                    done.tag,
                    done.id,
                )
                revoked += 1
        return revoked

    async def revoked_families(self, since: float) -> list[tuple[str, float]]:
        rows = await self._all(
            "SELECT family, MAX(revoked) FROM refresh_tokens WHERE revoked >= $1 GROUP BY family", since
        )
        return [(str(family), float(when)) for family, when in rows]

    async def all_refresh(self) -> list[RefreshToken]:
        rows = await self._all(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens")
        return [_record(RefreshToken, row) for row in rows]

    async def set_refresh_tag(self, token_id: bytes, key_id: int, tag: bytes) -> None:
        await self._write(
            "UPDATE refresh_tokens SET key_id = $1, tag = $2 WHERE id = $3", key_id, tag, token_id
        )

    # ------------------------------------------------------------------ files and segments

    async def stage_file(self, file_id: bytes, owner: int, created: float) -> None:
        await self._write(
            f"INSERT INTO files (file_id, owner, state, created) VALUES ($1, $2, {STAGED}, $3)",
            file_id,
            owner,
            created,
        )

    async def put_segment(
        self, file_id: bytes, index: int, tag: bytes, blob: bytes | bytearray, size: int | None = None
    ) -> None:
        """Store (or replace) a segment of a staged file; a segment a resumable upload has
        already saved (wholly below its stored offset) is never replaced (OffsetMismatch)."""
        written = await self._write(
            "INSERT INTO segments (file_id, idx, tag, data, size)"
            " SELECT $1::BYTEA, $2::BIGINT, $3::BYTEA, $4::BYTEA, $5::BIGINT"
            f" WHERE NOT EXISTS (SELECT 1 FROM files WHERE file_id = $1 AND state = {STAGED}"
            " AND upload_offset >= ($2 + 1) * seg_size)"
            " ON CONFLICT (file_id, idx) DO UPDATE SET tag = EXCLUDED.tag, data = EXCLUDED.data,"
            " size = EXCLUDED.size",
            file_id,
            index,
            tag,
            bytes(blob),
            size,
        )
        if written != 1:
            raise OffsetMismatch("This upload has moved on; ask HEAD for its offset")

    async def read_tags(self, file_id: bytes, count: int) -> list[tuple[int, bytes]]:
        rows = await self._all(
            "SELECT idx, tag FROM segments WHERE file_id = $1 AND idx < $2 ORDER BY idx", file_id, count
        )
        return [(int(idx), bytes(tag)) for idx, tag in rows]

    async def read_segments(self, file_id: bytes, first: int, count: int) -> list[tuple[int, bytes]]:
        rows = await self._all(
            "SELECT idx, data FROM segments WHERE file_id = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
            file_id,
            first,
            first + count,
        )
        return [(int(idx), data) for idx, data in rows]

    async def read_segment(self, file_id: bytes, index: int, tag: bytes) -> bytes | None:
        row = await self._one("SELECT data FROM segments WHERE file_id = $1 AND idx = $2", file_id, index)
        return None if row is None else bytes(row[0])

    async def commit_file(self, stored: StoredFile) -> None:
        """Make a staged file LIVE in one transaction, the name's lock held: commits of one
        name, from any instance, take turns, and each replaces the one before."""
        h = stored.header
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", name_lock(h.owner, h.name))
            await db.execute(
                f"UPDATE files SET state = {DELETED} WHERE owner = $1 AND name = $2 AND state = {LIVE}",
                h.owner,
                h.name,
            )
            changed = await db.execute(
                f"UPDATE files SET state = {LIVE}, name = $1, version = $2, suite = $3, seg_size = $4,"
                " size = $5, seg_count = $6, sha256 = $7, key_id = $8, wrapped_key = $9, header_tag = $10,"
                " created = $11, seg_root = $12, tus_id = NULL, upload_length = NULL,"
                " upload_offset = NULL, tail = NULL, expires = NULL"
                f" WHERE file_id = $13 AND owner = $14 AND state = {STAGED}",
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
            )
            if _count(changed) != 1:
                raise RuntimeError("commit of a file that is not staged")

    async def discard_file(self, file_id: bytes) -> None:
        await self._remove(file_id, STAGED)

    async def _remove(self, file_id: bytes, state: int, unpinned: bool = False) -> int:
        """Mark the file DELETED if it is still in ``state`` (and, if ``unpinned``, no live
        process pins it in the shared state), then drop its segments and row (a crash part-way
        leaves a DELETED row for the next purge). 1 if it removed it."""
        pinned = f" AND NOT {_pinned('$3')}" if unpinned else ""
        changed = await self._write(
            f"UPDATE files SET state = {DELETED} WHERE file_id = $1 AND state = $2{pinned}",
            file_id,
            state,
            *((time.time(),) if unpinned else ()),
        )
        if changed != 1:
            return 0
        async with self._transaction() as db:
            await db.execute("DELETE FROM segments WHERE file_id = $1", file_id)
            await db.execute(f"DELETE FROM files WHERE file_id = $1 AND state = {DELETED}", file_id)
        return 1

    async def get_file(self, owner: int, name: str) -> StoredFile | None:
        row = await self._one(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = $1 AND name = $2 AND state = {LIVE}",
            owner,
            name,
        )
        return _stored_file(row) if row else None

    async def list_files(self, owner: int) -> list[StoredFile]:
        rows = await self._all(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = $1 AND state = {LIVE}"
            ' ORDER BY name COLLATE "C"',
            owner,
        )
        return [_stored_file(row) for row in rows]

    async def files_after(self, owner: int, after: str | None, limit: int) -> list[StoredFile]:
        rows = await self._all(  # files_live_name_c: "C" on UTF-8 is code point order
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = $1 AND state = {LIVE}"
            ' AND name COLLATE "C" > $2 ORDER BY name COLLATE "C" LIMIT $3',
            owner,
            after or "",
            limit,
        )
        return [_stored_file(row) for row in rows]

    async def all_files(self) -> list[StoredFile]:
        rows = await self._all(
            f'SELECT {_FILE_COLUMNS} FROM files WHERE state = {LIVE} ORDER BY owner, name COLLATE "C"'
        )
        return [_stored_file(row) for row in rows]

    async def file_names(self) -> list[tuple[int, str]]:
        rows = await self._all(
            f'SELECT owner, name FROM files WHERE state = {LIVE} ORDER BY owner, name COLLATE "C"'
        )
        return [(int(row[0]), str(row[1])) for row in rows]

    async def delete_file(self, owner: int, name: str) -> bool:
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", name_lock(owner, name))
            changed = await db.execute(
                f"UPDATE files SET state = {DELETED} WHERE owner = $1 AND name = $2 AND state = {LIVE}",
                owner,
                name,
            )
            if _count(changed) != 1:
                return False
            await db.execute("DELETE FROM grants WHERE owner = $1 AND name = $2", owner, name)
            await _revoke_links(db, "owner = $1 AND name = $2", owner, name)
        return True

    async def stored_bytes(self, owner: int) -> int:
        row = await self._one(
            "SELECT COALESCE(SUM(COALESCE(s.size, length(s.data))), 0)::BIGINT FROM files f JOIN segments s"
            " ON s.file_id = f.file_id WHERE f.owner = $1",
            owner,
        )
        return int(row[0])

    async def usage(self, owner: int) -> tuple[int, int]:
        row = await self._one(
            f"SELECT COALESCE(SUM(CASE WHEN state = {LIVE} THEN size ELSE upload_length END), 0)::BIGINT,"
            f" COUNT(*) FILTER (WHERE state = {LIVE}) FROM files"
            f" WHERE owner = $1 AND (state = {LIVE} OR (state = {STAGED} AND tus_id IS NOT NULL))",
            owner,
        )
        return int(row[0]), int(row[1])

    async def purge(self, keep: Collection[bytes], staged_too: bool = False, now: float = 0.0) -> int:
        """As FileStore.purge; a file pinned in the shared state (storage/postgres_state.py: a
        transfer in this or another instance) is kept too, checked again in the statement that
        starts removing it."""
        rows = await self._all(
            f"SELECT file_id, state FROM files WHERE (state = {DELETED}"
            f" OR (state = {STAGED} AND tus_id IS NOT NULL AND expires < $1)"
            f" OR (state = {STAGED} AND tus_id IS NULL AND $2)) AND NOT {_pinned('$3')}",
            now,
            staged_too,
            time.time(),
        )
        removed = 0
        for file_id, state in rows:
            if bytes(file_id) not in keep:  # a live view: a transfer may have pinned it meanwhile
                removed += await self._remove(bytes(file_id), int(state), unpinned=True)
        if staged_too and (removed or not self._orphans_checked):  # a full scan: not every time
            self._orphans_checked = True
            await self._write(
                "DELETE FROM segments s WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.file_id = s.file_id)"
            )
        if removed:
            log.info("purged %d replaced, deleted, expired or abandoned file(s)", removed)
        return removed

    async def wrapped_keys(self) -> list[tuple[bytes, int, bytes]]:
        rows = await self._all(
            "SELECT file_id, key_id, wrapped_key FROM files"
            f" WHERE wrapped_key IS NOT NULL AND state IN ({LIVE}, {STAGED})"
        )
        return [(bytes(fid), int(kid), bytes(wrapped)) for fid, kid, wrapped in rows]

    async def set_wrapped_key(self, file_id: bytes, old_key_id: int, key_id: int, wrapped: bytes) -> bool:
        changed = await self._write(
            "UPDATE files SET key_id = $1, wrapped_key = $2 WHERE file_id = $3 AND key_id = $4",
            key_id,
            wrapped,
            file_id,
            old_key_id,
        )
        return changed == 1

    async def key_ids_in_use(self) -> set[int]:
        rows = await self._all(
            "SELECT key_id FROM files WHERE wrapped_key IS NOT NULL UNION SELECT key_id FROM users"
            " UNION SELECT key_id FROM grants UNION SELECT key_id FROM links"
            " UNION SELECT key_id FROM refresh_tokens UNION SELECT key_id FROM audit"
        )
        return {int(row[0]) for row in rows}

    # ------------------------------------------------------------------ resumable uploads

    async def create_resumable(self, upload: Resumable) -> None:
        u = upload
        await self._write(
            "INSERT INTO files (file_id, owner, state, name, seg_size, key_id, wrapped_key, created,"
            " tus_id, upload_length, upload_offset, tail, expires, metadata, header_tag)"
            f" VALUES ($1, $2, {STAGED}, {_params(12, 3)})",
            u.file_id,
            u.owner,
            u.name,
            u.seg_size,
            u.key_id,
            u.wrapped_key,
            u.created,
            u.tus_id,
            u.length,
            u.offset,
            u.tail,
            u.expires,
            u.metadata,
            u.tag,
        )

    async def get_resumable(self, owner: int, tus_id: str) -> Resumable | None:
        row = await self._one(
            "SELECT tus_id, file_id, owner, name, upload_length, upload_offset, seg_size, key_id,"
            " wrapped_key, tail, expires, metadata, created, header_tag FROM files"
            f" WHERE tus_id = $1 AND owner = $2 AND state = {STAGED}",
            tus_id,
            owner,
        )
        return _record(Resumable, row) if row else None

    async def save_progress(
        self, file_id: bytes, old_offset: int, new_offset: int, tail: bytes, expires: float
    ) -> bool:
        changed = await self._write(
            "UPDATE files SET upload_offset = $1, tail = $2, expires = $3"
            f" WHERE file_id = $4 AND state = {STAGED} AND upload_offset = $5",
            new_offset,
            tail,
            expires,
            file_id,
            old_offset,
        )
        return changed == 1

    # ------------------------------------------------------------------ grants and links

    async def put_grant(self, grant: Grant) -> bool:
        g = grant
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", name_lock(g.owner, g.name))
            changed = await db.execute(
                "INSERT INTO grants (owner, name, grantee, created, key_id, tag)"
                f" SELECT {_typed(GRANT_TYPES)} WHERE {_file_is_live('$1', '$2')}"
                " ON CONFLICT (owner, name, grantee) DO UPDATE SET created = EXCLUDED.created,"
                " key_id = EXCLUDED.key_id, tag = EXCLUDED.tag",
                g.owner,
                g.name,
                g.grantee,
                g.created,
                g.key_id,
                g.tag,
            )
        return _count(changed) == 1

    async def get_grant(self, owner: int, name: str, grantee: int) -> Grant | None:
        row = await self._one(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE owner = $1 AND name = $2 AND grantee = $3",
            owner,
            name,
            grantee,
        )
        return _record(Grant, row) if row else None

    async def delete_grant(self, owner: int, name: str, grantee: int) -> bool:
        changed = await self._write(
            "DELETE FROM grants WHERE owner = $1 AND name = $2 AND grantee = $3", owner, name, grantee
        )
        return changed == 1

    async def grants_of(self, owner: int, name: str) -> list[Grant]:
        rows = await self._all(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE owner = $1 AND name = $2", owner, name
        )
        return [_record(Grant, row) for row in rows]

    async def all_grants(self) -> list[Grant]:
        return [_record(Grant, row) for row in await self._all(f"SELECT {_GRANT_COLUMNS} FROM grants")]

    async def shared_files(self, grantee: int) -> list[tuple[Grant, StoredFile]]:
        rows = await self._all(
            f"SELECT {_columns(_GRANT_COLUMNS, 'g')}, {_columns(_FILE_COLUMNS, 'f')}"
            " FROM grants g JOIN files f"
            f" ON f.owner = g.owner AND f.name = g.name AND f.state = {LIVE}"
            ' WHERE g.grantee = $1 ORDER BY g.owner, g.name COLLATE "C"',
            grantee,
        )
        width = len(_GRANT_COLUMNS.split(","))
        return [(_record(Grant, row[:width]), _stored_file(row[width:])) for row in rows]

    async def put_link(self, link: Link) -> bool:
        k = link
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", name_lock(k.owner, k.name))
            changed = await db.execute(
                f"INSERT INTO links ({_LINK_COLUMNS}) SELECT {_params(13)} WHERE {_file_is_live('$3', '$4')}",
                *dataclasses.astuple(k),
            )
        return _count(changed) == 1

    async def get_link(self, token_hash: bytes) -> Link | None:
        row = await self._one(f"SELECT {_LINK_COLUMNS} FROM links WHERE token_hash = $1", token_hash)
        return _record(Link, row) if row else None

    async def links_of(self, owner: int) -> list[Link]:
        rows = await self._all(
            f'SELECT {_LINK_COLUMNS} FROM links WHERE owner = $1 ORDER BY created, id COLLATE "C"', owner
        )
        return [_record(Link, row) for row in rows]

    async def links_after(
        self, owner: int, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[Link, StoredFile | None]]:
        created, link_id = after or (-1.0, "")
        rows = await self._all(  # links_created
            f"SELECT {_columns(_LINK_COLUMNS, 'l')}, {_columns(_FILE_COLUMNS, 'f')}"
            f" FROM links l LEFT JOIN files f ON f.owner = l.owner AND f.name = l.name AND f.state = {LIVE}"
            ' WHERE l.owner = $1 AND (l.created, l.id COLLATE "C") > ($2, $3)'
            ' ORDER BY l.created, l.id COLLATE "C" LIMIT $4',
            owner,
            created,
            link_id,
            limit,
        )
        width = len(_LINK_COLUMNS.split(","))
        return [
            (_record(Link, row[:width]), None if row[width] is None else _stored_file(row[width:]))
            for row in rows
        ]

    async def shared_after(
        self, grantee: int, after: str | None, limit: int
    ) -> list[tuple[Grant, StoredFile, str]]:
        key = "(u.username || '/' || g.name) COLLATE \"C\""  # code point order, as UTF-8 bytes
        rows = await self._all(
            f"SELECT {_columns(_GRANT_COLUMNS, 'g')}, {_columns(_FILE_COLUMNS, 'f')}, u.username"
            f" FROM grants g JOIN files f ON f.owner = g.owner AND f.name = g.name AND f.state = {LIVE}"
            f" JOIN users u ON u.id = g.owner WHERE g.grantee = $1 AND {key} > $2 ORDER BY {key} LIMIT $3",
            grantee,
            after or "",
            limit,
        )
        width = len(_GRANT_COLUMNS.split(","))
        return [(_record(Grant, row[:width]), _stored_file(row[width:-1]), str(row[-1])) for row in rows]

    async def all_links(self) -> list[Link]:
        return [_record(Link, row) for row in await self._all(f"SELECT {_LINK_COLUMNS} FROM links")]

    async def delete_link(self, owner: int, link_id: str) -> bool:
        async with self._transaction() as db:
            return await _revoke_links(db, "owner = $1 AND id = $2", owner, link_id) == 1

    async def link_revoked(self, token_hash: bytes) -> bool:
        return await self._one("SELECT 1 FROM revoked_links WHERE token_hash = $1", token_hash) is not None

    async def charge_link(self, link_id: str, nbytes: int) -> None:
        await self._write("UPDATE links SET bytes_served = bytes_served + $1 WHERE id = $2", nbytes, link_id)

    async def set_link_failures(self, link_id: str, failures: int, locked_until: float) -> None:
        await self._write(
            "UPDATE links SET failures = $1, locked_until = $2 WHERE id = $3", failures, locked_until, link_id
        )

    async def add_link_failure(
        self, link_id: str, now: float, lock_out: Callable[[int, float], float]
    ) -> int:
        async with self._transaction() as db:
            current = await db.fetchval("SELECT failures FROM links WHERE id = $1 FOR UPDATE", link_id)
            if current is None:
                return 0
            failures = int(current) + 1
            await db.execute(
                "UPDATE links SET failures = $1, locked_until = $2 WHERE id = $3",
                failures,
                lock_out(failures, now),
                link_id,
            )
        return failures

    async def set_link_tag(self, link_id: str, key_id: int, tag: bytes) -> None:
        await self._write("UPDATE links SET key_id = $1, tag = $2 WHERE id = $3", key_id, tag, link_id)

    # ------------------------------------------------------------------ audit

    async def append_audit(self, build: Callable[[int, bytes], AuditEntry]) -> AuditEntry:
        """Number and chain the entry under the audit head's lock, so appends from every
        instance (and ``run.py admin``) queue and form one contiguous chain."""
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
            last = await db.fetchrow("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1")
            seq = int(last[0]) + 1 if last else 1
            e = build(seq, bytes(last[1]) if last else bytes(32))
            await db.execute(
                f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES ({_params(9)})", *dataclasses.astuple(e)
            )
        return e

    async def set_audit_mac(self, seq: int, key_id: int, mac: bytes) -> None:
        await self._write("UPDATE audit SET key_id = $1, mac = $2 WHERE seq = $3", key_id, mac, seq)

    async def audit_entries(self, after: int, limit: int) -> list[AuditEntry]:
        rows = await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
        return [_record(AuditEntry, row) for row in rows]

    # ------------------------------------------------------------------ operations

    async def backup(self, dest: Path) -> None:
        """Not done by vault: PostgreSQL has its own tools (pg_dump, base backups)."""
        raise ConfigError("storage: postgres is backed up with PostgreSQL's own tools (pg_dump; README)")

    async def compact(self) -> tuple[int, int]:
        """VACUUM FULL: rewrite the tables and give free space back; (bytes before, after)."""
        before = await self.database_size()
        with _translated():
            await self._pool.execute("VACUUM FULL")
        return before, await self.database_size()

    async def database_size(self) -> int:
        row = await self._one("SELECT pg_database_size(current_database())")
        return int(row[0])

    async def check(self) -> str:
        """PostgreSQL's view of the schema: ``ok``, or the indexes it marks invalid."""
        rows = await self._all(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE NOT i.indisvalid OR NOT i.indisready"
        )
        return "ok" if not rows else "invalid indexes: " + ", ".join(str(r[0]) for r in rows)

    async def healthy(self) -> bool:
        try:
            await self._one("SELECT (SELECT id FROM users LIMIT 1)")
        except (IntegrityError, StorageBusy):
            return False
        return True

    # ------------------------------------------------------------------ rows as they are (admin migrate)

    async def dump_rows(self, table: str) -> list[tuple[object, ...]]:
        """Every row of a table of vault/tables.py (or a state table), as stored."""
        names = columns(table) if table in TABLES else "*"
        return await self._all(f"SELECT {names} FROM {_known(table)}")

    async def replace_rows(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """In one transaction: the table's rows become exactly ``rows``."""
        async with self._transaction() as db:
            await db.execute(f"DELETE FROM {_known(table)}")
            await db.executemany(_insert(table), [_as_stored(table, row) for row in rows])

    async def append_rows(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """Insert ``rows`` in one transaction (a key already there is an error)."""
        async with self._transaction() as db:
            await db.executemany(_insert(table), [_as_stored(table, row) for row in rows])

    async def file_row(self, file_id: bytes) -> tuple[object, ...] | None:
        row = await self._one(f"SELECT {columns('files')} FROM files WHERE file_id = $1", file_id)
        return None if row is None else tuple(row)

    async def file_states(self) -> list[tuple[bytes, int]]:
        """(file id, state) of every file row."""
        return [
            (bytes(fid), int(state)) for fid, state in await self._all("SELECT file_id, state FROM files")
        ]

    async def segment_rows(self, file_id: bytes) -> list[tuple[int, bytes, int | None]]:
        """(index, tag, object size: None where the bytes are in the row) of a file's segments."""
        rows = await self._all("SELECT idx, tag, size FROM segments WHERE file_id = $1 ORDER BY idx", file_id)
        return [(int(i), bytes(t), None if n is None else int(n)) for i, t, n in rows]

    async def drop_file_rows(self, file_id: bytes) -> None:
        """Delete a file row and its segment rows at once (a migration's target, server stopped)."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM segments WHERE file_id = $1", file_id)
            await db.execute("DELETE FROM files WHERE file_id = $1", file_id)

    async def row_counts(self) -> dict[str, int]:
        return {table: int((await self._one(f"SELECT COUNT(*) FROM {table}"))[0]) for table in TABLES}


def _known(table: str) -> str:
    """A table name from the allow-list, for SQL."""
    if table not in TABLES and table not in NOT_COPIED:
        raise ValueError(f"unknown table {table!r}")
    return table


def _insert(table: str) -> str:
    return f"INSERT INTO {_known(table)} ({columns(table)}) VALUES ({_params(len(TABLES[table]))})"


def _as_stored(table: str, row: tuple[object, ...]) -> tuple[object, ...]:
    """A row from SQLite in PostgreSQL's types: SQLite keeps a whole REAL as an integer."""
    return tuple(
        float(v) if c.kind == REAL and isinstance(v, int) else v
        for c, v in zip(TABLES[table], row, strict=True)
    )


async def _prepare(pool: Any) -> None:
    """Create the schema, or check its version; one instance at a time (a session lock)."""
    schema = resources.files("storage").joinpath("schema_postgres.sql").read_text(encoding="utf-8")
    async with pool.acquire() as db:
        await db.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
        try:
            exists = await db.fetchval("SELECT to_regclass('vault_meta') IS NOT NULL")
            version = (
                await db.fetchval("SELECT value FROM vault_meta WHERE key = 'schema_version'")
                if exists
                else None
            )
            if version is not None and version > SCHEMA_VERSION:
                raise RuntimeError(f"database schema {version} is newer than this vault ({SCHEMA_VERSION})")
            # The newest objects the schema adds: without them it runs again (IF NOT EXISTS).
            complete = await db.fetchval(
                "SELECT to_regclass('state_counters') IS NOT NULL"
                " AND to_regclass('links_created') IS NOT NULL"
            )
            if version == SCHEMA_VERSION and complete:
                return  # up to date: not written to (the schema's ALTER would lock segments)
            async with db.transaction():  # CREATE ... IF NOT EXISTS: adds only what is missing
                await db.execute(schema)
                if version != SCHEMA_VERSION:
                    await db.execute(
                        "INSERT INTO vault_meta (key, value) VALUES ('schema_version', $1)"
                        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        SCHEMA_VERSION,
                    )
        finally:
            await db.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)
