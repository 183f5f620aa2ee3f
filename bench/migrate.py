"""Migration benchmark: ``run.py admin migrate`` between SQLite and PostgreSQL, beside ``admin
verify`` (which reads and checks every segment too) as the reference from the same run.

    python -m bench.migrate [--size 256MiB] [--small 200] [--runs 3] [--json out.json]

A real ``run.py`` (tests.server.Server, SQLite, 1 MiB segments) is filled over HTTPS with
``--size`` bytes in 4 MiB files plus ``--small`` files of 4 KiB, then stopped. Each run, on a
fresh PostgreSQL database of a throwaway cluster (tests/pg.py, fsync on, as in production):
``admin verify`` on the SQLite vault, ``admin migrate --to postgres``, then with the vault.db
moved aside ``admin migrate --to sqlite`` back. CPU: the admin process (its children's rusage)
and, for PostgreSQL, every process of the cluster, those that ended included (``postgres_cpu``). Figures:
files/s, MB/s, CPU-seconds per GB of stored (encrypted) bytes, and the ratio to verify.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.storage import cluster_cpu
from bench.transfer import CLK_TCK, parse_size
from tests import pg
from tests.server import ROOT, Server

GB = 1_000_000_000
MB = 1_000_000
BIG = 4 * 1024 * 1024


def postgres_cpu(cluster: pg.Cluster) -> float:
    """The cluster's CPU seconds: its live processes, and the backends that ended (an admin
    command's connections end with it), which the postmaster reaped (its cutime + cstime)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    return cluster_cpu(cluster) + (int(fields[13]) + int(fields[14])) / CLK_TCK


def admin(server: Server, env: dict[str, str], *args: str) -> tuple[float, float]:
    """Run ``run.py admin ARGS``; (wall seconds, CPU seconds of that process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "admin",
            "--config",
            str(server.workdir / "config.yaml"),
            *args,
        ],
        capture_output=True,
        env={**os.environ, **env},
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"admin {' '.join(args)} failed: {done.stdout!r} {done.stderr!r}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def populate(server: Server, size: int, small: int) -> tuple[int, int]:
    """Upload the files; (files, plaintext bytes)."""
    name = "b" + uuid.uuid4().hex[:8]
    password = "bench password 1"  # noqa: S105
    assert server.request("POST", "/register", {"username": name, "password": password}).status == 201
    token = server.request("POST", "/login", {"username": name, "password": password}).json()["token"]
    files = total = 0
    for i in range(size // BIG):
        assert server.put_file(token, f"big{i:04d}.bin", os.urandom(BIG)).status == 201
        files, total = files + 1, total + BIG
    for i in range(small):
        assert server.put_file(token, f"small{i:04d}.bin", os.urandom(4096)).status == 201
        files, total = files + 1, total + 4096
    return files, total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"))
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vault-bench-migrate-"))
    cluster = pg.Cluster().start(fsync=True)
    server = Server(work / "vault", env={"VAULT_DISK_RESERVE": "0"})
    results: dict[str, list[dict[str, float]]] = {"verify": [], "to postgres": [], "to sqlite": []}
    try:
        server.start()
        files, plain = populate(server, args.size, args.small)
        server.stop()
        with sqlite3.connect(server.db_path) as con:
            (stored,) = con.execute("SELECT SUM(length(data)) FROM segments").fetchone()
        for run in range(args.runs):
            url = cluster.database_sync(f"run{run}")
            lite = {"VAULT_DATABASE_URL": url, "VAULT_DISK_RESERVE": "0"}
            wall, cpu = admin(server, lite, "verify")
            results["verify"].append({"wall": wall, "cpu": cpu, "db_cpu": 0.0})
            pg_before = postgres_cpu(cluster)
            wall, cpu = admin(server, lite, "migrate", "--to", "postgres")
            results["to postgres"].append(
                {"wall": wall, "cpu": cpu, "db_cpu": postgres_cpu(cluster) - pg_before}
            )
            aside = work / f"aside{run}"
            aside.mkdir()
            for path in server.data_dir.glob("vault.db*"):
                shutil.move(str(path), aside / path.name)
            pg_before = postgres_cpu(cluster)
            wall, cpu = admin(server, {**lite, "VAULT_STORAGE": "postgres"}, "migrate", "--to", "sqlite")
            results["to sqlite"].append(
                {"wall": wall, "cpu": cpu, "db_cpu": postgres_cpu(cluster) - pg_before}
            )
            for path in server.data_dir.glob("vault.db*"):  # the original back for the next run
                path.unlink()
            for path in aside.iterdir():
                shutil.move(str(path), server.data_dir / path.name)
        report(results, files, plain, int(stored), args.runs)
        if args.json:
            args.json.write_text(json.dumps({"files": files, "stored": stored, "results": results}, indent=2))
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    results: dict[str, list[dict[str, float]]], files: int, plain: int, stored: int, runs: int
) -> None:
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"# {files} files, {plain / 2**20:.0f} MiB plaintext, {stored / 2**20:.0f} MiB stored;"
        f" medians of {runs}"
    )
    print(
        "| command | files/s | MB/s | vault CPU-s/GB | PostgreSQL CPU-s/GB | total CPU-s/GB"
        " | total vs verify |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        wall = statistics.median(r["wall"] for r in rows)
        cpu = statistics.median(r["cpu"] for r in rows)
        db_cpu = statistics.median(r["db_cpu"] for r in rows)
        total = statistics.median(r["cpu"] + r["db_cpu"] for r in rows)
        ratio = statistics.median(  # against verify in the same run
            (r["cpu"] + r["db_cpu"]) / (v["cpu"] + v["db_cpu"])
            for r, v in zip(rows, results["verify"], strict=True)
        )
        print(
            f"| {name} | {files / wall:.0f} | {stored / wall / MB:.0f} | {cpu / stored * GB:.2f} |"
            f" {db_cpu / stored * GB:.2f} | {total / stored * GB:.2f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    sys.exit(main())
