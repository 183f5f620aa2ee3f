"""vault: run the HTTPS server.  ``python run.py --help`` lists the options."""

import argparse
import asyncio
import base64
import dataclasses
import errno
import fcntl
import getpass
import ipaddress
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import tornado.httpserver
import tornado.ioloop
import tornado.netutil

from handlers import READ_HEADER_BYTES, make_app
from handlers.base import Context, InFlight
from handlers.metrics import make_metrics_app
from handlers.redact import redact_logs
from handlers.stream import HTTPServer
from storage.sqlite import SQLiteStore
from storage.sqlite_state import SQLiteState
from vault import cli
from vault.admin import Admin
from vault.audit import WRITER_TASK
from vault.config import Settings, load_settings, unknown_variables
from vault.core import Core, open_core
from vault.errors import ConfigError, DatabaseDamaged, InvalidField, StorageFull, VaultError
from vault.keys import KEYRING_FILE, add_primary_key, load_jwt_secret, load_keyring
from vault.memory import tune_malloc
from vault.store import BlobCollector, StateStore, Store
from vault.throttle import LoginThrottle, SharedLoginThrottle, Throttle
from vault.tls import ensure_certificate, server_context
from vault.workers import Worker, WorkerFailed, supervise

log = logging.getLogger("vault")
HERE = Path(__file__).resolve().parent
# Body bytes per data_received call. Measured (bench/transfer.py, 256 MiB, 3 runs): 64 KiB gave
# 173/162/327 MB/s (PUT/multipart/GET), 256 KiB 187/178/342, 1 MiB 157/149/307.
BODY_CHUNK = 256 * 1024
# Bytes per socket read: Tornado allocates and zeroes a new buffer of this size for every read
# (HTTPServer sets it to chunk_size). A TLS read takes every record that is ready up to this
# size (handlers/stream.py), so an upload's body reaches its handler in chunks this large.
TLS_READ_SIZE = 256 * 1024
PURGE_INTERVAL = 300  # seconds between sweeps for expired resumable uploads
SHUTDOWN_GRACE = 10  # seconds to finish saving interrupted uploads once connections are closed
SMALL_BODY_LIMIT = 64 * 1024
LOCK_FILE = "vault.lock"
UMASK = 0o077  # the server and the admin commands alike


def lock_data_dir(data_dir: Path) -> int:
    """One server per data directory: a second one would purge the first's uploads in progress."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"another vault is already running on the data directory {data_dir}") from None
    return fd  # held, and so locked, until the process exits


def server_stopped(settings: Settings) -> bool:
    """True (and the data directory locked until exit) if no server runs on it."""
    try:
        lock_data_dir(settings.data_dir)
    except ConfigError:
        return False
    return True


def listen(settings: Settings) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(settings.port, settings.host)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None


def reload_certificate(settings: Settings, context: ssl.SSLContext) -> None:
    """SIGHUP: new handshakes use the certificate now on disk; open connections, and transfers
    on them, carry on untouched. A bad file keeps the old certificate."""
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        log.error("SIGHUP: certificate not reloaded, keeping the old one: %s", exc)
        return
    log.warning("SIGHUP: reloaded the certificate %s", settings.tls_cert)


async def settle(grace: float) -> None:
    """Let the work connection closes started (saving interrupted uploads) finish."""
    others = [
        t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t.get_name() != WRITER_TASK
    ]
    if others:
        await asyncio.wait(others, timeout=grace)


async def connect_store(settings: Settings, reserve: bool = True) -> Store:
    """The store ``settings.storage`` names: SQLite in the data directory, or PostgreSQL at the
    URL in VAULT_DATABASE_URL (the environment only: it carries a password)."""
    if settings.storage == "postgres":
        from storage.postgres import URL_VARIABLE, PostgresStore  # asyncpg: an optional dependency

        url = os.environ.get(URL_VARIABLE, "")
        if not url:
            raise ConfigError(f"storage: postgres needs the database URL in {URL_VARIABLE}")
        return await PostgresStore.open(url, settings.busy_timeout)
    return await SQLiteStore.open(
        settings.db_path, settings.busy_timeout, settings.disk_reserve if reserve else 0, settings.keep_free
    )


@asynccontextmanager
async def open_store(settings: Settings, reserve: bool = True) -> AsyncIterator[Store]:
    """The metadata store, with the blob layer of ``blob_store`` in front of it; with
    ``reserve``, the SQLite store's disk reserve held beside the database."""
    store: Store = await connect_store(settings, reserve)
    try:
        if settings.blob_store == "s3":
            from storage.s3 import open_s3_segments  # aiohttp only when it is needed

            store = await open_s3_segments(
                store,
                endpoint=settings.s3_endpoint,
                bucket=settings.s3_bucket,
                prefix=settings.s3_prefix,
                region=settings.s3_region,
                lease=settings.s3_gc_lease,
            )
        yield store
    finally:
        await store.close()  # aiosqlite threads would otherwise keep the process alive


