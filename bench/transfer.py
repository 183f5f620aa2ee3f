"""Transfer benchmark: real ``run.py`` over TLS, real ``curl``, server RSS and CPU from /proc.

    python -m bench.transfer [--size 1GiB] [--runs 5] [--concurrent 8 --concurrent-size 128MiB]
                             [--segment-size N] [--skip-concurrent] [--json out.json]

Throughput is payload bytes / curl's ``time_total`` in MB/s (1 MB = 10^6 bytes); sizes are also
shown in MiB. The server's resident memory is sampled from /proc/<pid>/status (VmRSS) every
~50 ms during each transfer, its peak (VmHWM) is read at the end, and its CPU time comes from
utime + stime in /proc/<pid>/stat around each transfer. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from tests.server import Server
from vault.format import DEFAULT_SEG_SIZE, check_seg_size

MiB = 1024 * 1024
MB = 1_000_000
GB = 1_000_000_000
CHUNK = 4 * MiB
SAMPLE_INTERVAL = 0.05
START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PUT_NAME = "bench.bin"
MULTIPART_NAME = "bench-multipart.bin"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": MiB,
    "mib": MiB,
    "g": 1024 * MiB,
    "gib": 1024 * MiB,
    "kb": 1000,
    "mb": MB,
    "gb": GB,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


class BenchError(Exception):
    """A transfer failed or returned the wrong bytes."""


def parse_size(text: str) -> int:
    """``1GiB``, ``128MiB``, ``64M`` (binary), ``100MB`` (decimal) or a plain byte count."""
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 1GiB, 128MiB, 100MB or 65536")
    return int(float(match.group(1)) * _UNITS[unit])


def mib(n: float) -> float:
    return n / MiB


def human(n: int) -> str:
    return f"{mib(n):.1f} MiB = {n / MB:.1f} MB"


# --------------------------------------------------------------------------- /proc sampling


class ProcStats:
    """Memory and CPU of one process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status_kib(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise BenchError(f"no {key} in /proc/{self.pid}/status")

    def rss(self) -> int:
        """Current resident set size (VmRSS), bytes."""
        return self._status_kib("VmRSS") * 1024

    def hwm(self) -> int:
        """Peak resident set size since the process started (VmHWM), bytes."""
        return self._status_kib("VmHWM") * 1024

    def cpu_seconds(self) -> float:
        """utime + stime of all the process's threads, seconds."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RssSampler(threading.Thread):
    """Reads VmRSS every ``interval`` seconds until stopped; keeps the maximum."""

    def __init__(self, stats: ProcStats, interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.stats = stats
        self.interval = interval
        self.max_rss = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        try:
            self.max_rss = max(self.max_rss, self.stats.rss())
            self.samples += 1
        except (OSError, BenchError):
            pass  # the process is gone; the transfer will report the failure

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self.interval):
                break

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


@dataclass
class Usage:
    """Server resources used during one measured block, plus the client's (curl's) CPU."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    max_rss: int = 0
    hwm: int = 0
    rss_samples: int = 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def measure(stats: ProcStats) -> Iterator[Usage]:
    """Sample the server's RSS in a thread and take its CPU time around the block."""
    usage = Usage()
    sampler = RssSampler(stats)
    cpu0, client0, t0 = stats.cpu_seconds(), _children_cpu(), time.perf_counter()
    sampler.start()
    try:
        yield usage
    finally:
        sampler.stop()
        usage.wall_seconds = time.perf_counter() - t0
        usage.client_cpu_seconds = _children_cpu() - client0
        usage.max_rss = sampler.max_rss
        usage.rss_samples = sampler.samples
        try:
            usage.cpu_seconds = stats.cpu_seconds() - cpu0
            usage.hwm = stats.hwm()
        except OSError:
            pass


# --------------------------------------------------------------------------- test files


@dataclass(frozen=True)
class SourceFile:
    path: Path
    size: int
    sha256: str


