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
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from tests.server import Server
from vault import config
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


class BenchError(Exception):
    """A transfer failed or returned the wrong bytes."""


def parse_size(text: str) -> int:
    """``1GiB``, ``128MiB``, ``64M`` (binary), ``100MB`` (decimal) or a plain byte count."""
    try:
        return config.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        return _stat_cpu(f"/proc/{self.pid}/stat")

    def threads(self) -> dict[int, tuple[str, float]]:
        """tid -> (thread kind, utime + stime seconds) for each live thread.

        The kind is the OS thread name less a pool's ``_N`` suffix: ``loop`` (the event loop:
        TLS, HTTP, Tornado), ``crypto``, ``sha256``, ``sqlite`` (aiosqlite's threads), as named by
        bench/named_threads.py; an unnamed thread counts as ``other``.
        """
        found: dict[int, tuple[str, float]] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                found[int(task.name)] = (thread_kind(comm), _stat_cpu(str(task / "stat")))
            except (OSError, ValueError):
                continue  # the thread ended meanwhile
        return found


THREAD_KINDS = ("loop", "crypto", "sha256", "sqlite", "other")


def thread_kind(comm: str) -> str:
    kind = re.sub(r"_\d+$", "", comm)
    return kind if kind in THREAD_KINDS else "other"


def _stat_cpu(path: str) -> float:
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per thread kind between two ``ProcStats.threads`` snapshots."""
    delta = dict.fromkeys(THREAD_KINDS, 0.0)
    for tid, (kind, seconds) in after.items():
        delta[kind] += seconds - before.get(tid, (kind, 0.0))[1]
    return delta


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
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds per thread kind


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def measure(stats: ProcStats) -> Iterator[Usage]:
    """Sample the server's RSS in a thread and take its CPU time around the block."""
    usage = Usage()
    sampler = RssSampler(stats)
    threads0 = stats.threads()
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
            usage.threads = thread_cpu_delta(threads0, stats.threads())
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

KINDS = ("put", "multipart", "download")
KIND_LABELS = {"put": "upload, curl -T", "multipart": "upload, curl -F", "download": "download, GET"}


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

    def thread_cpu_s_per_gb(self, kind: str) -> float:
        return self.usage.threads.get(kind, 0.0) / (self.bytes / GB) if self.bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mb_s": self.mb_s, "cpu_s_per_gb": self.cpu_s_per_gb}


@dataclass
class RunResult:
    """One run: each target's PUT, multipart upload and download of the same file."""

    run: int
    transfers: dict[str, dict[str, Transfer]]  # target label -> kind -> transfer
    verified: list[str] = field(default_factory=list)  # targets whose download was sha256-checked
    idle_rss_after: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "transfers": {
                label: {kind: t.to_json() for kind, t in kinds.items()}
                for label, kinds in self.transfers.items()
            },
            "verified": self.verified,
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
    threads_cpu_s_per_gb: dict[str, float]  # median per thread kind


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
        threads_cpu_s_per_gb={
            kind: statistics.median(t.thread_cpu_s_per_gb(kind) for t in transfers) for kind in THREAD_KINDS
        },
    )


@dataclass
class SingleStreamResult:
    size: int
    segment_size: int
    targets: list[str]  # labels, the vault under test first
    runs: list[RunResult]
    idle_rss_before: dict[str, int]
    hwm_after: dict[str, int] = field(default_factory=dict)

    def transfers(self, label: str, kind: str) -> list[Transfer]:
        return [run.transfers[label][kind] for run in self.runs]

    def summary(self, label: str, kind: str) -> KindSummary:
        return summarize(self.transfers(label, kind))

    def ratio(self, label: str, reference: str, kind: str) -> float:
        """Median over runs of (label's MB/s / reference's MB/s), both from the same run."""
        return statistics.median(
            a.mb_s / b.mb_s if b.mb_s else 0.0
            for a, b in zip(self.transfers(label, kind), self.transfers(reference, kind), strict=True)
        )

    def cpu_ratio(self, label: str, reference: str, kind: str) -> float:
        """Median over runs of (label's server CPU-s/GB / reference's), same runs."""
        return statistics.median(
            a.cpu_s_per_gb / b.cpu_s_per_gb if b.cpu_s_per_gb else 0.0
            for a, b in zip(self.transfers(label, kind), self.transfers(reference, kind), strict=True)
        )

    def max_rss(self, label: str) -> int:
        return max(t.usage.max_rss for run in self.runs for t in run.transfers[label].values())

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "segment_size": self.segment_size,
            "targets": self.targets,
            "idle_rss_before": self.idle_rss_before,
            "hwm_after": self.hwm_after,
            "summary": {
                label: {kind: asdict(self.summary(label, kind)) for kind in KINDS} for label in self.targets
            },
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


