"""S3 client candidates for blob_store: s3, measured against a real S3 server on loopback.

    python -m bench.s3_clients --objects 256 --runs 3

Starts SeaweedFS (tests/s3server.py), then per run and per client, in turn: PUT ``--objects``
objects of one sealed segment's size (1 MiB + 48 bytes) with ``--parallel`` requests in flight,
then GET them back. Reported: the client process's CPU seconds per GB (utime + stime, all its
threads) and MB/s for each, the weed server's CPU per GB beside them, and each client's CPU as
a ratio to vault's own client (aiohttp + storage/sigv4.py) from the same run. Candidates that
are not installed are skipped: aiobotocore (``pip install aiobotocore``), httpx
(requirements-client.txt).
"""

import argparse
import asyncio
import importlib
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from storage import sigv4
from storage.s3 import S3Client, S3Config
from tests.s3server import BUCKET, S3Server

BODY = os.urandom((1 << 20) + 48)
Op = Callable[[str], Awaitable[None]]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(ops: tuple[Op, Op], count: int, parallel: int, weed_pid: int) -> dict[str, float]:
    gate = asyncio.Semaphore(parallel)
    gb = count * len(BODY) / 1e9
    result: dict[str, float] = {}
    for phase, op in zip(("put", "get"), ops, strict=True):

        async def one(i: int, op: Op = op) -> None:
            async with gate:
                await op(f"bench/{i}")

        cpu, weed, wall = own_cpu(), proc_cpu(weed_pid), time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        result[f"{phase} cpu"] = (own_cpu() - cpu) / gb
        result[f"{phase} weed"] = (proc_cpu(weed_pid) - weed) / gb
        result[f"{phase} MB/s"] = gb * 1000 / (time.monotonic() - wall)
    return result


async def vault_client(s3: S3Server, count: int, parallel: int, pid: int) -> dict[str, float]:
    config = S3Config(s3.endpoint, BUCKET, "", "us-east-1", s3.access_key, s3.secret_key)
    client = await S3Client.open(config, connections=parallel)

    async def get(key: str) -> None:
        assert len(await client.get(key) or b"") == len(BODY)

    try:
        return await measure((lambda key: client.put(key, BODY), get), count, parallel, pid)
    finally:
        await client.close()


async def aiobotocore_client(s3: S3Server, count: int, parallel: int, pid: int) -> dict[str, float]:
    # Imported by name: aiobotocore is a candidate measured here, not a dependency of vault, so
    # it is installed only where this benchmark runs (mypy in CI must not need it).
    session: Any = importlib.import_module("aiobotocore.session")

    async with session.get_session().create_client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
    ) as client:

        async def put(key: str) -> None:
            await client.put_object(Bucket=BUCKET, Key=key, Body=BODY)

        async def get(key: str) -> None:
            answer = await client.get_object(Bucket=BUCKET, Key=key)
            async with answer["Body"] as body:
                assert len(await body.read()) == len(BODY)

        return await measure((put, get), count, parallel, pid)


async def httpx_client(s3: S3Server, count: int, parallel: int, pid: int) -> dict[str, float]:
    import httpx

    host = f"127.0.0.1:{s3.port}"

    def signed(method: str, path: str) -> dict[str, str]:
        return sigv4.sign(
            method, host, path, {}, access_key=s3.access_key, secret_key=s3.secret_key, region="us-east-1"
        )

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=parallel)) as client:

        async def put(key: str) -> None:
            path = f"/{BUCKET}/{key}"
            answer = await client.put(s3.endpoint + path, content=BODY, headers=signed("PUT", path))
            assert answer.status_code == 200

        async def get(key: str) -> None:
            path = f"/{BUCKET}/{key}"
            answer = await client.get(s3.endpoint + path, headers=signed("GET", path))
            assert answer.status_code == 200 and len(answer.content) == len(BODY)

        return await measure((put, get), count, parallel, pid)


CANDIDATES: dict[str, tuple[str, Callable[..., Coroutine[Any, Any, dict[str, float]]]]] = {
    "vault (aiohttp + sigv4)": ("aiohttp", vault_client),
    "aiobotocore": ("aiobotocore", aiobotocore_client),
    "httpx + sigv4": ("httpx", httpx_client),
}


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_clients", description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=256, help="objects per phase (256 x 1 MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each over every client in turn (3)")
    parser.add_argument("--parallel", type=int, default=4, help="requests in flight (4: pipeline_depth)")
    args = parser.parse_args(argv)
    names = [name for name, (module, _) in CANDIDATES.items() if installed(module)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        s3 = S3Server(Path(tmp)).start()
        try:
            assert s3.process is not None
            for run in range(args.runs):
                for name in names:
                    found = asyncio.run(CANDIDATES[name][1](s3, args.objects, args.parallel, s3.process.pid))
                    results[name].append(found)
                    print(f"run {run + 1} {name}: {found}", file=sys.stderr)
        finally:
            s3.stop()
    report(results, load, os.getloadavg())
    return 0


def report(
    results: dict[str, list[dict[str, Any]]], before: tuple[float, ...], after: tuple[float, ...]
) -> None:
    reference = results["vault (aiohttp + sigv4)"]
    print(f"load average before {before[0]:.1f}, after {after[0]:.1f}; medians of {len(reference)} run(s)")
    print("| client | PUT CPU-s/GB (x vault) | weed | MB/s | GET CPU-s/GB (x vault) | weed | MB/s |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        cells = []
        for phase in ("put", "get"):
            ratio = statistics.median(
                r[f"{phase} cpu"] / v[f"{phase} cpu"] for r, v in zip(runs, reference, strict=True)
            )
            cpu = statistics.median(r[f"{phase} cpu"] for r in runs)
            weed = statistics.median(r[f"{phase} weed"] for r in runs)
            speed = statistics.median(r[f"{phase} MB/s"] for r in runs)
            cells += [f"{cpu:.2f} ({ratio:.2f}x)", f"{weed:.2f}", f"{speed:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
