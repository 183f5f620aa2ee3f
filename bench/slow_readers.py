"""Stalled-reader benchmark: the server's peak memory with N clients that asked for a large
download and stopped reading, against N = 0, on the real ``run.py`` over TLS.

    python -m bench.slow_readers [--readers 0 50 200] [--size 64MiB] [--baseline DIR]

For each tree (this one, then each ``--baseline`` source tree, e.g. main before a change) and
each N, a fresh server (download caps off, so one address can open N downloads; the rest of the
settings default) gets a file of ``--size``; after a warm-up download its peak RSS (VmHWM) is
reset, N TLS clients with a 4 KiB receive buffer send ``GET /download`` and read only the
response headers, then ``/health`` and a whole 16 MiB download are timed beside them and the
peak RSS is read. Reported per N: the idle and peak RSS, the peak's ratio to the same tree's
peak with N = 0, /health and download wall times (noisy on a loaded machine), the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import ssl
import tempfile
import time
from pathlib import Path

from tests.server import ROOT, Server
from tests.test_slow_readers import memory, open_request, read_head
from vault.config import parse_size

MiB = 1024 * 1024
NORMAL = 16 * MiB


def one(root: Path, readers: int, size: int, tmp: Path) -> dict[str, float]:
    env = {
        "VAULT_DOWNLOADS_PER_USER": "0",
        "VAULT_DOWNLOADS_PER_LINK": "0",
        "VAULT_DOWNLOADS_PER_ADDRESS": "0",
    }
    server = Server(tmp, env=env, root=root).start()
    socks: list[ssl.SSLSocket] = []
    try:
        _, token = server.new_user()
        big, normal = os.urandom(size), os.urandom(NORMAL)
        assert server.put_file(token, "big.bin", big).status == 201
        assert server.put_file(token, "normal.bin", normal).status == 201
        assert server.request("GET", "/download/normal.bin", token=token).body == normal
        pid = server.process.pid if server.process else 0
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        idle = memory(pid, "VmRSS")
        auth = {"Authorization": f"Bearer {token}"}
        socks.extend(open_request(server, "/download/big.bin", auth) for _ in range(readers))
        for sock in socks:
            assert read_head(sock)[0] == 200
        start = time.monotonic()
        assert server.request("GET", "/health").status == 200
        health = time.monotonic() - start
        start = time.monotonic()
        body = server.request("GET", "/download/normal.bin", token=token).body
        download = time.monotonic() - start
        assert hashlib.sha256(body).digest() == hashlib.sha256(normal).digest()
        peak = memory(pid, "VmHWM")
        return {"idle_mib": idle / MiB, "peak_mib": peak / MiB, "health_s": health, "download_s": download}
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readers", type=int, nargs="+", default=[0, 50, 200])
    parser.add_argument("--size", type=parse_size, default=parse_size("64MiB"))
    parser.add_argument("--baseline", type=Path, action="append", default=[])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}")
    print(f"file {args.size / MiB:.0f} MiB, normal download {NORMAL // MiB} MiB, readers {args.readers}")
    for root in [ROOT, *args.baseline]:
        label = "this tree" if root == ROOT else root.name
        zero = None
        for readers in args.readers:
            with tempfile.TemporaryDirectory(prefix="vault-slow-") as tmp:
                r = one(root, readers, args.size, Path(tmp))
            zero = r["peak_mib"] if readers == 0 else zero
            ratio = f"{r['peak_mib'] / zero:.2f}x" if zero else "-"
            idle, peak = r["idle_mib"], r["peak_mib"]
            print(
                f"{label:>13}  N={readers:4d}  idle RSS {idle:5.0f} MiB  peak RSS {peak:6.0f} MiB"
                f" (+{peak - idle:4.0f}; {ratio} N=0's)  /health {r['health_s'] * 1000:5.0f} ms"
                f"  16 MiB download {r['download_s']:5.2f} s  load {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
