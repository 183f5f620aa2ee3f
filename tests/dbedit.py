"""Database edits for tests that play someone who can write the database file: every
UPDATE, DELETE and INSERT must change a row, since an edit that matched nothing (a wrong id, a
renamed column value) would let a tamper test pass without tampering."""

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from tests.server import Server

_EDITS = ("UPDATE", "DELETE", "INSERT")


class Edits(sqlite3.Connection):
    """``sqlite3.connect(path, factory=Edits)``: ``execute`` asserts that an edit changed rows."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        cursor = super().execute(sql, parameters)
        if sql.lstrip().upper().startswith(_EDITS):
            assert cursor.rowcount > 0, f"the edit changed no row: {sql} {parameters!r}"
        return cursor


class PgCursor:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


class PgEdits:
    """The same for a PostgreSQL database (tests/pg.py), in one transaction committed on close:
    ``?`` placeholders become ``$n``, so a tamper test's SQL runs unchanged on either store."""

    def __init__(self, url: str) -> None:
        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        self._loop = asyncio.new_event_loop()
        self._con = self._loop.run_until_complete(asyncpg.connect(url))
        self._tx = self._con.transaction()
        self._loop.run_until_complete(self._tx.start())

    def execute(self, sql: str, parameters: Any = (), /) -> PgCursor:
        if isinstance(parameters, dict):  # :name placeholders
            names = list(parameters)
            text = re.sub(r"(?<!:):([a-z_]+)", lambda m: f"${names.index(m.group(1)) + 1}", sql)
            parameters = [parameters[n] for n in names]
        else:
            numbered = iter(range(1, 1000))
            text = re.sub(r"\?", lambda _: f"${next(numbered)}", sql)
        if sql.lstrip().upper().startswith(_EDITS):
            status = self._loop.run_until_complete(self._con.execute(text, *parameters))
            count = int(status.rsplit(" ", 1)[-1])
            assert count > 0, f"the edit changed no row: {sql} {parameters!r}"
            return PgCursor([], count)
        rows = self._loop.run_until_complete(self._con.fetch(text, *parameters))
        return PgCursor([tuple(r) for r in rows], len(rows))

    def close(self, commit: bool = True) -> None:
        try:
            finish = self._tx.commit() if commit else self._tx.rollback()
            self._loop.run_until_complete(finish)
            self._loop.run_until_complete(self._con.close())
        finally:
            self._loop.close()


@contextlib.contextmanager
def pg_edits(url: str) -> Iterator[PgEdits]:
    """PgEdits on ``url``: committed on exit, rolled back on an exception."""
    con = PgEdits(url)
    try:
        yield con
    except BaseException:
        con.close(commit=False)
        raise
    con.close()


@contextlib.contextmanager
def edit(db: Path) -> Iterator[Any]:
    """A connection that edits the database ``db`` stands for, under tests/incore.py's store:
    the SQLite file itself, or the PostgreSQL database made for it. Committed on exit."""
    from tests import incore, pg

    if incore.BACKEND == "postgres":
        assert pg.CLUSTER is not None
        with pg_edits(pg.CLUSTER.scratch_sync(str(db))) as con:
            yield con
        return
    with contextlib.closing(sqlite3.connect(db, factory=Edits)) as lite:
        yield lite
        lite.commit()


@contextlib.contextmanager
def server_database(server: "Server", read_only: bool = False) -> Iterator[Any]:
    """The database of a running server (tests/server.py), opened beside it: its SQLite file
    (WAL), or its PostgreSQL database. Edits are committed on exit."""
    if server.database_url:
        with pg_edits(server.database_url) as con:
            yield con
        return
    if read_only:
        uri = f"file:{quote(str(server.db_path))}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as ro:
            yield ro
        return
    with contextlib.closing(sqlite3.connect(server.db_path, timeout=10, factory=Edits)) as lite:
        yield lite
        lite.commit()


def sqlite_only(server: "Server", why: str = "the test's SQL is SQLite's") -> None:
    """Skip on a server in PostgreSQL mode (for SQLite-specific SQL or files)."""
    if server.database_url:
        import pytest

        pytest.skip(why)
