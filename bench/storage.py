"""Storage benchmark: the same transfers on ``storage: sqlite`` and ``storage: postgres``, with
the database's CPU beside vault's.

    python -m bench.storage [--size 256MiB] [--runs 3] [--json out.json]

Starts a throwaway PostgreSQL cluster (tests/pg.py: initdb + pg_ctl on a free loopback port, as
the postgres user when run as root; fsync on, as in production) and two real ``run.py`` over TLS
(tests.server.Server), one per storage. Each run does, on each server in turn (so a change in the
machine's load falls on both alike): ``curl -T`` PUT of a random file, then a GET to /dev/null.
CPU comes from /proc: vault's process (its aiosqlite threads hold SQLite's work, so SQLite's
database column is 0) and, for postgres, the sum over every process of the cluster (postmaster
and its backends, which the pool keeps open), read around each transfer. Figures: MB/s (10^6
bytes/s), CPU-seconds per GB for vault, for PostgreSQL and together, and the ratio of postgres
to sqlite from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.transfer import _stat_cpu, parse_size
from tests import pg
from tests.server import Server

GB = 1_000_000_000
MB = 1_000_000


def tree_cpu(pid: int) -> float:
    """utime + stime of ``pid`` and every process whose parent it is, seconds."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += _stat_cpu(str(entry / "stat"))
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return total


def cluster_cpu(cluster: pg.Cluster) -> float:
    """CPU seconds of the postmaster and its backends."""
    return tree_cpu(int((cluster.data / "postmaster.pid").read_text().split()[0]))


def curl(server: Server, token: str, args: Sequence[str]) -> float:
    """Run curl against ``server``; its time_total in seconds."""
    command = ["curl", "-sS", "--fail", "--cacert", str(server.cert), "-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(
        [*command, *args, "-w", "%{time_total}"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)}: {out.stderr.strip()}")
    return float(out.stdout.split()[-1])


def measure(
    server: Server, cluster: pg.Cluster, token: str, args: Sequence[str], size: int
) -> dict[str, float]:
    assert server.process is not None
    vault_path = f"/proc/{server.process.pid}/stat"
    in_cluster = server.database_url != ""  # SQLite's work runs in vault's own threads
    vault0, db0 = _stat_cpu(vault_path), cluster_cpu(cluster) if in_cluster else 0.0
    seconds = curl(server, token, args)
    vault1, db1 = _stat_cpu(vault_path), cluster_cpu(cluster) if in_cluster else 0.0
    gb = size / GB
    return {
        "mb_s": size / MB / seconds,
        "vault_cpu_s_per_gb": (vault1 - vault0) / gb,
        "db_cpu_s_per_gb": (db1 - db0) / gb,
    }


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 4 * 1024 * 1024)
            out.write(os.urandom(n))
            left -= n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="file size (256MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs (3)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="vault-bench-storage-") as tmp:
        scratch = Path(tmp)
        src = scratch / "bench.bin"
        make_file(src, args.size)
        cluster = pg.Cluster()
        cluster.start(fsync=True)
        servers: dict[str, Server] = {}
        try:
            url = cluster.database_sync("bench")
            servers["sqlite"] = Server(scratch / "sqlite").start()
            servers["postgres"] = Server(
                scratch / "postgres", env={"VAULT_STORAGE": "postgres", "VAULT_DATABASE_URL": url}
            ).start()
            tokens = {label: srv.new_user()[1] for label, srv in servers.items()}
            for run in range(1, args.runs + 1):
                for op in ("put", "get"):
                    for label, srv in servers.items():
                        base = (
                            f"{srv.url}/upload/bench.bin" if op == "put" else f"{srv.url}/download/bench.bin"
                        )
                        curl_args = (
                            ["-T", str(src), base, "-o", os.devnull]
                            if op == "put"
                            else [base, "-o", os.devnull]
                        )
                        row = measure(srv, cluster, tokens[label], curl_args, args.size)
                        results.setdefault(label, {}).setdefault(op, []).append(row)
                        print(f"run {run} {label:8} {op}: {row['mb_s']:.0f} MB/s", file=sys.stderr)
        finally:
            for srv in servers.values():
                srv.stop()
            cluster.stop()
    report(results, args.size, args.runs)
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "runs": args.runs, "results": results}, indent=2))
    return 0


def report(results: dict[str, dict[str, list[dict[str, float]]]], size: int, runs: int) -> None:
    cpus = os.cpu_count()
    print(
        f"{size / 1024**2:.0f} MiB, {runs} runs, medians; {platform.machine()}, {cpus} CPUs;"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    print("| storage | op | MB/s | vault CPU-s/GB | database CPU-s/GB | total CPU-s/GB | total vs sqlite |")
    print("|---|---|---|---|---|---|---|")
    for op in ("put", "get"):
        totals: dict[str, float] = {}
        for label in ("sqlite", "postgres"):
            rows = results[label][op]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            total = statistics.median(r["vault_cpu_s_per_gb"] + r["db_cpu_s_per_gb"] for r in rows)
            totals[label] = total
            ratio = total / totals["sqlite"] if totals.get("sqlite") else float("nan")
            print(
                f"| {label} | {op} | {med['mb_s']:.0f} | {med['vault_cpu_s_per_gb']:.2f} |"
                f" {med['db_cpu_s_per_gb']:.2f} | {total:.2f} | {ratio:.2f}x |"
            )


if __name__ == "__main__":
    sys.exit(main())
