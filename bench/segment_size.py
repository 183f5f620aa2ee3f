"""Compare server segment sizes: bench.transfer's single-stream measurement once per size.

    python -m bench.segment_size [--size 256MiB] [--sizes 65536,262144,1048576,4194304] [--runs 3]
                                 [--json out.json]

Each segment size gets a fresh server (VAULT_SEGMENT_SIZE) and the same random test file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.transfer import (
    BenchError,
    BenchServer,
    SingleStreamResult,
    bench_environment,
    human,
    make_test_file,
    mib,
    parse_size,
    run_single_stream,
)
from vault.format import check_seg_size

DEFAULT_SIZES = "65536,262144,1048576,4194304"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one segment size")
    for size in sizes:
        try:
            check_seg_size(size)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{size}: {exc}") from None
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.segment_size", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="test file (256MiB)")
    parser.add_argument(
        "--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES), help=f"({DEFAULT_SIZES})"
    )
    parser.add_argument("--runs", type=int, default=3, help="single-stream runs per segment size (3)")
    parser.add_argument("--tmpdir", type=Path, help="where to put the test file and server data")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size < 1:
        parser.error("--runs and --size must be positive")
    if shutil.which("curl") is None:
        parser.error("curl is not installed")
    return args


def table(results: Sequence[SingleStreamResult]) -> str:
    header = (
        f"{'segment':>10} {'PUT MB/s':>9} {'multipart MB/s':>14} {'GET MB/s':>9} "
        f"{'up CPU-s/GB':>11} {'down CPU-s/GB':>13} {'max RSS MiB':>11} {'VmHWM MiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        put, multipart, get = (result.summary("vault", k) for k in ("put", "multipart", "download"))
        lines.append(
            f"{result.segment_size:>10} {put.median_mb_s:>9.1f} {multipart.median_mb_s:>14.1f} "
            f"{get.median_mb_s:>9.1f} {put.median_cpu_s_per_gb:>11.2f} {get.median_cpu_s_per_gb:>13.2f} "
            f"{mib(result.max_rss('vault')):>11.1f} {mib(result.hwm_after['vault']):>10.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[SingleStreamResult] = []
    try:
        with bench_environment(args.tmpdir) as root:
            files, scratch = root / "files", root / "scratch"
            files.mkdir()
            scratch.mkdir()
            _stderr(f"writing a {human(args.size)} test file in {files} ...")
            src = make_test_file(files / "bench.bin", args.size)
            for seg in args.sizes:
                workdir = root / f"server-{seg}"
                with BenchServer(workdir, seg) as bench:
                    _stderr(f"segment size {seg}: server pid {bench.pid}, {args.runs} run(s)")
                    results.append(run_single_stream([bench], src, scratch, args.runs, _stderr, seg))
                shutil.rmtree(workdir, ignore_errors=True)  # free the disk before the next size
            print()
            print(
                f"vault segment sizes: {human(args.size)} file, median of {args.runs} run(s) each; "
                f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
            )
            print("MB/s = file bytes / curl time_total / 10^6; CPU-s/GB = server utime+stime per 10^9 bytes")
            print(table(results), flush=True)
            if args.json:
                data = {
                    "size": args.size,
                    "runs": args.runs,
                    "file_sha256": src.sha256,
                    "cpu_count": os.cpu_count(),
                    "loadavg": os.getloadavg(),
                    "results": [result.to_json() for result in results],
                }
                args.json.write_text(json.dumps(data, indent=2) + "\n")
                _stderr(f"wrote {args.json}")
    except BenchError as exc:
        print(f"bench.segment_size: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.segment_size: interrupted; server stopped and temporary files removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