# --------------------------------------------------------------------------- the servers and curl


class Target:
    """A server under measurement over HTTPS on loopback; subclasses say how to talk to it."""

    label = ""
    pid = 0
    url = ""
    cert = Path()

    def __init__(self) -> None:
        self.stats = ProcStats(0)
        self._curl_env = {**os.environ, "LC_ALL": "C"}

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        return ""

    def auth_args(self) -> list[str]:
        return []

    def upload_args(self, kind: str, src: SourceFile, name: str) -> list[str]:
        raise NotImplementedError

    def download_url(self, name: str) -> str:
        raise NotImplementedError

    def check_upload(self, what: str, response: Path, src: SourceFile, name: str) -> None:
        """The answer to an upload; the peer's is not checked (run 1's download is)."""

    def curl_command(self, args: Sequence[str], write_out: str) -> list[str]:
        return [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            str(self.cert),
            *self.auth_args(),
            *args,
            "-w",
            write_out,
        ]

    def check_curl(self, what: str, returncode: int, stdout: str, stderr: str) -> list[str]:
        if returncode != 0:
            raise BenchError(
                f"{self.label}: {what}: curl exited {returncode}: {stderr.strip()}\n"
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
        """``kind`` is ``put`` (curl -T) or ``multipart`` (curl -F)."""
        with measure(self.stats) as usage:
            out = self._run_curl(
                f"{kind} upload of {name}",
                [*self.upload_args(kind, src, name), "-o", str(response)],
                "%{time_total} %{speed_upload}",
            )
        self.check_upload(f"{kind} upload of {name}", response, src, name)
        return Transfer(kind, name, src.size, float(out[0]), float(out[1]), usage)

    def download(self, name: str, src: SourceFile, dest: Path | None) -> Transfer:
        """GET ``name`` to ``dest`` (verified against ``src``), or to /dev/null if None."""
        target = str(dest) if dest is not None else os.devnull
        with measure(self.stats) as usage:
            out = self._run_curl(
                f"download of {name}",
                [self.download_url(name), "-o", target],
                "%{time_total} %{speed_download} %{size_download}",
            )
        got = int(out[2])
        if got != src.size:
            raise BenchError(f"{self.label}: download of {name}: got {got} bytes, expected {src.size}")
        if dest is not None:
            digest = sha256_file(dest)
            if digest != src.sha256:
                raise BenchError(f"{self.label}: download of {name}: sha256 {digest}, expected {src.sha256}")
        kind = "download" if dest is None else "verify-download"
        return Transfer(kind, name, src.size, float(out[0]), float(out[1]), usage)

    def after_upload(self, kind: str, name: str) -> None:
        """Called after each measured upload (the peer removes the multipart copy)."""


NAMED_THREADS = Path(__file__).resolve().parent / "named_threads.py"


class BenchServer(Target):
    """A real ``run.py`` (from ``root``) in ``workdir`` with one logged-in user; ``with`` stops it."""

    def __init__(
        self,
        workdir: Path,
        segment_size: int | None = None,
        extra_env: dict[str, str] | None = None,
        *,
        label: str = "vault",
        root: Path | None = None,
    ) -> None:
        super().__init__()
        # uploads_per_user: the concurrent phase is one user with --concurrent uploads at once
        env = {
            "VAULT_BCRYPT_ROUNDS": "4",
            "VAULT_TOKEN_TTL": "86400",
            "VAULT_UPLOADS_PER_USER": "1000",
            **(extra_env or {}),
        }
        if segment_size is not None:
            env["VAULT_SEGMENT_SIZE"] = str(segment_size)
        self.label = label
        self.segment_size = segment_size or DEFAULT_SEG_SIZE
        self.server = Server(workdir, env=env, launcher=(str(NAMED_THREADS),))
        if root is not None:
            self.server.root = root
        self.token = ""
        self.user = ""

    def start(self) -> None:
        try:
            self.server.start(timeout=START_TIMEOUT)
        except RuntimeError as exc:
            raise BenchError(f"{self.label}: the server did not start: {exc}") from None
        assert self.server.process is not None
        self.pid = self.server.process.pid
        self.stats = ProcStats(self.pid)
        self.url = self.server.url
        self.cert = self.server.cert
        try:
            self.user, self.token = self.server.new_user()
        except (AssertionError, OSError, ValueError, KeyError) as exc:
            raise BenchError(f"could not register and log in: {exc!r}\n{self.log_tail()}") from None

    def stop(self) -> None:
        self.server.stop()

    def log_tail(self, lines: int = 20) -> str:
        return "".join(self.server.output().splitlines(keepends=True)[-lines:])

    def auth_args(self) -> list[str]:
        return ["-H", f"Authorization: Bearer {self.token}"]

    def upload_args(self, kind: str, src: SourceFile, name: str) -> list[str]:
        if kind == "put":
            return ["-T", str(src.path), f"{self.url}/upload/{name}"]
        form = f"file=@{src.path};filename={name};type=application/octet-stream"
        return ["-F", form, f"{self.url}/upload"]

    def download_url(self, name: str) -> str:
        return f"{self.url}/download/{name}"

    def check_upload(self, what: str, response: Path, src: SourceFile, name: str) -> None:
        check_upload_response(f"{self.label}: {what}", response, src, name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Copyparty(Target):
    """copyparty (bench/requirements.txt) serving ``workdir/files`` anonymously over HTTPS.

    It stores plaintext: no encryption, no MAC, no database (no ``-e2d``), but it hashes each PUT
    (SHA-512) as vault hashes each upload (SHA-256). It gets the vault server's certificate
    and key, so both negotiate the same TLS; same Python, same loopback, same curl.
    """

    label = "copyparty"

    def __init__(self, workdir: Path, cert: Path, key: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.files = workdir / "files"
        self.cert = cert
        self._key = key
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "copyparty.log"

    def start(self) -> None:
        self.files.mkdir(parents=True)
        bundle = self.workdir / "cert-and-key.pem"  # copyparty reads both from one file
        bundle.write_bytes(self._key.read_bytes() + self.cert.read_bytes())
        bundle.chmod(0o600)
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "copyparty",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "--https-only",
            "--cert",
            str(bundle),
            "--no-crt",
            "-v",
            f"{self.files}::rwd",
            "--daw",  # a PUT replaces the file of that name, as vault's does
            "--no-thumb",
            "-q",
        ]
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.workdir / "config")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self.process.pid
        self.stats = ProcStats(self.pid)
        self.url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"copyparty exited during start-up:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise BenchError(f"copyparty did not start in time:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    def upload_args(self, kind: str, src: SourceFile, name: str) -> list[str]:
        if kind == "put":
            return ["-T", str(src.path), f"{self.url}/{name}"]
        form = f"f=@{src.path};filename={name};type=application/octet-stream"
        return ["-F", "act=bput", "-F", form, f"{self.url}/"]

    def download_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def after_upload(self, kind: str, name: str) -> None:
        stored = self.files / name
        if kind == "multipart":  # a multipart upload never replaces: remove it for the next run
            for path in self.files.glob(f"{name}*"):
                path.unlink()
        elif not stored.exists():
            raise BenchError(f"copyparty: {name} was not stored")


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
    targets: Sequence[Target], src: SourceFile, scratch: Path, runs: int, log: Log, segment_size: int
) -> SingleStreamResult:
    """``runs`` x, for each kind in turn, every target's PUT / multipart upload / download of the
    same file (interleaved, so a change in the machine's load hits every target alike); run 1
    also downloads once to disk on every target and checks the sha256."""
    result = SingleStreamResult(
        src.size,
        segment_size,
        [t.label for t in targets],
        [],
        idle_rss_before={t.label: t.stats.rss() for t in targets},
    )
    response = scratch / "response.json"
    names = {"put": PUT_NAME, "multipart": MULTIPART_NAME}
    for n in range(1, runs + 1):
        run = RunResult(n, {t.label: {} for t in targets})
        for kind in ("put", "multipart"):
            for target in targets:
                run.transfers[target.label][kind] = target.upload(kind, src, names[kind], response)
                target.after_upload(kind, names[kind])
        for target in targets:
            if n == 1:
                copy = scratch / "download.bin"
                try:
                    target.download(PUT_NAME, src, copy)
                    run.verified.append(target.label)
                finally:
                    copy.unlink(missing_ok=True)
        for target in targets:
            run.transfers[target.label]["download"] = target.download(PUT_NAME, src, None)
        run.idle_rss_after = {t.label: t.stats.rss() for t in targets}
        result.runs.append(run)
        for target in targets:
            got = run.transfers[target.label]
            log(
                f"  run {n}/{runs} {target.label:>12}: PUT {got['put'].mb_s:7.1f} MB/s "
                f"{got['put'].cpu_s_per_gb:5.2f} CPU-s/GB  multipart {got['multipart'].mb_s:7.1f}  "
                f"GET {got['download'].mb_s:7.1f} MB/s {got['download'].cpu_s_per_gb:5.2f} CPU-s/GB  "
                f"max RSS {mib(max(t.usage.max_rss for t in got.values())):6.1f} MiB"
                + ("  (sha256 verified)" if target.label in run.verified else "")
            )
    result.hwm_after = {t.label: t.stats.hwm() for t in targets}
    return result