def make_test_file(path: Path, size: int) -> SourceFile:
    """Random bytes written in chunks (never all in memory), hashed while writing."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return SourceFile(path, size, digest.hexdigest())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- results


@dataclass
class Transfer:
    kind: str  # put | multipart | download | verify-download
    name: str
    bytes: int
    seconds: float  # curl's time_total
    curl_speed: float  # curl's speed_upload / speed_download, bytes/s
    usage: Usage

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / MB if self.seconds > 0 else 0.0

    @property
    def cpu_s_per_gb(self) -> float:
        return self.usage.cpu_seconds / (self.bytes / GB) if self.bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mb_s": self.mb_s, "cpu_s_per_gb": self.cpu_s_per_gb}


@dataclass
class RunResult:
    run: int
    put: Transfer
    multipart: Transfer
    download: Transfer
    verify: Transfer | None = None
    idle_rss_after: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "put": self.put.to_json(),
            "multipart": self.multipart.to_json(),
            "download": self.download.to_json(),
            "verify_download": self.verify.to_json() if self.verify else None,
            "idle_rss_after": self.idle_rss_after,
        }


@dataclass
class KindSummary:
    median_mb_s: float
    min_mb_s: float
    max_mb_s: float
    median_cpu_s_per_gb: float
    median_client_cpu_s_per_gb: float
    max_rss: int


def summarize(transfers: Sequence[Transfer]) -> KindSummary:
    speeds = [t.mb_s for t in transfers]
    return KindSummary(
        median_mb_s=statistics.median(speeds),
        min_mb_s=min(speeds),
        max_mb_s=max(speeds),
        median_cpu_s_per_gb=statistics.median(t.cpu_s_per_gb for t in transfers),
        median_client_cpu_s_per_gb=statistics.median(
            t.usage.client_cpu_seconds / (t.bytes / GB) for t in transfers
        ),
        max_rss=max(t.usage.max_rss for t in transfers),
    )


@dataclass
class SingleStreamResult:
    size: int
    segment_size: int
    runs: list[RunResult]
    idle_rss_before: int
    hwm_after: int = 0

    def summary(self, kind: str) -> KindSummary:
        return summarize([getattr(run, kind) for run in self.runs])

    @property
    def max_rss(self) -> int:
        return max(max_rss(run) for run in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "segment_size": self.segment_size,
            "idle_rss_before": self.idle_rss_before,
            "hwm_after": self.hwm_after,
            "max_rss": self.max_rss,
            "summary": {kind: asdict(self.summary(kind)) for kind in ("put", "multipart", "download")},
            "runs": [run.to_json() for run in self.runs],
        }


@dataclass
class ConcurrentResult:
    streams: int
    size: int
    upload: Usage
    upload_seconds: list[float] = field(default_factory=list)  # each curl's time_total

    @property
    def total_bytes(self) -> int:
        return self.streams * self.size

    @property
    def aggregate_mb_s(self) -> float:
        return self.total_bytes / self.upload.wall_seconds / MB

    @property
    def cpu_s_per_gb(self) -> float:
        return self.upload.cpu_seconds / (self.total_bytes / GB)

    @property
    def per_stream_median_mb_s(self) -> float:
        return statistics.median(self.size / s / MB for s in self.upload_seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "total_bytes": self.total_bytes,
            "aggregate_mb_s": self.aggregate_mb_s,
            "cpu_s_per_gb": self.cpu_s_per_gb,
            "per_stream_median_mb_s": self.per_stream_median_mb_s,
        }


# --------------------------------------------------------------------------- the server and curl


class BenchServer:
    """A real ``run.py`` in ``workdir`` with one logged-in user; ``with`` stops it."""

    def __init__(
        self, workdir: Path, segment_size: int | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        # uploads_per_user: the concurrent phase is one user with --concurrent uploads at once
        env = {
            "VAULT_BCRYPT_ROUNDS": "4",
            "VAULT_TOKEN_TTL": "86400",
            "VAULT_UPLOADS_PER_USER": "1000",
            **(extra_env or {}),
        }
        if segment_size is not None:
            env["VAULT_SEGMENT_SIZE"] = str(segment_size)
        self.segment_size = segment_size or DEFAULT_SEG_SIZE
        self.server = Server(workdir, env=env)
        self.token = ""
        self.user = ""
        self.pid = 0
        self.stats = ProcStats(0)
        self._curl_env = {**os.environ, "LC_ALL": "C"}

    def __enter__(self) -> BenchServer:
        try:
            self._start()
            assert self.server.process is not None
            self.pid = self.server.process.pid
            self.stats = ProcStats(self.pid)
            try:
                self.user, self.token = self.server.new_user()
            except (AssertionError, OSError, ValueError, KeyError) as exc:
                raise BenchError(f"could not register and log in: {exc!r}\n{self.log_tail()}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self) -> None:
        try:
            self.server.start(timeout=START_TIMEOUT)
        except RuntimeError as exc:
            raise BenchError(f"the server did not start: {exc}") from None

    def stop(self) -> None:
        self.server.stop()

    def log_tail(self, lines: int = 20) -> str:
        return "".join(self.server.output().splitlines(keepends=True)[-lines:])

    def curl_command(self, args: Sequence[str], write_out: str) -> list[str]:
        return [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            str(self.server.cert),
            "-H",
            f"Authorization: Bearer {self.token}",
            *args,
            "-w",
            write_out,
        ]

    def check_curl(self, what: str, returncode: int, stdout: str, stderr: str) -> list[str]:
        if returncode != 0:
            raise BenchError(
                f"{what}: curl exited {returncode}: {stderr.strip()}\n"
                f"--- server log (tail) ---\n{self.log_tail()}"
            )
        return stdout.split()

    def _run_curl(self, what: str, args: Sequence[str], write_out: str) -> list[str]:
        proc = subprocess.run(
            self.curl_command(args, write_out),
            capture_output=True,
            text=True,
            env=self._curl_env,
            check=False,
        )
        return self.check_curl(what, proc.returncode, proc.stdout, proc.stderr)

    def upload(self, kind: str, src: SourceFile, name: str, response: Path) -> Transfer:
        """``kind`` is ``put`` (curl -T to /upload/<name>) or ``multipart`` (curl -F to /upload)."""
        if kind == "put":
            args = ["-T", str(src.path), f"{self.server.url}/upload/{name}"]
        else:
            form = f"file=@{src.path};filename={name};type=application/octet-stream"
            args = ["-F", form, f"{self.server.url}/upload"]
        with measure(self.stats) as usage:
            out = self._run_curl(
                f"{kind} upload of {name}", [*args, "-o", str(response)], "%{time_total} %{speed_upload}"
            )
        check_upload_response(f"{kind} upload of {name}", response, src, name)
        return Transfer(kind, name, src.size, float(out[0]), float(out[1]), usage)

    def download(self, name: str, src: SourceFile, dest: Path | None) -> Transfer:
        """GET /download/<name> to ``dest`` (verified against ``src``), or to /dev/null if None."""
        target = str(dest) if dest is not None else os.devnull
        with measure(self.stats) as usage:
            out = self._run_curl(
                f"download of {name}",
                [f"{self.server.url}/download/{name}", "-o", target],
                "%{time_total} %{speed_download} %{size_download}",
            )
        got = int(out[2])
        if got != src.size:
            raise BenchError(f"download of {name}: got {got} bytes, expected {src.size}")
        if dest is not None:
            digest = sha256_file(dest)
            if digest != src.sha256:
                raise BenchError(f"download of {name}: sha256 {digest}, expected {src.sha256}")
        kind = "download" if dest is None else "verify-download"
        return Transfer(kind, name, src.size, float(out[0]), float(out[1]), usage)


def check_upload_response(what: str, response: Path, src: SourceFile, name: str) -> None:
    try:
        body = json.loads(response.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{what}: unreadable response ({exc})") from None
    if body.get("sha256") != src.sha256 or body.get("size") != src.size or body.get("filename") != name:
        raise BenchError(f"{what}: server reported {body}, expected sha256 {src.sha256} size {src.size}")


# --------------------------------------------------------------------------- benchmarks


Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_single_stream(
    bench: BenchServer, src: SourceFile, scratch: Path, runs: int, log: Log
) -> SingleStreamResult:
    """``runs`` x (PUT upload, multipart upload, download to /dev/null); verify bytes on run 1."""
    result = SingleStreamResult(src.size, bench.segment_size, [], idle_rss_before=bench.stats.rss())
    response = scratch / "response.json"
    for n in range(1, runs + 1):
        put = bench.upload("put", src, PUT_NAME, response)
        multipart = bench.upload("multipart", src, MULTIPART_NAME, response)
        verify = None
        if n == 1:
            copy = scratch / "download.bin"
            try:
                verify = bench.download(PUT_NAME, src, copy)
            finally:
                copy.unlink(missing_ok=True)
        download = bench.download(PUT_NAME, src, None)
        run = RunResult(n, put, multipart, download, verify, idle_rss_after=bench.stats.rss())
        result.runs.append(run)
        log(
            f"  run {n}/{runs}: PUT {put.mb_s:7.1f} MB/s  multipart {multipart.mb_s:7.1f} MB/s  "
            f"GET {download.mb_s:7.1f} MB/s  max RSS {mib(max_rss(run)):6.1f} MiB  "
            f"idle RSS after {mib(run.idle_rss_after):6.1f} MiB" + ("  (sha256 verified)" if verify else "")
        )
    result.hwm_after = bench.stats.hwm()
    return result


def max_rss(run: RunResult) -> int:
    return max(t.usage.max_rss for t in (run.put, run.multipart, run.download))


def run_concurrent(bench: BenchServer, src: SourceFile, scratch: Path, streams: int) -> ConcurrentResult:
    """``streams`` simultaneous ``curl -T`` uploads of ``src`` under different names, same user."""
    names = [f"concurrent-{i}.bin" for i in range(streams)]
    responses = [scratch / f"concurrent-{i}.json" for i in range(streams)]
    procs: list[subprocess.Popen[str]] = []
    seconds: list[float] = []
    try:
        with measure(bench.stats) as usage:
            for name, response in zip(names, responses, strict=True):
                args = ["-T", str(src.path), f"{bench.server.url}/upload/{name}", "-o", str(response)]
                procs.append(
                    subprocess.Popen(
                        bench.curl_command(args, "%{time_total} %{speed_upload}"),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=bench._curl_env,
                    )
                )
            outputs = [proc.communicate() for proc in procs]
        for name, proc, (stdout, stderr) in zip(names, procs, outputs, strict=True):
            out = bench.check_curl(f"concurrent upload of {name}", proc.returncode, stdout, stderr)
            seconds.append(float(out[0]))
        for name, response in zip(names, responses, strict=True):
            check_upload_response(f"concurrent upload of {name}", response, src, name)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return ConcurrentResult(streams, src.size, usage, seconds)


# --------------------------------------------------------------------------- report


def single_stream_table(result: SingleStreamResult) -> str:
    rows = [
        ("PUT upload (curl -T)", result.summary("put")),
        ("multipart upload (curl -F)", result.summary("multipart")),
        ("download (GET)", result.summary("download")),
    ]
    header = (
        f"{'transfer':<28} {'median MB/s':>11} {'min':>8} {'max':>8} "
        f"{'CPU-s/GB':>9} {'curl CPU-s/GB':>13} {'max RSS MiB':>12}"
    )
    lines = [header, "-" * len(header)]
    for label, s in rows:
        lines.append(
            f"{label:<28} {s.median_mb_s:>11.1f} {s.min_mb_s:>8.1f} {s.max_mb_s:>8.1f} "
            f"{s.median_cpu_s_per_gb:>9.2f} {s.median_client_cpu_s_per_gb:>13.2f} {mib(s.max_rss):>12.1f}"
        )
    return "\n".join(lines)


def report(
    src: SourceFile,
    single: SingleStreamResult,
    concurrent: ConcurrentResult | None,
    bench: BenchServer,
    final_hwm: int,
) -> str:
    runs = len(single.runs)
    out = [
        "",
        "vault transfer benchmark",
        f"  file      {src.size} bytes = {human(src.size)}, sha256 {src.sha256[:16]}...",
        f"  segment   {single.segment_size} bytes ({mib(single.segment_size):g} MiB)",
        f"  server    pid {bench.pid}, {bench.server.url}",
        f"  machine   {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        f"Single stream: median of {runs} run(s), MB/s = file bytes / curl time_total / 10^6",
        single_stream_table(single),
        "",
    ]
    if concurrent is not None:
        c = concurrent
        out += [
            f"Concurrent: {c.streams} x curl -T of {human(c.size)} (total {human(c.total_bytes)})",
            f"  aggregate upload        {c.aggregate_mb_s:8.1f} MB/s"
            f"  (total bytes / wall time {c.upload.wall_seconds:.2f} s)",
            f"  per-stream median       {c.per_stream_median_mb_s:8.1f} MB/s",
            f"  server CPU-s/GB         {c.cpu_s_per_gb:8.2f}",
            f"  max RSS                 {mib(c.upload.max_rss):8.1f} MiB",
            "",
        ]
    idle_after = [r.idle_rss_after for r in single.runs]
    out += [
        "Server memory (MiB)",
        f"  idle RSS after start-up + login       {mib(single.idle_rss_before):8.1f}",
        f"  idle RSS after each single-stream run {' '.join(f'{mib(x):.1f}' for x in idle_after)}",
        f"  max sampled RSS, single stream        {mib(single.max_rss):8.1f}",
    ]
    if concurrent is not None:
        out.append(f"  max sampled RSS, concurrent           {mib(concurrent.upload.max_rss):8.1f}")
    out += [
        f"  VmHWM after single stream             {mib(single.hwm_after):8.1f}",
        f"  VmHWM (peak) at the end               {mib(final_hwm):8.1f}",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="test file size (1GiB)")
    parser.add_argument("--runs", type=int, default=5, help="single-stream runs (5)")
    parser.add_argument("--concurrent", type=int, default=8, help="concurrent uploads (8)")
    parser.add_argument(
        "--concurrent-size", type=parse_size, default=parse_size("128MiB"), help="size of each (128MiB)"
    )
    parser.add_argument("--skip-concurrent", action="store_true", help="skip the concurrent uploads")
    parser.add_argument(
        "--segment-size", type=parse_size, help="server segment size (VAULT_SEGMENT_SIZE; default 1MiB)"
    )
    parser.add_argument("--tmpdir", type=Path, help="where to put the test files and server data")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.concurrent < 1 or args.size < 1 or args.concurrent_size < 1:
        parser.error("--runs, --concurrent and the sizes must be positive")
    if args.segment_size is not None:
        try:
            check_seg_size(args.segment_size)
        except ValueError as exc:
            parser.error(f"--segment-size: {exc}")
    if shutil.which("curl") is None:
        parser.error("curl is not installed")
    return args


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def bench_environment(tmpdir: Path | None) -> Iterator[Path]:
    """A temporary directory removed at the end; SIGTERM unwinds like Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="vault-bench-", dir=tmpdir))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with bench_environment(args.tmpdir) as root:
            files, scratch = root / "files", root / "scratch"
            files.mkdir()
            scratch.mkdir()
            _stderr(f"writing a {human(args.size)} test file in {files} ...")
            src = make_test_file(files / "bench.bin", args.size)
            with BenchServer(root / "server", args.segment_size) as bench:
                _stderr(f"server pid {bench.pid} at {bench.server.url}; {args.runs} single-stream run(s)")
                single = run_single_stream(bench, src, scratch, args.runs, _stderr)
                concurrent = None
                if not args.skip_concurrent:
                    _stderr(f"writing a {human(args.concurrent_size)} file for the concurrent uploads ...")
                    csrc = make_test_file(files / "concurrent.bin", args.concurrent_size)
                    _stderr(f"{args.concurrent} concurrent uploads ...")
                    concurrent = run_concurrent(bench, csrc, scratch, args.concurrent)
                final_hwm = bench.stats.hwm()
                print(report(src, single, concurrent, bench, final_hwm), flush=True)
                if args.json:
                    data = {
                        "config": {
                            "size": args.size,
                            "runs": args.runs,
                            "segment_size": bench.segment_size,
                            "concurrent": None if args.skip_concurrent else args.concurrent,
                            "concurrent_size": args.concurrent_size,
                            "cpu_count": os.cpu_count(),
                            "loadavg": os.getloadavg(),
                        },
                        "file_sha256": src.sha256,
                        "single_stream": single.to_json(),
                        "concurrent": concurrent.to_json() if concurrent else None,
                        "final_hwm": final_hwm,
                    }
                    args.json.write_text(json.dumps(data, indent=2) + "\n")
                    _stderr(f"wrote {args.json}")
    except BenchError as exc:
        print(f"bench.transfer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.transfer: interrupted; server stopped and temporary files removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
