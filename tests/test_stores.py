"""Store contract under concurrency, on SQLite and on PostgreSQL alike (the store_kind fixture):
two store objects on one database stand for two server processes. Plus how `storage: postgres`
is chosen and what it refuses."""

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

import run
from storage.sqlite import SQLiteStore
from tests import incore, pg
from vault.config import Settings, load_settings
from vault.errors import ConfigError
from vault.format import Header
from vault.store import AuditEntry, Store, StoredFile

OWNER, NAME = 7, "same.bin"


async def two_stores(db: Path) -> tuple[Store, Store]:
    """Two independent stores (own connections) on the database ``db`` stands for."""
    first = await incore.open_store(db)
    if incore.BACKEND == "postgres":
        from storage.postgres import PostgresStore

        assert pg.CLUSTER is not None
        return first, await PostgresStore.open(await pg.CLUSTER.scratch(str(db)), pool_size=4)
    return first, await SQLiteStore.open(db)


def stored(file_id: bytes) -> StoredFile:
    header = Header(
        version=1,
        suite=1,
        seg_size=4096,
        file_id=file_id,
        owner=OWNER,
        name=NAME,
        size=0,
        seg_count=0,
        sha256=bytes(32),
        created=1.0,
        seg_root=bytes(32),
    )
    return StoredFile(header, 1, b"wrapped", b"tag")


@pytest.mark.usefixtures("store_kind")
def test_commits_of_one_name_from_two_stores_leave_one_live_version(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        a, b = await two_stores(tmp_path / "vault.db")
        try:
            ids = [os.urandom(16) for _ in range(8)]
            for i, file_id in enumerate(ids):
                await (a if i % 2 else b).stage_file(file_id, OWNER, 1.0)
            await asyncio.gather(*((a if i % 2 else b).commit_file(stored(f)) for i, f in enumerate(ids)))
            live = await a.list_files(OWNER)
            assert [f.header.name for f in live] == [NAME]
            assert await b.get_file(OWNER, NAME) == live[0]
            return ids
        finally:
            await a.close()
            await b.close()

    ids = asyncio.run(main())
    assert len(ids) == 8


@pytest.mark.usefixtures("store_kind")
def test_audit_appends_from_two_stores_form_one_chain(tmp_path: Path) -> None:
    def build(seq: int, previous: bytes) -> AuditEntry:
        mac = hashlib.sha256(previous + seq.to_bytes(8, "big")).digest()
        return AuditEntry(seq, 1.0, "actor", "127.0.0.1", "test", "target", "ok", 1, mac)

    async def main() -> list[AuditEntry]:
        a, b = await two_stores(tmp_path / "vault.db")
        try:
            await asyncio.gather(*((a if i % 2 else b).append_audit(build) for i in range(30)))
            return await a.audit_entries(0, 100)
        finally:
            await a.close()
            await b.close()

    entries = asyncio.run(main())
    assert [e.seq for e in entries] == list(range(1, 31))
    previous = bytes(32)
    for e in entries:
        assert e.mac == hashlib.sha256(previous + e.seq.to_bytes(8, "big")).digest()
        previous = e.mac


def test_storage_is_sqlite_or_postgres(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="storage"):
        load_settings(None, {"VAULT_STORAGE": "mongodb"}, {"data_dir": tmp_path})


def test_postgres_needs_the_url_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_DATABASE_URL", raising=False)
    settings = Settings(data_dir=tmp_path, storage="postgres")
    with pytest.raises(ConfigError, match="VAULT_DATABASE_URL"):
        asyncio.run(run.connect_store(settings))


def test_postgres_without_asyncpg_names_the_package_and_requirements_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_cluster: pg.Cluster
) -> None:
    monkeypatch.setenv("VAULT_DATABASE_URL", pg_cluster.url())
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ImportError
    settings = Settings(data_dir=tmp_path, storage="postgres")
    with pytest.raises(ConfigError, match=r"asyncpg.*requirements-postgres\.txt"):
        asyncio.run(run.connect_store(settings))