def run_concurrent(bench: Target, src: SourceFile, scratch: Path, streams: int) -> ConcurrentResult:
    """``streams`` simultaneous ``curl -T`` uploads of ``src`` under different names, same user."""
    names = [f"concurrent-{i}.bin" for i in range(streams)]
    responses = [scratch / f"concurrent-{i}.json" for i in range(streams)]
    procs: list[subprocess.Popen[str]] = []
    seconds: list[float] = []
    try:
        with measure(bench.stats) as usage:
            for name, response in zip(names, responses, strict=True):
                args = [*bench.upload_args("put", src, name), "-o", str(response)]
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
            bench.check_upload(f"concurrent upload of {name}", response, src, name)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return ConcurrentResult(streams, src.size, usage, seconds)


# --------------------------------------------------------------------------- report


def single_stream_table(result: SingleStreamResult) -> str:
    peer = "copyparty" if "copyparty" in result.targets else None
    header = (
        f"{'transfer':<17} {'server':<12} {'MB/s':>7} {'min':>7} {'max':>7} {'x peer':>6} "
        f"{'CPU-s/GB':>8} " + " ".join(f"{k:>6}" for k in THREAD_KINDS) + f" {'curl':>5} {'RSS MiB':>7}"
    )
    lines = [header, "-" * len(header)]
    for kind in KINDS:
        for label in result.targets:
            s = result.summary(label, kind)
            ratio = f"{result.ratio(label, peer, kind):6.2f}" if peer and label != peer else f"{'':>6}"
            threads = (
                " ".join(f"{s.threads_cpu_s_per_gb[k]:>6.2f}" for k in THREAD_KINDS)
                if label != peer
                else " ".join(f"{'':>6}" for _ in THREAD_KINDS)
            )
            lines.append(
                f"{KIND_LABELS[kind]:<17} {label:<12} {s.median_mb_s:>7.1f} {s.min_mb_s:>7.1f} "
                f"{s.max_mb_s:>7.1f} {ratio} {s.median_cpu_s_per_gb:>8.2f} {threads} "
                f"{s.median_client_cpu_s_per_gb:>5.2f} {mib(s.max_rss):>7.1f}"
            )
    return "\n".join(lines)


