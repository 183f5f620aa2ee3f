"""The real core in-process, built by ``vault.core.open_core`` exactly as the server builds it,
on a real SQLite file: for tests that tamper with the database or count what the core asks of
the store."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from storage.sqlite import SQLiteStore
from vault.config import Settings
from vault.core import Core, open_core
from vault.keys import Keyring

MASTER_KEY = bytes(range(32))


def keyring(master_key: bytes = MASTER_KEY, key_id: int = 1) -> Keyring:
    return Keyring.of(key_id, {key_id: master_key})


@contextlib.asynccontextmanager
async def core(db: Path, ring: Keyring | None = None, **settings: Any) -> AsyncIterator[Core]:
    """The core on the database ``db`` (its folder is the data directory), with ``settings``
    over the defaults, under ``ring`` (default: ``keyring()``)."""
    config = Settings(data_dir=db.parent, **settings)
    store = await SQLiteStore.open(db)
    try:
        async with open_core(config, store, keyring=ring or keyring(), environ={}) as opened:
            yield opened
    finally:
        await store.close()
