"""``run.py admin migrate --to postgres|sqlite``: a vault moved between metadata stores, black-box
(real run.py over TLS, a real PostgreSQL from tests/pg.py), and the table list of vault/tables.py
checked against both schemas."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore
from tests import pg
from tests.dbedit import pg_edits
from tests.server import ROOT, Server
from tests.test_api import payload
from tests.test_sharing import fetch, link_token, new_link
from tests.test_tus import create_path, patch
from vault.tables import NOT_COPIED, TABLES

S = 64 * 1024  # segment size: many segments from small files
PASSWORD = "correct horse battery"  # noqa: S105  # tests/server.py's default


def pg_query(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with pg_edits(url) as con:
        return list(con.execute(sql, args))


def lite_query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True) as con:
        return [tuple(r) for r in con.execute(sql, args)]


def login(server: Server, name: str) -> dict[str, Any]:
    resp = server.request("POST", "/login", {"username": name, "password": PASSWORD})
    assert resp.status == 200, resp.body
    return dict(resp.json())


def download(server: Server, token: str, name: str) -> bytes:
    resp = server.request("GET", "/download/" + quote(name, safe=""), token=token)
    assert resp.status == 200, (name, resp.status, resp.body)
    return resp.body


def migrate(vault: Server, *args: str) -> subprocess.CompletedProcess[bytes]:
    return vault.admin("migrate", *args)


# ---------------------------------------------------------------------- the tables


def test_every_table_of_both_schemas_is_copied_or_named_as_not_copied(
    tmp_path: Path, pg_cluster: pg.Cluster
) -> None:
    """A table or column added to either schema fails here until vault/tables.py handles it."""

    async def schemas() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        lite = await SQLiteStore.open(tmp_path / "vault.db")
        await lite.close()
        with sqlite3.connect(tmp_path / "vault.db") as con:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            lite_tables = {t: [c[1] for c in con.execute(f"PRAGMA table_info({t})")] for t in names}
        url = await pg_cluster.database(str(tmp_path))
        store = await PostgresStore.open(url)
        try:
            rows = await store.pool.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
            )
        finally:
            await store.close()
        pg_tables: dict[str, list[str]] = {}
        for table, column in rows:
            pg_tables.setdefault(table, []).append(column)
        return lite_tables, pg_tables

    lite_tables, pg_tables = asyncio.run(schemas())
    for schema in (lite_tables, pg_tables):
        assert set(schema) - set(NOT_COPIED) == set(TABLES)
        for table, spec in TABLES.items():
            assert schema[table] == [c.name for c in spec], table
    assert set(NOT_COPIED) <= set(lite_tables) | set(pg_tables)


# ---------------------------------------------------------------------- both ways, black-box


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "vault", env={"VAULT_SEGMENT_SIZE": str(S)})
    yield srv
    srv.stop()


def populate(vault: Server) -> tuple[dict[tuple[str, str], bytes], dict[str, Any]]:
    """Three users, files of 0, 1, S and several segments, a replaced one, a share, a link
    downloaded once, a revoked link, an invite, a quota; returns the files and what else the
    checks need."""
    users = [vault.new_user()[0] for _ in range(3)]
    alice, bob, carol = users
    tokens = {u: login(vault, u)["token"] for u in users}
    files: dict[tuple[str, str], bytes] = {}
    for size in (0, 1, S, 3 * S + 5):
        files[(alice, f"a{size}.bin")] = payload(size)
    files[(bob, "b.bin")] = payload(2 * S + 1)
    files[(carol, "ünï cödé.txt")] = b"carol" * 1000
    vault.put_file(tokens[bob], "b.bin", b"the first version")  # replaced: purged before copying
    for (owner, name), data in files.items():
        assert vault.put_file(tokens[owner], name, data).status in (200, 201), name
    assert (
        vault.request("POST", f"/files/a{S}.bin/shares", {"username": bob}, token=tokens[alice]).status == 201
    )
    link = new_link(vault, tokens[alice], f"a{3 * S + 5}.bin", max_downloads=3)
    assert fetch(vault, link_token(link)).body == files[(alice, f"a{3 * S + 5}.bin")]
    revoked = new_link(vault, tokens[carol], "ünï cödé.txt")
    assert vault.request("DELETE", f"/links/{revoked['id']}", token=tokens[carol]).status == 200
    assert vault.admin("set-limits", carol, "--quota", "10M").returncode == 0
    assert vault.admin("invite").returncode == 0
    session = login(vault, bob)  # a refresh token to use after the move
    return files, {"users": users, "link": link, "revoked": revoked, "refresh": session["refresh_token"]}


def check_vault(
    vault: Server, files: dict[tuple[str, str], bytes], extra: dict[str, Any], served: int
) -> None:
    """Every file byte-identical for its owner with the same passwords, the share, the link
    (``served`` downloads so far of its 3), the revoked link 410, the old refresh token."""
    alice, bob, carol = extra["users"]
    tokens = {u: login(vault, u)["token"] for u in extra["users"]}
    for (owner, name), data in files.items():
        assert download(vault, tokens[owner], name) == data, name
    shared = vault.request("GET", f"/shared/{alice}/a{S}.bin", token=tokens[bob])
    assert (shared.status, shared.body) == (200, files[(alice, f"a{S}.bin")])
    links = vault.request("GET", "/links", token=tokens[alice]).json()["links"]
    assert [(k["id"], k["downloads_left"]) for k in links] == [(extra["link"]["id"], 3 - served)]
    assert fetch(vault, link_token(extra["link"])).body == files[(alice, f"a{3 * S + 5}.bin")]
    assert fetch(vault, link_token(extra["revoked"])).status == 410
    resp = vault.request("POST", "/token/refresh", {"refresh_token": extra["refresh"]})
    assert resp.status == 200, resp.body
    extra["refresh"] = resp.json()["refresh_token"]
    shown = vault.admin("show", carol)
    assert b"quota 10.0 MiB;" in shown.stdout, shown


def test_a_populated_vault_migrates_to_postgres_and_back_and_every_file_downloads_identical(
    vault: Server, pg_cluster: pg.Cluster, tmp_path: Path
) -> None:
    url = pg_cluster.database_sync(str(tmp_path))
    lite_env = {"VAULT_SEGMENT_SIZE": str(S), "VAULT_DATABASE_URL": url}  # storage: sqlite still
    pg_env = {**lite_env, "VAULT_STORAGE": "postgres"}
    vault.env = lite_env
    vault.start()
    files, extra = populate(vault)
    alice = extra["users"][0]
    token = login(vault, alice)["token"]
    tus = create_path(vault, token, "resumed.bin", 2 * S)
    resumed = payload(2 * S)
    assert patch(vault, token, tus, 0, resumed[:S]).status == 204
    running = migrate(vault, "--to", "postgres")
    assert running.returncode == 2 and b"another vault is already running" in running.stderr, running
    vault.stop()

    in_progress = migrate(vault, "--to", "postgres")  # a tus upload under way: refused, listed
    assert in_progress.returncode == 2, in_progress
    assert f"upload in progress: {alice}/resumed.bin ({S} of {2 * S} bytes".encode() in in_progress.stdout
    assert b"1 resumable upload(s) in progress (listed): finish or delete them first" in in_progress.stderr
    assert pg_query(url, "SELECT COUNT(*) FROM users") == [(0,)]  # nothing written
    vault.start()
    token = login(vault, alice)["token"]
    assert patch(vault, token, tus, S, resumed[S:]).status == 204
    files[(alice, "resumed.bin")] = resumed
    vault.stop()

    there = migrate(vault, "--to", "postgres")
    assert there.returncode == 0, there
    out = there.stdout.decode()
    assert "audit log intact" in out
    assert "copied to postgres: 3 users, 1 invites, 1 grants, 1 links, 1 revoked links, " in out
    assert (
        "files: 7 copied (13 segments" in out
        and "0 already there, 0 removed from the target; 0 damaged" in out
    ), out
    assert (
        "Set storage: postgres, with VAULT_DATABASE_URL in the server's environment and blob_store: database"
        in out
    )
    source_rows = lite_query(vault.db_path, "SELECT seq, mac FROM audit ORDER BY seq")
    target_rows = [(s, bytes(m)) for s, m in pg_query(url, "SELECT seq, mac FROM audit ORDER BY seq")]
    assert target_rows == source_rows[: len(target_rows)] and len(target_rows) >= len(source_rows) - 1

    vault.env = pg_env
    assert vault.admin("audit-verify").returncode == 0
    vault.start()
    check_vault(vault, files, extra, served=1)
    other = Server(tmp_path / "other", env=pg_env)  # another instance's data dir: its lock is free
    other.data_dir.mkdir(parents=True)
    (other.workdir / "config.yaml").write_text((vault.workdir / "config.yaml").read_text())
    for key_file in ("master.keys", "jwt.secret"):
        (other.data_dir / key_file).write_bytes((vault.data_dir / key_file).read_bytes())
    leased = migrate(other, "--to", "sqlite")  # but this server's lease in PostgreSQL is live
    assert leased.returncode == 2 and b"still serves the source store" in leased.stderr, leased
    alice_token = login(vault, alice)["token"]
    files[(alice, "new in postgres.bin")] = payload(S + 7)
    assert (
        vault.put_file(alice_token, "new in postgres.bin", files[(alice, "new in postgres.bin")]).status
        == 201
    )
    assert vault.request("DELETE", "/files/a1.bin", token=alice_token).status == 200
    del files[(alice, "a1.bin")]
    vault.stop()
    assert vault.admin("audit-verify").returncode == 0

    vault.env = lite_env  # the old vault.db, source of the first move, is behind PostgreSQL now
    foreign = migrate(vault, "--to", "postgres")
    assert foreign.returncode == 2 and b"not an earlier migration of this vault" in foreign.stderr, foreign

    vault.env = pg_env
    stale = migrate(vault, "--to", "sqlite")  # that old vault.db is in the way: refused
    assert stale.returncode == 2 and b"not an earlier migration of this vault" in stale.stderr, stale
    for path in vault.data_dir.glob("vault.db*"):  # moved away (with its -wal): into a new vault.db
        path.rename(tmp_path / path.name)
    back = migrate(vault, "--to", "sqlite")
    assert back.returncode == 0, back
    out = back.stdout.decode()
    assert "files: 7 copied (" in out and " 0 already there, 0 removed from the target; 0 damaged" in out, out
    assert f"Set storage: sqlite (the database is {vault.db_path}) and blob_store: database" in out
    vault.env = lite_env
    assert vault.admin("audit-verify").returncode == 0
    vault.start()
    check_vault(vault, files, extra, served=2)
    assert vault.request("GET", "/download/a1.bin", token=login(vault, alice)["token"]).status == 404


# ---------------------------------------------------------------------- restartable


def test_a_migration_killed_mid_way_completes_on_the_next_run_without_duplicates(
    vault: Server, pg_cluster: pg.Cluster, tmp_path: Path
) -> None:
    url = pg_cluster.database_sync(str(tmp_path))
    vault.env = {"VAULT_SEGMENT_SIZE": str(S), "VAULT_DATABASE_URL": url}
    vault.start()
    name, token = vault.new_user()
    files = {f"f{i:02d}.bin": payload(3 * S + i) for i in range(40)}
    for fname, data in files.items():
        assert vault.put_file(token, fname, data).status == 201
    vault.stop()
    command = [sys.executable, str(ROOT / "run.py"), "admin", "--config", str(vault.workdir / "config.yaml")]
    child = subprocess.Popen(
        [*command, "migrate", "--to", "postgres"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "VAULT_BCRYPT_ROUNDS": "4", **vault.env},
    )
    assert child.stderr is not None
    seen = b""
    while b"files 3/" not in seen:  # its progress: three files copied
        chunk = os.read(child.stderr.fileno(), 256)
        assert chunk, seen
        seen += chunk
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    copied = pg_query(url, "SELECT COUNT(*) FROM files")[0][0]
    assert 3 <= copied < len(files), copied  # killed mid-way, with files copied before

    again = migrate(vault, "--to", "postgres")
    assert again.returncode == 0, again
    assert f"files: {len(files) - copied} copied (".encode() in again.stdout, again.stdout
    assert f" {copied} already there, 0 removed".encode() in again.stdout
    third = migrate(vault, "--to", "postgres")
    assert f"files: 0 copied (0 segments, 0 B), {len(files)} already there".encode() in third.stdout, third
    (count, distinct, stray) = pg_query(
        url,
        "SELECT COUNT(*), COUNT(DISTINCT (file_id, idx)), COUNT(*) FILTER (WHERE idx >= f.seg_count)"
        " FROM segments s JOIN files f USING (file_id)",
    )[0]
    (expected,) = pg_query(url, "SELECT SUM(seg_count) FROM files")[0]
    assert (count, distinct, stray) == (expected, expected, 0)
    assert pg_query(url, "SELECT COUNT(*) FROM segments")[0][0] == expected  # none without its file

    vault.start()  # the source goes on before the next run: the target follows it
    token = login(vault, name)["token"]
    assert vault.request("DELETE", "/files/f00.bin", token=token).status == 200
    del files["f00.bin"]
    files["f01.bin"] = payload(3 * S)  # replaced
    assert vault.put_file(token, "f01.bin", files["f01.bin"]).status in (200, 201)
    vault.stop()
    follow = migrate(vault, "--to", "postgres")
    assert follow.returncode == 0, follow
    assert (
        f"files: 1 copied (3 segments, 192.2 KiB), {len(files) - 1} already there, 2 removed".encode()
        in follow.stdout
    ), follow.stdout
    vault.env = {**vault.env, "VAULT_STORAGE": "postgres"}
    verified = vault.admin("verify")
    assert verified.returncode == 0 and f"{len(files)} files checked, 0 damaged".encode() in verified.stdout
    assert vault.admin("audit-verify").returncode == 0
    vault.start()
    token = login(vault, name)["token"]
    for fname, data in files.items():
        assert download(vault, token, fname) == data


# ---------------------------------------------------------------------- damage


def test_a_tampered_row_or_segment_is_reported_damaged_and_not_copied(
    vault: Server, pg_cluster: pg.Cluster, tmp_path: Path
) -> None:
    url = pg_cluster.database_sync(str(tmp_path))
    vault.env = {"VAULT_SEGMENT_SIZE": str(S), "VAULT_DATABASE_URL": url}
    vault.start()
    alice, alice_token = vault.new_user()
    mallory, _ = vault.new_user()
    good, bad = payload(2 * S), payload(2 * S + 1)
    assert vault.put_file(alice_token, "good.bin", good).status == 201
    assert vault.put_file(alice_token, "bad.bin", bad).status == 201
    vault.stop()
    with sqlite3.connect(vault.db_path) as con:
        (fid,) = con.execute("SELECT file_id FROM files WHERE name = 'bad.bin' AND state = 1").fetchone()
        (data,) = con.execute("SELECT data FROM segments WHERE file_id = ? AND idx = 1", (fid,)).fetchone()
        flipped = data[:20] + bytes([data[20] ^ 1]) + data[21:]  # the tag (last 32 bytes) kept
        assert con.execute(
            "UPDATE segments SET data = ? WHERE file_id = ? AND idx = 1", (flipped, fid)
        ).rowcount
        hashed = con.execute("SELECT password_hash FROM users WHERE username = ?", (alice,)).fetchone()[0]
        assert con.execute(
            "UPDATE users SET password_hash = ? WHERE username = ?", (hashed, mallory)
        ).rowcount
        (mallory_id,) = con.execute("SELECT id FROM users WHERE username = ?", (mallory,)).fetchone()

    moved = migrate(vault, "--to", "postgres")
    assert moved.returncode == 1, moved
    out = moved.stdout.decode()
    assert f"DAMAGED (not copied): file {alice}/bad.bin ({bytes(fid).hex()})" in out
    assert f"DAMAGED (not copied): users row {mallory_id}" in out
    assert "files: 1 copied" in out and "; 2 damaged" in out
    assert pg_query(url, "SELECT name FROM files") == [("good.bin",)]
    assert pg_query(url, "SELECT COUNT(*) FROM segments WHERE file_id = $1", bytes(fid)) == [(0,)]
    assert [u for (u,) in pg_query(url, "SELECT username FROM users")] == [alice]

    with sqlite3.connect(vault.db_path) as con:  # an edited audit entry: nothing more is copied
        assert con.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2").rowcount
    audit_before = pg_query(url, "SELECT COUNT(*) FROM audit")
    refused = migrate(vault, "--to", "postgres")
    assert refused.returncode == 2 and b"audit log BROKEN at entry 2" in refused.stdout, refused
    assert b"the audit log does not verify: not migrating" in refused.stderr
    assert pg_query(url, "SELECT COUNT(*) FROM audit") == audit_before
