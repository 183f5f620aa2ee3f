"""The real core in-process, built by ``vault.core.open_core`` exactly as the server builds it,
on a real SQLite file (or, under the ``store_kind`` fixture's postgres case, a database of its own
in the test cluster, tests/pg.py): for tests that tamper with the database or count what the core
asks of the store."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from storage.sqlite import SQLiteStore
from tests import pg
from vault.auth import Identity
from vault.config import Settings
from vault.core import Core, open_core
from vault.keys import Keyring
from vault.store import StateStore, Store

T = TypeVar("T")
MASTER_KEY = bytes(range(32))
BACKEND = "sqlite"  # or "postgres": set by the store_kind fixture (tests/conftest.py)


def keyring(master_key: bytes = MASTER_KEY, key_id: int = 1) -> Keyring:
    return Keyring.of(key_id, {key_id: master_key})


@contextlib.asynccontextmanager
async def core(
    db: Path, ring: Keyring | None = None, *, state: StateStore | None = None, **settings: Any
) -> AsyncIterator[Core]:
    """The core on the database ``db`` (its folder is the data directory), with ``settings``
    over the defaults, under ``ring`` (default: ``keyring()``). Two cores on one database given
    one ``state`` are two processes serving the same vault."""
    config = Settings(data_dir=db.parent, **settings)
    store = await open_store(db)
    try:
        async with open_core(config, store, keyring=ring or keyring(), state=state, environ={}) as opened:
            yield opened
    finally:
        await store.close()


def run(tmp_path: Path, scenario: Callable[[Core], Awaitable[T]], **settings: Any) -> T:
    """``scenario`` on the core over ``tmp_path / "vault.db"`` in an event loop of its own, with
    ``settings`` over the defaults (bcrypt at its cheapest cost unless they say otherwise)."""

    async def main() -> T:
        async with core(tmp_path / "vault.db", **{"bcrypt_rounds": 4, **settings}) as opened:
            return await scenario(opened)

    return asyncio.run(main())


async def identity(opened: Core, name: str) -> Identity:
    """The account ``name``, which must exist and verify."""
    user = await opened.auth.find_user(name)
    assert user is not None
    return Identity(user.id, user.username)


async def open_store(db: Path) -> Store:
    """The store for ``db``: the SQLite file, or the PostgreSQL database that stands for it."""
    if BACKEND == "postgres":
        from storage.postgres import PostgresStore

        assert pg.CLUSTER is not None
        return await PostgresStore.open(await pg.CLUSTER.scratch(str(db)), pool_size=4)
    return await SQLiteStore.open(db)