@asynccontextmanager
async def open_server_core(settings: Settings, shared: bool = False) -> AsyncIterator[Core]:
    """The core on the store of ``settings``; ``shared``: with the state shared with the other
    workers or instances in the same database (storage/sqlite_state.py, postgres_state.py),
    else in memory."""
    async with open_store(settings) as store:
        state: StateStore | None = None
        if shared and settings.storage == "postgres":
            from storage.postgres import PostgresStore
            from storage.postgres_state import PostgresState

            metadata = getattr(store, "inner", store)  # under the blob layer of storage/s3.py
            assert isinstance(metadata, PostgresStore)
            state = await PostgresState.open(metadata, settings.worker_lease)
        elif shared:
            state = await SQLiteState.open(settings.db_path, settings.worker_lease, settings.busy_timeout)
        try:
            async with open_core(settings, store, state=state) as core:
                yield core
        finally:
            if state is not None:
                await state.close()


def make_throttle(settings: Settings, state: StateStore) -> Throttle:
    """The login throttle: in memory for one process, on the shared state for several."""
    s = settings
    if state.shared:
        return SharedLoginThrottle(
            state, free=s.login_free_attempts, max_backoff=s.login_max_backoff,
            trusted_proxies=s.trusted_proxies, register_per_address=s.register_per_address,
            register_per_hour=s.register_per_hour,
        )  # fmt: skip
    return LoginThrottle(
        free=s.login_free_attempts, max_backoff=s.login_max_backoff, trusted_proxies=s.trusted_proxies,
        register_per_address=s.register_per_address, register_per_hour=s.register_per_hour,
    )  # fmt: skip


def warn_if_exposed(settings: Settings, sockets: list[socket.socket]) -> None:
    """Anyone who can reach a non-loopback address could register and fill the disk."""
    exposed = [
        s.getsockname()[0]
        for s in sockets
        if not ipaddress.ip_address(s.getsockname()[0].split("%")[0]).is_loopback
    ]
    if exposed and settings.registration == "open" and not settings.user_quota:
        log.warning(
            "listening on %s with registration: open and no user_quota: anyone who can reach it can"
            " create an account and fill the disk (README, Registration)",
            ", ".join(exposed),
        )


@dataclasses.dataclass(frozen=True)
class Listeners:
    """The sockets bound before anything touches the data (and, with workers, before the
    fork, so that every worker accepts on the same ones)."""

    https: list[socket.socket]
    plain: list[socket.socket]
    metrics: list[socket.socket]


def start(settings: Settings) -> Listeners:
    """Take the data directory, bind the ports, make sure there is a certificate: everything
    a start-up can fail on before the database is opened (a busy port changes nothing)."""
    lock_data_dir(settings.data_dir)  # held by every worker: the descriptor is inherited
    https = listen(settings)
    # Loopback only, whatever `host` says: plain HTTP exists to measure what TLS costs, and
    # metrics are never on the public port.
    plain = _loopback(settings.plain_http_port)
    metrics = _loopback(settings.metrics_port)
    if ensure_certificate(settings.tls_cert, settings.tls_key, settings.tls_names):
        log.warning("generated a self-signed certificate: %s (key %s)", settings.tls_cert, settings.tls_key)
    return Listeners(https, plain, metrics)


