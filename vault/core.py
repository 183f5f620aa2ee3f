"""The core: every service but HTTP, wired once.

``open_core(settings, store)`` builds what the server and the admin commands share, on a store
the caller opened (so ``vault/`` never imports ``storage/`` and another store can be plugged
in), and shuts the thread pools and background work down on exit. The caller closes the store.
Tests build the core through this same function.
"""

import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from vault.audit import AuditLog
from vault.auth import Authenticator
from vault.config import Settings
from vault.files import FileService
from vault.keys import Keyring, load_jwt_secret, load_keyring
from vault.limits import DownloadSlots, UploadSlots
from vault.sharing import Sharing
from vault.state import LocalState
from vault.store import StateStore, Store


@dataclass(frozen=True)
class Core:
    """Everything but HTTP: what the server and the admin commands share."""

    settings: Settings
    store: Store
    keyring: Keyring
    files: FileService
    auth: Authenticator
    sharing: Sharing
    audit: AuditLog
    uploads: UploadSlots
    state: StateStore  # what several processes serving this vault share (LocalState: one)
    downloads: DownloadSlots


@asynccontextmanager
async def open_core(
    settings: Settings,
    store: Store,
    *,
    keyring: Keyring | None = None,
    environ: Mapping[str, str] | None = None,
    state: StateStore | None = None,
) -> AsyncIterator[Core]:
    """The core on ``store``. The master keyring and JWT secret come from ``environ`` (default:
    the process environment) or the data directory (README, Keys), unless ``keyring`` is given.
    ``state`` is what this process shares with the others serving the same vault (default: a
    ``LocalState``, this process alone); the caller opens and closes it, like the store."""
    state = LocalState() if state is None else state
    environ = os.environ if environ is None else environ
    keyring = load_keyring(settings.data_dir, environ) if keyring is None else keyring
    jwt_secret = load_jwt_secret(settings.data_dir, environ)
    crypto = ThreadPoolExecutor(settings.crypto_threads, thread_name_prefix="crypto")
    hasher = ThreadPoolExecutor(1, thread_name_prefix="sha256")  # one thread keeps each file's order
    bcrypt_pool = ThreadPoolExecutor(settings.auth_threads, thread_name_prefix="bcrypt")
    try:
        files = FileService(
            store,
            keyring,
            seg_size=settings.segment_size,
            max_file_size=settings.max_file_size,
            pipeline_depth=settings.pipeline_depth,
            crypto=crypto,
            hasher=hasher,
            resumable_ttl=settings.resumable_ttl,
            segments_in_flight=settings.segments_in_flight,
            download_segments=settings.download_segments,
            default_quota=settings.user_quota,
            state=state,
        )
        auth = Authenticator(
            store,
            jwt_secret,
            keyring,
            rounds=settings.bcrypt_rounds,
            ttl=settings.token_ttl,
            refresh_ttl=settings.refresh_ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            executor=bcrypt_pool,
            registration=settings.registration,
            shared=state.shared,
        )
        audit = AuditLog(store, keyring)
        await audit.start()
        sharing = Sharing(store, files, keyring, auth, state)
        downloads = DownloadSlots(
            settings.downloads_per_user, settings.downloads_per_link, settings.downloads_per_address, state
        )
        yield Core(
            settings,
            store,
            keyring,
            files,
            auth,
            sharing,
            audit,
            UploadSlots(settings.uploads_per_user, state),
            state,
            downloads,
        )
        await files.close()
        await audit.close()
    finally:
        for pool in (crypto, hasher, bcrypt_pool):
            pool.shutdown(wait=False, cancel_futures=True)