def baseline_lines(result: SingleStreamResult, baseline: str) -> list[str]:
    main = result.targets[0]
    out = [f"{main} against {baseline}, same runs (medians of per-run ratios)"]
    for kind in KINDS:
        out.append(
            f"  {KIND_LABELS[kind]:<17} speed x{result.ratio(main, baseline, kind):.2f}"
            f"   server CPU-s/GB x{result.cpu_ratio(main, baseline, kind):.2f}"
        )
    return out + [""]


def report(
    src: SourceFile,
    single: SingleStreamResult,
    concurrent: ConcurrentResult | None,
    bench: BenchServer,
    final_hwm: int,
    load_before: Sequence[float],
    baselines: Sequence[str],
) -> str:
    runs = len(single.runs)
    out = [
        "",
        "vault transfer benchmark",
        f"  file      {src.size} bytes = {human(src.size)}, sha256 {src.sha256[:16]}...",
        f"  segment   {single.segment_size} bytes ({mib(single.segment_size):g} MiB)",
        f"  servers   {', '.join(single.targets)} (each HTTPS on 127.0.0.1, the same file, interleaved)",
        f"  machine   {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in load_before)} "
        f"before, {' '.join(f'{x:.2f}' for x in os.getloadavg())} after",
        "",
        f"Single stream: median of {runs} run(s), MB/s = file bytes / curl time_total / 10^6;",
        "x peer = median of the per-run ratios to copyparty's MB/s; server CPU-s/GB in total and by",
        "thread (loop: event loop, TLS, HTTP; crypto; sha256; sqlite; other); curl: the client's CPU-s/GB",
        single_stream_table(single),
        "",
    ]
    for baseline in baselines:
        out += baseline_lines(single, baseline)
    if concurrent is not None:
        c = concurrent
        out += [
            f"Concurrent ({bench.label}): {c.streams} x curl -T of {human(c.size)}"
            f" (total {human(c.total_bytes)})",
            f"  aggregate upload        {c.aggregate_mb_s:8.1f} MB/s"
            f"  (total bytes / wall time {c.upload.wall_seconds:.2f} s)",
            f"  per-stream median       {c.per_stream_median_mb_s:8.1f} MB/s",
            f"  server CPU-s/GB         {c.cpu_s_per_gb:8.2f}",
            f"  max RSS                 {mib(c.upload.max_rss):8.1f} MiB",
            "",
        ]
    out.append("Server memory (MiB)")
    for label in single.targets:
        idle_after = [r.idle_rss_after[label] for r in single.runs]
        out += [
            f"  {label}: idle after start-up {mib(single.idle_rss_before[label]):.1f}, idle after each run "
            f"{' '.join(f'{mib(x):.1f}' for x in idle_after)}, max sampled {mib(single.max_rss(label)):.1f}, "
            f"VmHWM {mib(single.hwm_after[label]):.1f}",
        ]
    if concurrent is not None:
        out.append(f"  {bench.label}: max sampled RSS, concurrent {mib(concurrent.upload.max_rss):.1f}")
    out.append(f"  {bench.label}: VmHWM (peak) at the end {mib(final_hwm):.1f}")
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
    parser.add_argument("--no-peer", action="store_true", help="do not measure copyparty beside vault")
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another vault source tree (e.g. `git archive main | tar -x -C DIR`) measured in the same"
        " runs, labelled with its directory's name (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the vault under test (repeatable), e.g. MALLOC_MMAP_THRESHOLD_=4194304",
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
    for tree in args.baseline:
        if not (tree / "run.py").is_file():
            parser.error(f"--baseline: no run.py in {tree}")
    if (
        len({tree.resolve().name for tree in args.baseline} | {"vault", "copyparty"})
        != len(args.baseline) + 2
    ):
        parser.error("--baseline: give each tree a directory name of its own (not vault or copyparty)")
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    if shutil.which("curl") is None:
        parser.error("curl is not installed")
    if not args.no_peer and importlib.util.find_spec("copyparty") is None:
        parser.error("copyparty is not installed: pip install -r bench/requirements.txt (or --no-peer)")
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


