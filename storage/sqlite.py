"""The SQLite implementation of vault.store.Store, on aiosqlite.

One writer connection (SQLite has one writer at a time; a lock keeps multi-statement
transactions whole) and one reader connection; WAL lets reads run beside the writes.
``page_size=65536`` keeps a 1 MiB segment to 16 overflow pages, and ``secure_delete=FAST``
zeroes deleted rows (and so the wrapped keys of deleted files) in the b-tree pages.
"""

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from vault.errors import UserExists
from vault.format import Header
from vault.store import StoredFile, User

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STAGED, LIVE, DELETED = 0, 1, 2
PURGE_BATCH = 32  # segments deleted per write transaction, so purging never holds the lock long
_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA secure_delete = FAST",
    "PRAGMA busy_timeout = 10000",
)
_FILE_COLUMNS = (
    "file_id, owner, name, version, suite, seg_size, size, seg_count, sha256,"
    " key_id, wrapped_key, header_tag, created"
)


def _stored_file(row: Any) -> StoredFile:
    (file_id, owner, name, version, suite, seg_size, size, seg_count, sha, key_id, wrapped, tag, created) = (
        row
    )
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
    )
    return StoredFile(header, int(key_id), bytes(wrapped), bytes(tag), float(created))


class SQLiteStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> "SQLiteStore":
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        await writer.execute("PRAGMA page_size = 65536")  # effective only for a new database
        for pragma in _PRAGMAS:
            await writer.execute(pragma)
        (version,) = await (await writer.execute("PRAGMA user_version")).fetchone() or (0,)
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"database schema {version} is newer than this vault ({SCHEMA_VERSION})")
        schema = resources.files("storage").joinpath("schema.sql").read_text(encoding="utf-8")
        await writer.executescript(schema)
        await writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        reader = await aiosqlite.connect(path, isolation_level=None)
        for pragma in _PRAGMAS:
            await reader.execute(pragma)
        return cls(writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def _write(self, sql: str, params: tuple[object, ...]) -> int:
        async with self._lock:
            cursor = await self._writer.execute(sql, params)
            return cursor.rowcount

    async def create_user(self, username: str, password_hash: bytes) -> int:
        try:
            async with self._lock:
                cursor = await self._writer.execute(
                    "INSERT INTO users (username, password_hash, created) VALUES (?, ?, ?)",
                    (username, password_hash, time.time()),
                )
        except sqlite3.IntegrityError:
            raise UserExists() from None
        return int(cursor.lastrowid or 0)

    async def get_user(self, username: str) -> User | None:
        cursor = await self._reader.execute(
            "SELECT id, username, password_hash FROM users WHERE username = ?", (username,)
        )
        row = await cursor.fetchone()
        return User(int(row[0]), str(row[1]), bytes(row[2])) if row else None

    async def stage_file(self, file_id: bytes, owner: int, created: float) -> None:
        await self._write(
            "INSERT INTO files (file_id, owner, state, created) VALUES (?, ?, ?, ?)",
            (file_id, owner, STAGED, created),
        )

    async def put_segment(self, file_id: bytes, index: int, blob: bytes | bytearray) -> None:
        await self._write(
            "INSERT INTO segments (file_id, idx, data) VALUES (?, ?, ?)", (file_id, index, blob)
        )

    async def commit_file(self, stored: StoredFile) -> None:
        h = stored.header
        async with self._transaction() as db:
            await db.execute(
                "UPDATE files SET state = ? WHERE owner = ? AND name = ? AND state = ?",
                (DELETED, h.owner, h.name, LIVE),
            )
            cursor = await db.execute(
                "UPDATE files SET state = ?, name = ?, version = ?, suite = ?, seg_size = ?, size = ?,"
                " seg_count = ?, sha256 = ?, key_id = ?, wrapped_key = ?, header_tag = ?, created = ?"
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
                    stored.created,
                    h.file_id,
                    h.owner,
                    STAGED,
                ),
            )
            if cursor.rowcount != 1:
                raise RuntimeError("commit of a file that is not staged")

    async def discard_file(self, file_id: bytes) -> None:
        await self._remove(file_id, STAGED)

    async def _remove(self, file_id: bytes, state: int) -> None:
        """Delete a file's segments in batches, then its row (so a crash leaves it purgeable)."""
        while True:
            async with self._lock:
                cursor = await self._writer.execute(
                    "DELETE FROM segments WHERE rowid IN"
                    " (SELECT rowid FROM segments WHERE file_id = ? LIMIT ?)",
                    (file_id, PURGE_BATCH),
                )
            if cursor.rowcount < PURGE_BATCH:
                break
        await self._write("DELETE FROM files WHERE file_id = ? AND state = ?", (file_id, state))

    async def get_file(self, owner: int, name: str) -> StoredFile | None:
        cursor = await self._reader.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = ? AND name = ? AND state = ?",  # noqa: S608 (constant)
            (owner, name, LIVE),
        )
        row = await cursor.fetchone()
        return _stored_file(row) if row else None

    async def list_files(self, owner: int) -> list[StoredFile]:
        cursor = await self._reader.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = ? AND state = ? ORDER BY name",  # noqa: S608 (constant)
            (owner, LIVE),
        )
        return [_stored_file(row) for row in await cursor.fetchall()]

    async def delete_file(self, owner: int, name: str) -> bool:
        changed = await self._write(
            "UPDATE files SET state = ? WHERE owner = ? AND name = ? AND state = ?",
            (DELETED, owner, name, LIVE),
        )
        return changed == 1

    async def read_segments(self, file_id: bytes, first: int, count: int) -> list[tuple[int, bytes]]:
        cursor = await self._reader.execute(
            "SELECT idx, data FROM segments WHERE file_id = ? AND idx >= ? AND idx < ? ORDER BY idx",
            (file_id, first, first + count),
        )
        return [(int(idx), data) for idx, data in await cursor.fetchall()]

    async def purge(self, keep: Collection[bytes], staged_too: bool = False) -> int:
        states = (DELETED, STAGED) if staged_too else (DELETED, DELETED)
        cursor = await self._reader.execute("SELECT file_id, state FROM files WHERE state IN (?, ?)", states)
        victims = [(bytes(fid), int(state)) for fid, state in await cursor.fetchall()]
        victims = [(fid, state) for fid, state in victims if fid not in keep]
        for file_id, state in victims:
            if file_id not in keep:  # a live view: a download may have pinned it meanwhile
                await self._remove(file_id, state)
        if staged_too:
            await self._write("DELETE FROM segments WHERE file_id NOT IN (SELECT file_id FROM files)", ())
        if victims:
            log.info("purged %d replaced, deleted or abandoned file(s)", len(victims))
        return len(victims)