def _loopback(port: int) -> list[socket.socket]:
    return tornado.netutil.bind_sockets(port, "127.0.0.1") if port else []


def listening(settings: Settings, listeners: Listeners) -> str:
    port = listeners.https[0].getsockname()[1]
    return f"vault listening on https://{settings.host}:{port} (data in {settings.data_dir})"


async def prepare_data(settings: Settings) -> None:
    load_keyring(settings.data_dir, os.environ)
    load_jwt_secret(settings.data_dir, os.environ)
    async with open_store(settings):
        pass


def run_server(settings: Settings) -> None:
    """One process (``workers: 1``), or a supervisor forking ``workers`` that share the port."""
    listeners = start(settings)
    if settings.workers == 1:
        asyncio.run(serve(settings, listeners))
        return
    warn_if_exposed(settings, listeners.https)
    # Once, before the fork: the database created or migrated, the keys generated if missing
    # (workers doing it at once would race), and no thread left running (aiosqlite's end here).
    asyncio.run(prepare_data(settings))

    def work(worker: Worker) -> None:
        asyncio.run(serve(settings, listeners, worker))

    supervise(settings.workers, work, listening(settings, listeners))


async def serve(settings: Settings, listeners: Listeners, worker: Worker | None = None) -> None:
    """Serve until SIGTERM; ``worker``: as one of several processes (workers.py)."""
    ssl_context = server_context(settings.tls_cert, settings.tls_key)
    # In PostgreSQL every instance shares its state: others may serve the same database.
    shared = worker is not None or settings.storage == "postgres"
    async with open_server_core(settings, shared=shared) as core:
        try:
            # Uploads cut off by a crash or kill. With workers, only those no live worker pins.
            await core.files.purge(staged_too=True)
        except StorageFull:
            log.error("the disk is full: serving what can be read; uploads answer 507 until space is freed")
        await _serve(core, listeners, ssl_context, worker)


