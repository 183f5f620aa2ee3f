"""Database edits for tests that play someone who can write the database file: every
UPDATE, DELETE and INSERT must change a row, since an edit that matched nothing (a wrong id, a
renamed column value) would let a tamper test pass without tampering."""

import sqlite3
from typing import Any

_EDITS = ("UPDATE", "DELETE", "INSERT")


class Edits(sqlite3.Connection):
    """``sqlite3.connect(path, factory=Edits)``: ``execute`` asserts that an edit changed rows."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        cursor = super().execute(sql, parameters)
        if sql.lstrip().upper().startswith(_EDITS):
            assert cursor.rowcount > 0, f"the edit changed no row: {sql} {parameters!r}"
        return cursor
