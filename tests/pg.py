"""A throwaway PostgreSQL cluster for the tests: ``initdb`` and ``pg_ctl`` in a temporary
directory, listening on a free loopback port only, stopped and removed at the end.

``initdb`` refuses to run as root, so as root (the tests here and in CI) the cluster belongs to
the ``postgres`` system user and its commands run through ``runuser``. The binaries come from
PATH or Debian's /usr/lib/postgresql/<version>/bin. Each test gets a database of its own."""

import asyncio
import glob
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_USER = "postgres"


def binary(name: str) -> str | None:
    """``initdb`` or ``pg_ctl``: from PATH, else the newest Debian version's bin directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    return candidates[-1] if candidates else None


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit())


def available() -> bool:
    return binary("initdb") is not None and binary("pg_ctl") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster; ``url(name)`` connects to database ``name`` as the superuser (trust auth,
    loopback only: nothing but this machine can reach it)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vault-pg-"))
        self.port = free_port()
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as_root = os.geteuid() == 0
        self._databases: set[str] = set()
        self._scratch_key = ""

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", PG_USER, "--", *argv] if self._as_root else list(argv)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")

    def start(self, fsync: bool = False) -> "Cluster":
        """Start the cluster; without ``fsync`` (tests) commits do not wait for the disk."""
        initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
        assert initdb and pg_ctl, "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if self._as_root:
            shutil.chown(self.dir, PG_USER, PG_USER)
        self._run(initdb, "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
            " -c max_connections=200 -c shared_buffers=32MB" + ("" if fsync else " -F")
        )
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        pg_ctl = binary("pg_ctl")
        try:
            if pg_ctl and (self.data / "postmaster.pid").exists():
                self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    async def database(self, key: str) -> str:
        """The URL of a database of its own for ``key`` (a test's path), created on first use."""
        name = "t" + hashlib.sha256(key.encode()).hexdigest()[:24]
        if name not in self._databases:
            import asyncpg  # type: ignore[import-untyped,unused-ignore]

            con = await asyncpg.connect(self.url())
            try:
                await con.execute(f'CREATE DATABASE "{name}"')
            finally:
                await con.close()
            self._databases.add(name)
        return self.url(name)

    def database_sync(self, key: str) -> str:
        return asyncio.run(self.database(key))

    async def scratch(self, key: str) -> str:
        """The URL of the one scratch database for in-process tests, emptied whenever ``key``
        (a test's database path) changes: faster than a database per test (CREATE DATABASE
        copies a template; TRUNCATE keeps the schema)."""
        url = await self.database("scratch")
        if key != self._scratch_key:
            import asyncpg

            con = await asyncpg.connect(url)
            try:
                tables = await con.fetch(
                    "SELECT tablename FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename <> 'vault_meta'"
                )
                if tables:
                    await con.execute("TRUNCATE " + ", ".join(f'"{t[0]}"' for t in tables))
            finally:
                await con.close()
            self._scratch_key = key
        return url

    def scratch_sync(self, key: str) -> str:
        return asyncio.run(self.scratch(key))


CLUSTER: Cluster | None = None  # set by the ``pg_cluster`` session fixture (tests/conftest.py)
