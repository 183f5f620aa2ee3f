"""Load test: real ``run.py`` over TLS driven by locust (bench/locustfile.py), headless.

    python -m bench.load [--users 50] [--spawn-rate 10] [--duration 60s] [--bcrypt-rounds 12]

Starts the server in a temporary directory (``tests.server.Server``), runs ``locust --headless``
against it with ``VAULT_CA`` set to the server's self-signed certificate, then prints per request
name and in aggregate: requests, failures, requests/s and p50/p95/p99 latency (ms) from locust's
CSV stats, and the server's memory (VmRSS sampled during the run, VmHWM peak). Exits 1 if any
request failed or a user raised an exception. See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.transfer import BenchError, ProcStats, RssSampler, bench_environment, mib
from tests.server import Server

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
START_TIMEOUT = 60.0
SAMPLE_INTERVAL = 0.25
STOP_TIMEOUT = 30  # seconds locust lets running tasks finish after --duration
_DURATION_RE = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def parse_duration(text: str) -> int:
    """``60s``, ``2m``, ``1h30m`` or plain seconds (locust's ``-t`` syntax), in seconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 60s, 2m, 1h30m or 90")
    h, m, s = (int(g) if g else 0 for g in match.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds < 1:
        raise argparse.ArgumentTypeError("the duration must be at least 1 s")
    return seconds


@dataclass
class Row:
    name: str
    requests: int
    failures: int
    rps: float
    p50: str
    p95: str
    p99: str


def read_stats(path: Path) -> list[Row]:
    """Rows of locust's ``<prefix>_stats.csv``, the ``Aggregated`` one last."""
    rows: list[Row] = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            label = rec["Name"] if rec["Name"] == "Aggregated" else f"{rec['Type']} {rec['Name']}"
            rows.append(
                Row(
                    name=label,
                    requests=int(rec["Request Count"]),
                    failures=int(rec["Failure Count"]),
                    rps=float(rec["Requests/s"]),
                    p50=rec["50%"],
                    p95=rec["95%"],
                    p99=rec["99%"],
                )
            )
    return rows


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stats_table(rows: Sequence[Row]) -> str:
    width = max([len(r.name) for r in rows] + [12])
    header = f"{'request':<{width}} {'requests':>9} {'failures':>9} {'req/s':>8}" + "".join(
        f" {p:>8}" for p in ("p50 ms", "p95 ms", "p99 ms")
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.name == "Aggregated":
            lines.append("-" * len(header))
        lines.append(
            f"{r.name:<{width}} {r.requests:>9} {r.failures:>9} {r.rps:>8.2f}"
            f" {r.p50:>8} {r.p95:>8} {r.p99:>8}"
        )
    return "\n".join(lines)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def server_errors(server: Server, limit: int = 20) -> list[str]:
    """Server log lines that look like errors (5xx answers, tracebacks, ERROR records)."""
    pattern = re.compile(r"Traceback|ERROR|\b5\d\d\b \w+ /")
    return [line for line in server.output().splitlines() if pattern.search(line)][:limit]


def run_locust(args: argparse.Namespace, server: Server, root: Path) -> tuple[int, Path]:
    prefix = root / "locust"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{args.duration}s",
        "--stop-timeout",
        str(STOP_TIMEOUT),
        "--host",
        server.url,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "VAULT_CA": str(server.cert)}
    log_path = root / "locust.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(
            cmd,
            cwd=HERE.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=args.duration + STOP_TIMEOUT + 120,
        )
    return proc.returncode, prefix


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--users", type=int, default=50, help="simulated users (50)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second (10)")
    parser.add_argument("--duration", type=parse_duration, default=60, help="run time: 60s, 2m, 1h30m (60s)")
    parser.add_argument(
        "--bcrypt-rounds", type=int, default=12, help="server bcrypt cost (12, the production default)"
    )
    parser.add_argument("--tmpdir", type=Path, help="where to put the server data and locust CSVs")
    args = parser.parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0:
        parser.error("--users and --spawn-rate must be positive")
    if not 4 <= args.bcrypt_rounds <= 31:
        parser.error("--bcrypt-rounds must be 4-31")
    return args


def run(args: argparse.Namespace, root: Path) -> int:
    env = {
        "VAULT_BCRYPT_ROUNDS": str(args.bcrypt_rounds),
        # Users log in once: their tokens must outlive the run.
        "VAULT_TOKEN_TTL": str(args.duration + STOP_TIMEOUT + 3600),
        # Access log: only 4xx (WARNING) and 5xx (ERROR) answers, kept for the report.
        "VAULT_LOG_LEVEL": "WARNING",
    }
    server = Server(root / "server", env=env)
    try:
        return _run(args, root, server)
    finally:
        server.stop()  # before bench_environment removes its directory


def _run(args: argparse.Namespace, root: Path, server: Server) -> int:
    try:
        server.start(timeout=START_TIMEOUT)
    except RuntimeError as exc:
        raise BenchError(f"the server did not start: {exc}") from None
    assert server.process is not None
    pid = server.process.pid
    stats = ProcStats(pid)
    idle_rss = stats.rss()
    _stderr(
        f"server pid {pid} at {server.url} (bcrypt rounds {args.bcrypt_rounds}); locust: "
        f"{args.users} users, spawn rate {args.spawn_rate:g}/s, {args.duration} s ..."
    )
    sampler = RssSampler(stats, SAMPLE_INTERVAL)
    sampler.start()
    try:
        code, prefix = run_locust(args, server, root)
    finally:
        sampler.stop()
    try:
        hwm = stats.hwm()
    except (OSError, BenchError):
        hwm = 0
    alive = server.process.poll() is None
    locust_log = root / "locust.log"

    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        tail = locust_log.read_text(errors="replace")[-3000:]
        raise BenchError(f"locust exited {code} without writing {stats_csv}:\n{tail}")
    rows = read_stats(stats_csv)
    failures = read_csv(Path(f"{prefix}_failures.csv"))
    exceptions = read_csv(Path(f"{prefix}_exceptions.csv"))
    total = rows[-1] if rows and rows[-1].name == "Aggregated" else None

    out = [
        "",
        "vault load test (locust, bench/locustfile.py)",
        f"  users     {args.users}, spawn rate {args.spawn_rate:g}/s, duration {args.duration} s",
        f"  server    pid {pid}, {server.url}, bcrypt rounds {args.bcrypt_rounds}",
        f"  machine   {os.cpu_count()} CPUs, load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "",
        stats_table(rows),
        "",
        "Server memory (MiB)",
        f"  idle RSS before the load          {mib(idle_rss):8.1f}",
        f"  max sampled RSS (every {SAMPLE_INTERVAL:g} s)    {mib(sampler.max_rss):8.1f}",
        f"  VmHWM (peak RSS)                  {mib(hwm):8.1f}",
    ]
    if failures:
        out += ["", "Failures (locust)"]
        out += [f"  {f['Occurrences']:>5} x {f['Method']} {f['Name']}: {f['Error']}" for f in failures]
    if exceptions:
        out += ["", "Exceptions in the locustfile"]
        out += [f"  {e['Count']:>5} x {e['Message']}\n{e['Traceback']}" for e in exceptions]
    errors = server_errors(server)
    if errors:
        out += ["", "Server log errors (first 20)"] + [f"  {line}" for line in errors]
    if not alive:
        out += ["", f"the server exited during the run (code {server.process.returncode})"]
    print("\n".join(out), flush=True)

    if total is None or total.requests == 0 or total.failures > 0 or exceptions or not alive:
        _stderr(f"bench.load: FAILED (locust exit code {code})")
        return 1
    if code != 0:
        tail = locust_log.read_text(errors="replace")[-3000:]
        _stderr(f"bench.load: locust exited {code}:\n{tail}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with bench_environment(args.tmpdir) as root:
            return run(args, root)
    except BenchError as exc:
        print(f"bench.load: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired:
        print("bench.load: locust did not finish in time; server stopped", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.load: interrupted; server stopped and temporary files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