class Sweep:
    """The timer's work: expired uploads and deleted files at every tick."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def __call__(self) -> None:
        await self.core.files.purge()


class Collect:
    """The orphan objects, every ``s3_gc_interval`` seconds (listing a bucket costs a request
    per 1000 objects): what purges and crashes left in the bucket, older than ``s3_gc_lease``."""

    def __init__(self, store: BlobCollector) -> None:
        self.store = store

    async def __call__(self) -> None:
        try:
            await self.store.collect()
        except VaultError:
            log.exception("object garbage collection failed; the next one retries")


def failure(exc: BaseException) -> str:
    """One line for a start-up or admin command that cannot go on (never a traceback)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk is full: {exc}"
    if isinstance(exc, DatabaseDamaged):
        return exc.explain()
    if isinstance(exc, VaultError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


async def _serve(
    core: Core, listeners: Listeners, ssl_context: ssl.SSLContext, worker: Worker | None
) -> None:
    settings, sockets = core.settings, listeners.https
    ctx = Context(core, make_throttle(settings, core.state), worker=os.getpid() if worker else 0)
    app = make_app(ctx)
    server = HTTPServer(
        app,
        ssl_options=ssl_context,
        max_header_size=READ_HEADER_BYTES,  # the app answers 431 above handlers.MAX_HEADER_BYTES
        # Handlers that do not stream get whole bodies buffered by Tornado before they run, so
        # the server-wide cap is small; the streaming handlers raise it in prepare(), after auth.
        max_body_size=SMALL_BODY_LIMIT,
        idle_connection_timeout=settings.idle_timeout,
        # Every request body, whoever sends it, must arrive within body_timeout; handlers that
        # stream a body watch it themselves (handlers/base.py BodyHandler.watch_body).
        body_timeout=settings.body_timeout,
        chunk_size=BODY_CHUNK,
    )
    server.read_chunk_size = TLS_READ_SIZE  # TCPServer's attribute, given to each new stream
    server.add_sockets(sockets)
    # With shared state (workers, or instances on PostgreSQL), each purges every lease: a dead
    # process's staged uploads go once its lease lapsed.
    interval = settings.worker_lease if core.state.shared else PURGE_INTERVAL
    timers = [tornado.ioloop.PeriodicCallback(Sweep(core), interval * 1000)]
    if core.state.shared:
        timers.append(tornado.ioloop.PeriodicCallback(core.state.renew, settings.worker_lease * 1000 / 3))
    if isinstance(core.store, BlobCollector) and settings.s3_gc_interval:
        timers.append(tornado.ioloop.PeriodicCallback(Collect(core.store), settings.s3_gc_interval * 1000))
    for timer in timers:
        timer.start()
    plain = None
    if listeners.plain:
        plain = tornado.httpserver.HTTPServer(
            app, max_body_size=SMALL_BODY_LIMIT, body_timeout=settings.body_timeout, chunk_size=BODY_CHUNK
        )
        plain.add_sockets(listeners.plain)
        log.warning("plain HTTP for benchmarks on http://127.0.0.1:%d", settings.plain_http_port)
    metrics = None
    if listeners.metrics:
        metrics = tornado.httpserver.HTTPServer(make_metrics_app(ctx))
        metrics.add_sockets(listeners.metrics)
        log.warning("metrics on http://127.0.0.1:%d/metrics", settings.metrics_port)
    if worker is None:
        warn_if_exposed(settings, sockets)
        print(listening(settings, listeners), flush=True)
    else:
        worker.ready()
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: hurry.set() if stop.is_set() else stop.set())
    loop.add_signal_handler(signal.SIGHUP, reload_certificate, settings, ssl_context)
    await stop.wait()
    for timer in timers:
        timer.stop()
    servers = [s for s in (server, plain, metrics) if s is not None]
    await drain(servers, ctx.requests, settings.shutdown_grace, hurry)
    await settle(SHUTDOWN_GRACE)


async def drain(
    servers: list[tornado.httpserver.HTTPServer], requests: InFlight, grace: float, hurry: asyncio.Event
) -> None:
    """A graceful stop: accept no more connections, answer the requests in flight (a request
    arriving on a kept-alive connection meanwhile is answered, then its connection closed) for
    up to ``grace`` seconds or until a second signal, then close every connection (interrupted
    resumable uploads keep what they saved)."""
    for server in servers:
        server.stop()
        server.conn_params.no_keep_alive = True
    log.info("shutting down: %d request(s) in flight, waiting up to %s s", requests.count, grace)
    waits = [asyncio.ensure_future(requests.idle()), asyncio.ensure_future(hurry.wait())]
    await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if requests.count:
        log.warning("shutting down: cutting off %d request(s) still in flight", requests.count)
    for server in servers:
        await server.close_all_connections()


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first, second = getpass.getpass("New password: "), getpass.getpass("Again: ")
    if first != second:
        raise InvalidField("the passwords differ")
    return first