def run_all(args: argparse.Namespace, root: Path) -> None:
    files, scratch = root / "files", root / "scratch"
    files.mkdir()
    scratch.mkdir()
    load_before = os.getloadavg()
    _stderr(f"writing a {human(args.size)} test file in {files} ...")
    src = make_test_file(files / "bench.bin", args.size)
    extra_env = dict(item.split("=", 1) for item in args.env)
    with ExitStack() as stack:
        bench = BenchServer(root / "server", args.segment_size, extra_env)
        stack.enter_context(bench)
        targets: list[Target] = [bench]
        baselines = [tree.resolve().name for tree in args.baseline]
        for label, tree in zip(baselines, args.baseline, strict=True):
            other = BenchServer(root / f"baseline-{label}", args.segment_size, label=label, root=tree)
            targets.append(stack.enter_context(other))
        if not args.no_peer:
            peer = Copyparty(
                root / "copyparty", bench.server.cert, bench.server.workdir / "certs" / "key.pem"
            )
            targets.append(stack.enter_context(peer))
        _stderr(
            ", ".join(f"{t.label} pid {t.pid} at {t.url}" for t in targets)
            + f"; {args.runs} single-stream run(s)"
        )
        single = run_single_stream(targets, src, scratch, args.runs, _stderr, bench.segment_size)
        concurrent = None
        if not args.skip_concurrent:
            _stderr(f"writing a {human(args.concurrent_size)} file for the concurrent uploads ...")
            csrc = make_test_file(files / "concurrent.bin", args.concurrent_size)
            _stderr(f"{args.concurrent} concurrent uploads ...")
            concurrent = run_concurrent(bench, csrc, scratch, args.concurrent)
        final_hwm = bench.stats.hwm()
        print(report(src, single, concurrent, bench, final_hwm, load_before, baselines), flush=True)
        if args.json:
            data = {
                "config": {
                    "size": args.size,
                    "runs": args.runs,
                    "segment_size": bench.segment_size,
                    "concurrent": None if args.skip_concurrent else args.concurrent,
                    "concurrent_size": args.concurrent_size,
                    "baselines": [str(tree) for tree in args.baseline],
                    "env": extra_env,
                    "cpu_count": os.cpu_count(),
                    "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(),
                },
                "file_sha256": src.sha256,
                "single_stream": single.to_json(),
                "concurrent": concurrent.to_json() if concurrent else None,
                "final_hwm": final_hwm,
            }
            args.json.write_text(json.dumps(data, indent=2) + "\n")
            _stderr(f"wrote {args.json}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with bench_environment(args.tmpdir) as root:
            run_all(args, root)
    except BenchError as exc:
        print(f"bench.transfer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.transfer: interrupted; servers stopped and temporary files removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
