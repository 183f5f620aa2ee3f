"""N workers against 1 on the same machine: concurrent transfers through real ``run.py`` over
TLS with real ``curl``, the server's CPU summed over the supervisor and every worker.

    python -m bench.workers [--workers 2] [--clients 4] [--size 64MiB] [--runs 3] [--json out.json]

Each run, for each server in turn (alternating which goes first): ``--clients`` simultaneous
``curl -T`` uploads of a ``--size`` file under different names, then as many simultaneous
downloads of them to /dev/null; then ``--requests`` small authenticated requests (``GET /me``)
over ``--clients`` keep-alive connections. Reported: aggregate MB/s (all bytes / wall time of
the batch), server CPU-seconds per GB (utime + stime of the server's processes, from
/proc/<pid>/stat, around the batch), requests per second and server CPU-ms per request;
medians over the runs, and N workers / 1 worker as the median of the per-run ratios. The load
average before and after is printed: other work on the machine changes what N workers can get.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.transfer import GB, MB, make_test_file, parse_size
from tests.server import Server

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the supervisor and its workers)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@dataclass
class Batch:
    nbytes: int = 0
    requests: int = 0
    wall: float = 0.0
    cpu: float = 0.0

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.wall

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu / (self.nbytes / GB)

    @property
    def per_second(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu / self.requests


@dataclass
class Subject:
    label: str
    server: Server
    token: str = ""
    results: dict[str, list[Batch]] = field(default_factory=dict)

    def measure(self, kind: str, work: Callable[[], int]) -> Batch:
        assert self.server.process is not None
        pids = process_tree(self.server.process.pid)
        cpu0, t0 = cpu_seconds(pids), time.perf_counter()
        amount = work()
        batch = Batch(wall=time.perf_counter() - t0, cpu=cpu_seconds(pids) - cpu0)
        if kind == "requests":
            batch.requests = amount
        else:
            batch.nbytes = amount
        self.results.setdefault(kind, []).append(batch)
        return batch


def curl(server: Server, token: str, args: list[str]) -> None:
    cmd = ["curl", "-sS", "--fail", "--cacert", str(server.cert), "-H", f"Authorization: Bearer {token}"]
    subprocess.run([*cmd, *args], check=True, capture_output=True)


def transfers(subject: Subject, src: Path, size: int, clients: int, run: int) -> None:
    server, token = subject.server, subject.token
    names = [f"w{run}-{n}.bin" for n in range(clients)]

    def upload() -> int:
        with ThreadPoolExecutor(clients) as pool:
            list(
                pool.map(
                    lambda n: curl(
                        server, token, ["-T", str(src), f"{server.url}/upload/{n}", "-o", os.devnull]
                    ),
                    names,
                )
            )
        return size * clients

    def download() -> int:
        with ThreadPoolExecutor(clients) as pool:
            list(
                pool.map(
                    lambda n: curl(server, token, [f"{server.url}/download/{n}", "-o", os.devnull]), names
                )
            )
        return size * clients

    subject.measure("upload", upload)
    subject.measure("download", download)
    for name in names:
        server.request("DELETE", f"/files/{name}", token=token)


def small_requests(subject: Subject, total: int, clients: int) -> None:
    server, token = subject.server, subject.token
    headers = {"Authorization": f"Bearer {token}"}

    def client(count: int) -> None:
        conn = server.connection()
        try:
            for _ in range(count):
                conn.request("GET", "/me", headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET /me: {resp.status}")
        finally:
            conn.close()

    def work() -> int:
        threads = [threading.Thread(target=client, args=(total // clients,)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return clients * (total // clients)

    subject.measure("requests", work)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median_ratio(a: list[Batch], b: list[Batch], metric: Callable[[Batch], float]) -> float:
    return statistics.median(metric(x) / metric(y) for x, y in zip(a, b, strict=True))


def report(one: Subject, many: Subject) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("upload", "download", "requests"):
        a, b = many.results[kind], one.results[kind]
        if kind == "requests":
            speed: Callable[[Batch], float] = lambda x: x.per_second  # noqa: E731
            cost: Callable[[Batch], float] = lambda x: x.cpu_ms_per_request  # noqa: E731
            units = ("req/s", "server CPU-ms/request")
        else:
            speed, cost = (lambda x: x.mb_s), (lambda x: x.cpu_s_per_gb)
            units = ("MB/s", "server CPU-s/GB")
        medians = {
            label: (statistics.median(map(speed, batches)), statistics.median(map(cost, batches)))
            for label, batches in ((one.label, b), (many.label, a))
        }
        ratios = (median_ratio(a, b, speed), median_ratio(a, b, cost))
        out[kind] = {
            **{label: dict(zip(units, values, strict=True)) for label, values in medians.items()},
            "ratio speed": ratios[0],
            "ratio cost": ratios[1],
        }
        line = " | ".join(
            f"{label}: {s_:8.1f} {units[0]}, {c:6.2f} {units[1]}" for label, (s_, c) in medians.items()
        )
        print(f"{kind:9} {line} | {many.label} / {one.label}: {ratios[0]:.2f} speed, {ratios[1]:.2f} cost")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=parse_size, default=parse_size("64MiB"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vault-bench-workers-") as tmp:
        root = Path(tmp)
        src = make_test_file(root / "src.bin", args.size).path
        subjects = [
            Subject("1 worker", Server(root / "one")),
            Subject(
                f"{args.workers} workers", Server(root / "many", env={"VAULT_WORKERS": str(args.workers)})
            ),
        ]
        before = load_average()
        try:
            for subject in subjects:
                subject.server.start()
                _, subject.token = subject.server.new_user()
            for run in range(args.runs):
                order = subjects if run % 2 == 0 else subjects[::-1]
                for subject in order:
                    transfers(subject, src, args.size, args.clients, run)
                for subject in order:
                    small_requests(subject, args.requests, args.clients)
                print(f"run {run + 1}/{args.runs} done (load average {load_average()})", flush=True)
        finally:
            for subject in subjects:
                subject.server.stop()
        after = load_average()
        cpus = os.cpu_count()
        print(
            f"{args.clients} clients, {args.size / 2**20:.0f} MiB each, {args.runs} runs, {cpus} CPUs;"
            f" load average before {before}, after {after}"
        )
        results = report(subjects[0], subjects[1])
        if args.json:
            meta = {
                "workers": args.workers,
                "clients": args.clients,
                "size": args.size,
                "runs": args.runs,
                "cpus": cpus,
                "load_before": before,
                "load_after": after,
            }
            args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
