"""vault with blob_store: s3 beside vault with its segments in SQLite, in the same runs.

    python -m bench.s3_transfer --size 256MiB --runs 3

Starts SeaweedFS (tests/s3server.py) and two real ``run.py`` servers (bench/transfer.py's
BenchServer): one with the default ``blob_store: database``, one with ``blob_store: s3`` on
that SeaweedFS. Each run uploads the test file with ``curl -T`` and downloads it with ``curl``
to /dev/null (checking the upload's sha256), to each server in turn, alternating which goes
first. Reported per transfer kind: MB/s, vault's CPU seconds per GB (utime + stime of the
server process), weed's CPU per GB during the same transfer, curl's, and the S3/SQLite ratios
of the same run; the load average before and after (other work on the machine skews MB/s).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.transfer import (
    BenchServer,
    SourceFile,
    _children_cpu,
    _stat_cpu,
    bench_environment,
    human,
    make_test_file,
    parse_size,
)
from tests.s3server import S3Server

KINDS = ("put", "get")


def transfer(server: BenchServer, kind: str, src: SourceFile, weed_pid: int) -> dict[str, float]:
    name = "bench.bin"
    if kind == "put":
        target = ["-T", str(src.path), f"{server.url}/upload/{name}", "-o", "/dev/null"]
    else:
        target = ["-o", "/dev/null", server.download_url(name)]
    command = server.curl_command(target, "%{time_total} %{size_upload} %{size_download}")
    vault, weed, curl, wall = (
        server.stats.cpu_seconds(),
        _stat_cpu(f"/proc/{weed_pid}/stat"),
        _children_cpu(),
        time.monotonic(),
    )
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    elapsed = time.monotonic() - wall
    server.check_curl(kind, done.returncode, done.stdout, done.stderr)
    gb = src.size / 1e9
    return {
        "MB/s": src.size / 1e6 / elapsed,
        "vault": (server.stats.cpu_seconds() - vault) / gb,
        "weed": (_stat_cpu(f"/proc/{weed_pid}/stat") - weed) / gb,
        "curl": (_children_cpu() - curl) / gb,
    }


def run_all(args: argparse.Namespace, root: Path) -> dict[str, object]:
    """Every measurement, under "results" (Results)."""
    load_before = os.getloadavg()
    src = make_test_file(root / "bench.bin", args.size)
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        mode: {kind: [] for kind in KINDS} for mode in ("sqlite", "s3")
    }
    with ExitStack() as stack:
        s3 = S3Server(root / "weed").start()
        stack.callback(s3.stop)
        assert s3.process is not None
        servers = {
            "sqlite": stack.enter_context(BenchServer(root / "sqlite", label="sqlite")),
            "s3": stack.enter_context(BenchServer(root / "s3", extra_env=s3.env(), label="s3")),
        }
        for run in range(args.runs):
            order = ["sqlite", "s3"] if run % 2 == 0 else ["s3", "sqlite"]
            for kind in KINDS:
                for mode in order:
                    found = transfer(servers[mode], kind, src, s3.process.pid)
                    results[mode][kind].append(found)
                    print(f"run {run + 1} {mode} {kind}: {found}", file=sys.stderr)
    return {"size": args.size, "load_before": load_before, "load_after": os.getloadavg(), "results": results}


Results = dict[str, dict[str, list[dict[str, float]]]]


def report(data: dict[str, object], results: Results) -> str:
    size = human(int(str(data["size"])))
    lines = [
        f"{size} file, load average before {data['load_before']}, after {data['load_after']}",
        "| transfer | mode | MB/s | vault CPU-s/GB | weed CPU-s/GB | curl CPU-s/GB"
        " | vault CPU s3/sqlite (same run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        pairs = zip(results["s3"][kind], results["sqlite"][kind], strict=True)
        ratios = [s3["vault"] / sq["vault"] for s3, sq in pairs]
        for mode in ("sqlite", "s3"):
            rows = results[mode][kind]
            mbs, vault, weed, curl = (
                statistics.median(r[key] for r in rows) for key in ("MB/s", "vault", "weed", "curl")
            )
            ratio = (
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                if mode == "s3"
                else ""
            )
            lines.append(f"| {kind} | {mode} | {mbs:.0f} | {vault:.2f} | {weed:.2f} | {curl:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_transfer", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", type=parse_size, default=parse_size("256MiB"), help="test file size (256MiB)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs (3)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--tmpdir", type=Path, help="where the test file and both servers' data go")
    args = parser.parse_args(argv)
    with bench_environment(args.tmpdir) as root:
        data = run_all(args, root)
    results = data["results"]
    assert isinstance(results, dict)
    print(report(data, results))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
