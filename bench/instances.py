"""The README's "Several instances" setup beside one instance on SQLite, in the same runs.

    python -m bench.instances --size 256MiB --runs 3

Starts a throwaway PostgreSQL cluster (tests/pg.py, fsync on as in production), SeaweedFS
(tests/s3server.py), two ``run.py`` configured from the README's config.yaml behind nginx from
the README's recipe (tests/balancer.py, as tests/test_several_instances.py runs them), and one
``run.py`` with the defaults (SQLite, segments in the database). Each run uploads the test file
with ``curl -T`` and downloads it to /dev/null, through nginx and straight to the SQLite
server, alternating which goes first. CPU from /proc around each transfer: both instances
together, nginx (master and worker), PostgreSQL (postmaster and backends), weed; reported per
GB with the ratios to the SQLite server's CPU from the same run, and the load average before
and after (other work on the machine skews MB/s, less so CPU per GB).
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

from bench.storage import cluster_cpu, tree_cpu
from bench.transfer import bench_environment, human, make_test_file, parse_size
from tests import pg
from tests.balancer import several_instances
from tests.s3server import S3Server
from tests.server import Server

KINDS = ("put", "get")
MODES = ("sqlite", "instances")
PARTS = ("vault", "nginx", "postgres", "weed")
NAME = "bench.bin"


class Target:
    """Where curl goes (a URL and the certificate to check) and whose CPU counts."""

    def __init__(self, url: str, cert: Path, token: str, parts: dict[str, object]) -> None:
        self.url, self.cert, self.token, self.parts = url, cert, token, parts

    def cpu(self) -> dict[str, float]:
        found = dict.fromkeys(PARTS, 0.0)
        for part, source in self.parts.items():
            if isinstance(source, pg.Cluster):
                found[part] = cluster_cpu(source)
            else:
                assert isinstance(source, list)
                found[part] = sum(tree_cpu(pid) for pid in source)
        return found


def transfer(target: Target, kind: str, path: Path, size: int) -> dict[str, float]:
    if kind == "put":
        args = ["-T", str(path), f"{target.url}/upload/{NAME}", "-o", "/dev/null"]
    else:
        args = ["-o", "/dev/null", f"{target.url}/download/{NAME}"]
    command = [
        "curl", "-sS", "--fail", "--cacert", str(target.cert),
        "-H", f"Authorization: Bearer {target.token}", *args, "-w", "%{size_download}",
    ]  # fmt: skip
    before, wall = target.cpu(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    elapsed = time.monotonic() - wall
    after = target.cpu()
    if done.returncode != 0:
        raise RuntimeError(f"curl {kind} {target.url}: {done.stderr.strip()}")
    if kind == "get" and int(done.stdout.split()[-1]) != size:
        raise RuntimeError(f"download of {done.stdout} bytes, not {size}")
    gb = size / 1e9
    found = {part: (after[part] - before[part]) / gb for part in PARTS}
    found["total"] = sum(found[part] for part in PARTS)
    found["MB/s"] = size / 1e6 / elapsed
    return found


def run_all(args: argparse.Namespace, root: Path) -> dict[str, object]:
    load_before = os.getloadavg()
    src = make_test_file(root / NAME, args.size)
    results: dict[str, dict[str, list[dict[str, float]]]] = {m: {k: [] for k in KINDS} for m in MODES}
    with ExitStack() as stack:
        cluster = pg.Cluster().start(fsync=True)
        stack.callback(cluster.stop)
        weed = S3Server(root / "weed").start()
        stack.callback(weed.stop)
        a, b, proxy = stack.enter_context(
            several_instances(
                root / "instances", cluster.database_sync("bench"), weed, {"VAULT_TOKEN_TTL": "86400"}
            )
        )
        single = Server(root / "sqlite", env={"VAULT_TOKEN_TTL": "86400"}).start()
        stack.callback(single.stop)
        _, token = a.new_user()
        _, single_token = single.new_user()
        assert a.process and b.process and proxy.process and single.process and weed.process
        targets = {
            "sqlite": Target(single.url, single.cert, single_token, {"vault": [single.process.pid]}),
            "instances": Target(
                f"https://127.0.0.1:{proxy.port}",
                proxy.cert,
                token,
                {
                    "vault": [a.process.pid, b.process.pid],
                    "nginx": [proxy.process.pid],  # and its worker
                    "postgres": cluster,
                    "weed": [weed.process.pid],
                },
            ),
        }
        for run in range(args.runs):
            order = MODES if run % 2 == 0 else MODES[::-1]
            for kind in KINDS:
                for mode in order:
                    found = transfer(targets[mode], kind, src.path, src.size)
                    results[mode][kind].append(found)
                    print(f"run {run + 1} {mode} {kind}: {found}", file=sys.stderr)
    return {"size": args.size, "load_before": load_before, "load_after": os.getloadavg(), "results": results}


def report(data: dict[str, object]) -> str:
    results = data["results"]
    assert isinstance(results, dict)
    lines = [
        f"{human(int(str(data['size'])))} file, load average before {data['load_before']},"
        f" after {data['load_after']}",
        "| transfer | setup | MB/s | vault CPU-s/GB | nginx | PostgreSQL | weed | total CPU-s/GB"
        " | vault / SQLite (same run) | total / SQLite (same run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        pairs = list(zip(results["instances"][kind], results["sqlite"][kind], strict=True))
        for mode in MODES:
            rows = results[mode][kind]
            med = {key: statistics.median(r[key] for r in rows) for key in (*PARTS, "total", "MB/s")}
            ratios = ""
            if mode == "instances":
                parts = []
                for key in ("vault", "total"):
                    r = [mine[key] / ref["vault"] for mine, ref in pairs]
                    parts.append(f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
                ratios = " | ".join(parts)
            else:
                ratios = " | "
            lines.append(
                f"| {kind} | {mode} | {med['MB/s']:.0f} | {med['vault']:.2f} | {med['nginx']:.2f}"
                f" | {med['postgres']:.2f} | {med['weed']:.2f} | {med['total']:.2f} | {ratios} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instances", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="test file size")
    parser.add_argument("--runs", type=int, default=3, help="runs (3)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--tmpdir", type=Path, help="where the test file and the servers' data go")
    args = parser.parse_args(argv)
    with bench_environment(args.tmpdir) as root:
        data = run_all(args, root)
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
