"""Range latency and the cost of TLS.

``python -m bench.latency [--size 4GiB] [--runs 5] [--tls-size 1GiB]``:

1. uploads a ``--size`` file, then times the first byte (curl ``time_starttransfer``) and the
   whole of a 1 MiB range at the start and at the end of it, ``--runs`` times each (medians);
2. moves a ``--tls-size`` file up and down over HTTPS and over the loopback-only plain-HTTP
   listener (``plain_http_port``), medians of ``--runs``, to show what TLS costs.
"""

import argparse
import socket
import statistics
import sys
import tempfile
from pathlib import Path

from bench.transfer import BenchError, BenchServer, make_test_file, parse_size

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def range_times(bench: BenchServer, name: str, start: int, runs: int) -> tuple[float, float]:
    """Median (time to first byte, total time) in ms of a 1 MiB range from ``start``."""
    firsts, totals = [], []
    for _ in range(runs):
        out = bench._run_curl(
            f"range at {start}",
            ["-r", f"{start}-{start + MiB - 1}", f"{bench.server.url}/download/{name}", "-o", "/dev/null"],
            "%{time_starttransfer} %{time_total} %{size_download}",
        )
        if int(out[2]) != MiB:
            raise BenchError(f"range at {start}: got {out[2]} bytes")
        firsts.append(float(out[0]) * 1000)
        totals.append(float(out[1]) * 1000)
    return statistics.median(firsts), statistics.median(totals)


def transfer_mb_s(bench: BenchServer, base: str, path: Path, size: int, runs: int) -> tuple[float, float]:
    ups, downs = [], []
    for run in range(runs):
        name = f"tls-{run}.bin"
        up = bench._run_curl(
            "upload", ["-T", str(path), f"{base}/upload/{name}", "-o", "/dev/null"], "%{time_total}"
        )
        ups.append(size / float(up[0]) / 1e6)
        down = bench._run_curl("download", [f"{base}/download/{name}", "-o", "/dev/null"], "%{time_total}")
        downs.append(size / float(down[0]) / 1e6)
        bench._run_curl("delete", ["-X", "DELETE", f"{base}/files/{name}", "-o", "/dev/null"], "%{http_code}")
    return statistics.median(ups), statistics.median(downs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--size", type=parse_size, default=parse_size("4GiB"), help="file for the ranges (4GiB)"
    )
    parser.add_argument(
        "--tls-size", type=parse_size, default=parse_size("1GiB"), help="file for TLS vs plain"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tmpdir", type=Path, default=None)
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vault-latency-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        with BenchServer(work / "server", extra_env={"VAULT_PLAIN_HTTP_PORT": str(port)}) as bench:
            big = make_test_file(work / "big.bin", args.size)
            print(f"uploading {args.size / MiB:.0f} MiB ...", file=sys.stderr)
            bench._run_curl(
                "upload",
                ["-T", str(big.path), f"{bench.server.url}/upload/big.bin", "-o", "/dev/null"],
                "%{time_total}",
            )
            big.path.unlink()
            head = range_times(bench, "big.bin", 0, args.runs)
            tail = range_times(bench, "big.bin", args.size - MiB, args.runs)
            bench._run_curl(
                "delete",
                ["-X", "DELETE", f"{bench.server.url}/files/big.bin", "-o", "/dev/null"],
                "%{http_code}",
            )
            small = make_test_file(work / "tls.bin", args.tls_size)
            print("TLS vs plain HTTP ...", file=sys.stderr)
            tls = transfer_mb_s(bench, bench.server.url, small.path, args.tls_size, args.runs)
            plain = transfer_mb_s(bench, f"http://127.0.0.1:{port}", small.path, args.tls_size, args.runs)
    print(f"\n1 MiB range of a {args.size / MiB / 1024:.1f} GiB file, median of {args.runs} (ms)")
    print(f"  {'where':<8} {'first byte':>11} {'total':>8}")
    print(f"  {'start':<8} {head[0]:>11.1f} {head[1]:>8.1f}")
    print(f"  {'end':<8} {tail[0]:>11.1f} {tail[1]:>8.1f}")
    print(f"\n{args.tls_size / MiB:.0f} MiB single stream, median of {args.runs} (MB/s)")
    print(f"  {'listener':<8} {'upload':>8} {'download':>9}")
    print(f"  {'HTTPS':<8} {tls[0]:>8.1f} {tls[1]:>9.1f}")
    print(f"  {'HTTP':<8} {plain[0]:>8.1f} {plain[1]:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
