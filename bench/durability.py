"""What a durable upload costs: the storage pattern of one upload (segments of 1 MiB written one
statement each, then the commit that makes the file live), with three sync policies, measured in
the same run on the same disk:

- ``normal``: ``synchronous = NORMAL`` throughout (no fsync before the reply; the window);
- ``final``: NORMAL for the segments, FULL for the final commit (one fsync of the WAL makes
  every earlier segment durable too: what vault does);
- ``full``: ``synchronous = FULL`` throughout (an fsync per segment).

    python -m bench.durability [--sizes 4096,83886080] [--runs 5] [--dir DIR]

Reported per size and policy: median wall milliseconds per upload and process CPU-seconds per
GB (user + system), and both as a ratio to ``normal``. ``--dir`` must be on the disk to judge
(the default is the system temporary directory, which may be a tmpfs where fsync is free).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

SEG = 1024 * 1024
POLICIES = ("normal", "final", "full")


def open_db(path: Path, policy: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size = 65536")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {'FULL' if policy == 'full' else 'NORMAL'}")
    db.execute("PRAGMA wal_autocheckpoint = 256")
    db.execute("CREATE TABLE IF NOT EXISTS segments (file_id INTEGER, idx INTEGER, data BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS files (file_id INTEGER PRIMARY KEY, state INTEGER)")
    return db


def upload(db: sqlite3.Connection, policy: str, file_id: int, size: int) -> None:
    db.execute("INSERT INTO files VALUES (?, 0)", (file_id,))
    left = size
    for idx in range((size + SEG - 1) // SEG or 1):
        n = min(SEG, left)
        db.execute("INSERT INTO segments VALUES (?, ?, ?)", (file_id, idx, os.urandom(n)))
        left -= n
    if policy == "final":
        db.execute("PRAGMA synchronous = FULL")
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE files SET state = 1 WHERE file_id = ?", (file_id,))
    db.execute("COMMIT")
    if policy == "final":
        db.execute("PRAGMA synchronous = NORMAL")


def measure(directory: Path, policy: str, size: int, runs: int) -> tuple[float, float]:
    """(median wall ms per upload, CPU-s per GB) for ``runs`` uploads of ``size`` bytes."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        db = open_db(Path(tmp) / "bench.db", policy)
        try:
            upload(db, policy, 0, size)  # warm-up
            walls: list[float] = []
            cpu0 = time.process_time()
            for run in range(1, runs + 1):
                start = time.perf_counter()
                upload(db, policy, run, size)
                walls.append(time.perf_counter() - start)
            cpu = time.process_time() - cpu0
        finally:
            db.close()
    return statistics.median(walls) * 1000, cpu / (runs * max(size, 1) / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=f"4096,{80 * SEG}", help="upload sizes in bytes")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"disk: {args.dir} ({os.uname().machine}, {os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version})")
    print(f"{'size':>10} {'policy':>7} {'ms/upload':>10} {'x normal':>9} {'CPU-s/GB':>9} {'x normal':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        results = {policy: measure(args.dir, policy, size, args.runs) for policy in POLICIES}
        wall0, cpu0 = results["normal"]
        for policy, (wall, cpu) in results.items():
            print(f"{size:>10} {policy:>7} {wall:>10.2f} {wall / wall0:>9.2f} {cpu:>9.2f} {cpu / cpu0:>9.2f}")


if __name__ == "__main__":
    main()
