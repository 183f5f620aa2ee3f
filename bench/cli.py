"""The ``vault`` client against curl, same file, same server, same run.

    python -m bench.cli [--size 1GiB] [--runs 3] [--chunk-size 64M] [--json out.json]
                        [--baseline TREE]

Each run uploads the file with ``curl -T`` (``PUT /upload/``) and with ``vault put`` (tus,
per-chunk sha256, final digest check), then downloads it with ``curl -o FILE`` and ``vault get
-o FILE`` (streamed, SHA-256 checked against Repr-Digest); the order of curl and vault
alternates between runs. Times are wall-clock around each whole command (so the client's
start-up, token renewal and final check count against it); the client's CPU time comes from
``wait4`` of that one process, its peak RSS (VmHWM) and the server's CPU from /proc. Reported:
median MB/s of each, the ratio vault/curl per run (median, min-max), CPU-s/GB of client and
server, the client's peak RSS. ``--baseline TREE`` also runs the client of another source tree
(say main before a change, from ``git archive``) in the same runs, reported as ``base``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.transfer import GB, MB, BenchError, MiB, ProcStats, make_test_file, parse_size, sha256_file
from tests.server import ROOT, Server

PASSWORD = "bench password 1"  # noqa: S105 (a throwaway account on a throwaway server)


@dataclass
class Run:
    client: str  # curl | vault | base (the --baseline tree's vault)
    kind: str  # put | get
    seconds: float
    client_cpu: float
    client_maxrss: int  # bytes
    server_cpu: float
    size: int

    @property
    def mb_s(self) -> float:
        return self.size / self.seconds / MB

    def per_gb(self, cpu: float) -> float:
        return cpu / (self.size / GB)


class PeakRss(threading.Thread):
    """The client's VmHWM, read every 20 ms until it exits. ``ru_maxrss`` from wait4 would
    also count the benchmark's own image copied at fork, before exec."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.stats, self.peak, self.done = ProcStats(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, self.stats.hwm())
            except (OSError, BenchError):
                pass  # not exec'd yet, or gone


def timed(argv: list[str], env: dict[str, str], server: ProcStats, size: int, client: str, kind: str) -> Run:
    """Run one command to completion; its own CPU from wait4, its peak RSS from /proc."""
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    if client == "base":
        env = {**env, "PYTHONPATH": str(env["VAULT_BASELINE"])}
    proc = subprocess.Popen(  # from its own tree: ``python -m`` looks in the current directory first
        argv, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    rss = PeakRss(proc.pid)
    rss.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    rss.done.set()
    rss.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({proc.returncode}): {err}")
    return Run(
        client, kind, seconds, usage.ru_utime + usage.ru_stime, rss.peak,
        server.cpu_seconds() - cpu0, size,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-size", default="64M")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tmpdir", type=Path)
    parser.add_argument("--baseline", type=Path, help="also run the vault client of this source tree")
    args = parser.parse_args()
    if args.baseline and not (args.baseline / "vaultcli").is_dir():
        parser.error(f"--baseline: no vaultcli/ in {args.baseline}")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        results = bench(Path(tmp), args)
    report(results, args)
    return 0


def bench(tmp: Path, args: argparse.Namespace) -> list[Run]:
    server = Server(tmp / "server").start()
    try:
        stats = ProcStats(server.process.pid)  # type: ignore[union-attr]
        user, _ = server.new_user(PASSWORD)
        print(f"writing a {args.size / MiB:.0f} MiB test file", file=sys.stderr)
        source = make_test_file(tmp / "source.bin", args.size)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            {"VAULT_CONFIG_DIR": str(tmp / "cli"), "PYTHONPATH": str(ROOT), "VAULT_PASSWORD": PASSWORD}
        )
        clients = ["curl", "vault"]
        if args.baseline:
            env["VAULT_BASELINE"] = str(args.baseline.resolve())
            clients.append("base")
        vault = [sys.executable, "-m", "vaultcli", "--quiet"]
        login = [*vault, "login", server.url, "-u", user, "--cacert", str(server.cert)]
        subprocess.run(login, env=env, check=True, stdin=subprocess.DEVNULL)
        curl = ["curl", "-sS", "-f", "--cacert", str(server.cert), "-H", "Authorization: Bearer {token}"]
        commands = {
            ("curl", "put"): [*curl, "-T", str(source.path), f"{server.url}/upload/curl.bin"],
            ("vault", "put"): [
                *vault,
                "put",
                str(source.path),
                "--name",
                "vault.bin",
                "--chunk-size",
                args.chunk_size,
            ],
            ("curl", "get"): [*curl, "-o", str(tmp / "curl.out"), f"{server.url}/download/curl.bin"],
            ("vault", "get"): [*vault, "get", "vault.bin", "-o", str(tmp / "vault.out")],
        }
        base_put = [a.replace("vault.bin", "base.bin") for a in commands[("vault", "put")]]
        commands[("base", "put")] = base_put
        commands[("base", "get")] = [*vault, "get", "base.bin", "-o", str(tmp / "base.out")]
        results: list[Run] = []
        for run in range(args.runs):
            order = clients if run % 2 == 0 else clients[::-1]
            for kind in ("put", "get"):
                for client in order:
                    argv = commands[(client, kind)]
                    if client == "curl":  # a fresh access token: a slow run outlives token_ttl
                        token = server.request("POST", "/login", {"username": user, "password": PASSWORD})
                        argv = [a.replace("{token}", token.json()["token"]) for a in argv]
                    result = timed(argv, env, stats, source.size, client, kind)
                    results.append(result)
                    print(f"run {run + 1} {client} {kind}: {result.mb_s:.0f} MB/s", file=sys.stderr)
            for out in (f"{client}.out" for client in clients):
                if sha256_file(tmp / out) != source.sha256:
                    raise SystemExit(f"{out}: wrong bytes")
                (tmp / out).unlink()
        return results
    finally:
        server.stop()


def report(results: list[Run], args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(f"vault client vs curl, {args.size / MiB:.0f} MiB, {args.runs} runs, load average {load[0]:.1f}")
    if args.baseline:
        print(f"  base: the client of {args.baseline}")
    clients = ["curl", "vault", "base"] if args.baseline else ["curl", "vault"]
    for kind in ("put", "get"):
        runs_of = {name: [r for r in results if r.client == name and r.kind == kind] for name in clients}
        for name, runs in runs_of.items():
            print(
                f"  {kind} {name:5}: {statistics.median(r.mb_s for r in runs):6.0f} MB/s"
                f" ({min(r.mb_s for r in runs):.0f}-{max(r.mb_s for r in runs):.0f}),"
                f" client {statistics.median(r.per_gb(r.client_cpu) for r in runs):.2f} CPU-s/GB,"
                f" server {statistics.median(r.per_gb(r.server_cpu) for r in runs):.2f} CPU-s/GB,"
                f" client peak RSS {max(r.client_maxrss for r in runs) / MiB:.1f} MiB"
            )
        for name in clients[1:]:
            speed = [v.mb_s / c.mb_s for v, c in zip(runs_of[name], runs_of["curl"], strict=True)]
            cpu = [v.client_cpu / c.client_cpu for v, c in zip(runs_of[name], runs_of["curl"], strict=True)]
            print(
                f"  {kind} ratio {name}/curl: speed {statistics.median(speed):.2f}"
                f" ({min(speed):.2f}-{max(speed):.2f}), client CPU {statistics.median(cpu):.2f}"
                f" ({min(cpu):.2f}-{max(cpu):.2f})"
            )
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "mb_s": r.mb_s} for r in results], indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
