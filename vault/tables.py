"""The tables of a vault's metadata store, column by column, as ``run.py admin migrate`` copies
them between SQLite (storage/schema.sql) and PostgreSQL (storage/schema_postgres.sql).

Every table of either schema is named here once: in :data:`TABLES` (copied, columns in this
order) or in :data:`NOT_COPIED` (with the reason). tests/test_migrate.py compares both schemas
with these, so a table or column added to one schema and not handled here fails a test.
"""

from dataclasses import dataclass

INT, REAL, TEXT, BLOB = "int", "real", "text", "blob"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # INT, REAL, TEXT or BLOB
    null: bool = False  # NULL allowed


def _cols(spec: str) -> tuple[Column, ...]:
    """``"id int, name text?"``: a column per comma, ``?`` where NULL is allowed."""
    columns = []
    for part in spec.split(","):
        name, kind = part.split()
        columns.append(Column(name, kind.rstrip("?"), kind.endswith("?")))
    return tuple(columns)


TABLES: dict[str, tuple[Column, ...]] = {
    "users": _cols(
        "id int, username text, password_hash blob, key_id int, tag blob, created real, quota int?,"
        " max_file_size int?, token_epoch int, disabled int, last_login real?"
    ),
    "invites": _cols("code_hash blob, key_id int, created real, expires real, used real?, user_id int?"),
    "files": _cols(
        "file_id blob, owner int, state int, name text?, version int?, suite int?, seg_size int?,"
        " size int?, seg_count int?, sha256 blob?, seg_root blob?, key_id int?, wrapped_key blob?,"
        " header_tag blob?, created real, tus_id text?, upload_length int?, upload_offset int?,"
        " tail blob?, expires real?, metadata text?"
    ),
    "segments": _cols("file_id blob, idx int, tag blob, data blob, size int?"),
    "grants": _cols("owner int, name text, grantee int, created real, key_id int, tag blob"),
    "links": _cols(
        "id text, token_hash blob, owner int, name text, created real, expires real?,"
        " password_hash blob?, max_downloads int?, bytes_served int, failures int, locked_until real,"
        " key_id int, tag blob"
    ),
    "revoked_links": _cols("token_hash blob, revoked real"),
    "refresh_tokens": _cols(
        "id blob, user_id int, family text, epoch int, created real, expires real, used real?,"
        " revoked real?, key_id int, tag blob"
    ),
    "audit": _cols(
        "seq int, at real, actor text, address text, action text, target text, outcome text,"
        " key_id int, mac blob"
    ),
}

# Copied whole, in one transaction each (the target's rows of the table are replaced); files and
# segments go file by file, the audit log entry by entry after the target's last.
SMALL_TABLES = ("users", "invites", "grants", "links", "revoked_links", "refresh_tokens")

NOT_COPIED: dict[str, str] = {
    "state_holders": "leases of the running processes: none once every server is stopped",
    "state_holds": "holds under those leases (upload slots, reservations, pins): gone with them",
    "state_counters": "login-failure and registration counters, change versions: transient",
    "vault_meta": "PostgreSQL only: the target's own schema version, written when it is created",
}


def columns(table: str) -> str:
    """The column list of a copied table, for SQL (the names are this module's constants)."""
    return ", ".join(c.name for c in TABLES[table])


def well_typed(table: str, row: tuple[object, ...]) -> bool:
    """Whether each value of ``row`` has its column's type (SQLite stores any type anywhere: a
    tampered column must not reach PostgreSQL, nor the checks above as another type)."""
    spec = TABLES[table]
    if len(row) != len(spec):
        return False
    return all(_fits(value, column) for value, column in zip(row, spec, strict=True))


def _fits(value: object, column: Column) -> bool:
    if value is None:
        return column.null
    if isinstance(value, bool):
        return False
    kinds: dict[str, tuple[type, ...]] = {INT: (int,), REAL: (int, float), TEXT: (str,), BLOB: (bytes,)}
    return isinstance(value, kinds[column.kind])


def as_dict(table: str, row: tuple[object, ...]) -> dict[str, object]:
    return {c.name: value for c, value in zip(TABLES[table], row, strict=True)}