def ask(question: str) -> str:
    """A confirmation: the question on stderr (stdout may be a pipe), the answer from stdin."""
    print(question, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline()


def check_data_dir(settings: Settings, init: bool) -> None:
    """Refuse what would quietly make a new vault: no database, or a database without its key."""
    if init:
        return
    if settings.storage == "sqlite" and not settings.db_path.exists():
        raise ConfigError(
            f"no vault database in {settings.data_dir} (check --data-dir and --config;"
            " give --init to create a new data directory with new keys)"
        )
    env_key = os.environ.get("VAULT_MASTER_KEY") or os.environ.get("VAULT_MASTER_KEY_COMMAND")
    if not env_key and not (settings.data_dir / KEYRING_FILE).exists():
        raise ConfigError(
            f"no master key for {settings.data_dir}: copy its {KEYRING_FILE} there or set VAULT_MASTER_KEY"
        )


async def admin(settings: Settings, args: argparse.Namespace) -> int:
    check_data_dir(settings, args.init)
    if args.command in ("rotate-key", "retire-key", "compact"):
        if args.command != "compact" and (
            os.environ.get("VAULT_MASTER_KEY") or os.environ.get("VAULT_MASTER_KEY_COMMAND")
        ):
            raise ConfigError("key rotation works on the keyring file: unset VAULT_MASTER_KEY(_COMMAND)")
        lock_data_dir(settings.data_dir)  # a running server would not know the new key: refuse
        if args.command == "rotate-key":
            print(f"new primary master key {add_primary_key(settings.data_dir)}", file=sys.stderr)
    if args.command == "gc":
        args.offline = server_stopped(settings)  # then uploads cut off by a crash go too
    if args.command == "migrate":
        lock_data_dir(settings.data_dir)  # rows and objects change under a server: refuse
        if args.to != settings.storage:
            return await migrate_store(settings, args)
        if args.blobs is not None:  # the blob layer, whichever way the segments go
            overrides = {"data_dir": args.data_dir, "blob_store": "s3"}
            settings = load_settings(args.config, os.environ, overrides)
    async with open_server_core(settings) as core:
        code = await Admin(core).run(args, read_password, sys.stdout.buffer, ask)
        if args.command == "backup" and code == 0:
            return await verify_copy(core, dataclasses.replace(settings, data_dir=args.dest))
        return code


async def migrate_store(settings: Settings, args: argparse.Namespace) -> int:
    """``admin migrate --to`` the other metadata store: the source is the configured one, the
    target PostgreSQL at VAULT_DATABASE_URL or data_dir's vault.db, with the blob layer of
    ``--blobs`` (default: the configured one) on the same s3_* settings."""
    overrides = {"data_dir": args.data_dir, "storage": args.to, "blob_store": args.blobs}
    target_settings = load_settings(args.config, os.environ, overrides)
    async with (
        open_server_core(settings) as core,
        open_store(target_settings, reserve=False) as target,
    ):
        admin = Admin(core)
        admin.target = target
        return await admin.run(args, read_password, sys.stdout.buffer, ask)


async def verify_copy(core: Core, copy: Settings) -> int:
    """The structure of a backup and every file in it, under the keys it was taken with."""
    unused_jwt = base64.b64encode(os.urandom(32)).decode()  # verification issues no tokens
    environ = {**os.environ, "VAULT_JWT_SECRET": unused_jwt}
    async with (
        open_store(copy, reserve=False) as store,
        open_core(copy, store, keyring=core.keyring, environ=environ) as opened,
    ):
        checker = Admin(opened)
        if await checker.check_store():
            return 1
        return 1 if await checker.verify() else 0


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(sys.argv[1:] if argv is None else argv, HERE / "config.yaml")
    os.umask(UMASK)  # the database, its WAL and generated secrets: readable by the owner only
    overrides = {"data_dir": args.data_dir}
    if args.mode != cli.ADMIN:
        overrides |= {"host": args.host, "port": args.port}
    try:
        settings = load_settings(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"vault: {exc}", file=sys.stderr)
        return 2
    for name in unknown_variables(os.environ):
        print(f"vault: warning: {name} is not a vault setting (see README, Configuration)", file=sys.stderr)
    try:
        if args.mode == cli.ADMIN:
            return asyncio.run(admin(settings, args))
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        tune_malloc(settings.segment_size, os.environ)  # before the threads start: vault/memory.py
        redact_logs()  # link secrets masked in every line, not only the access log
        run_server(settings)
    except ConfigError as exc:
        print(f"vault: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:
        print(f"vault: cannot start: {exc} (its message is above)", file=sys.stderr)
        return 1
    except (VaultError, OSError, sqlite3.Error) as exc:
        log.debug("start-up failed", exc_info=exc)
        print(f"vault: cannot start: {failure(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
