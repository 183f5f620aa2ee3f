"""Several server processes on one machine (``workers: N``): a supervisor forks them after the
port is bound, so that they all accept on the one socket, and the kernel hands each connection
to one of them. What they must agree on lives in the shared state (vault/store.py StateStore).

The supervisor does no serving and opens no database (nothing with threads may run before a
fork). It prints the banner once every worker is ready, passes SIGTERM, SIGINT and SIGHUP on
to the workers, starts a worker again if one dies while the server runs (at most MAX_RESTARTS
times), and returns once every worker has exited after a stop. A worker that cannot start
stops the whole server, with its message on stderr.
"""

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

MAX_RESTARTS = 100  # workers started again after dying, over the server's life (Tornado's default)
READY_TIMEOUT = 120.0  # seconds every worker has to open the database and start serving
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Worker:
    """What a worker process knows of itself: its number (1..N) and how to say it is ready."""

    def __init__(self, number: int, ready_fd: int) -> None:
        self.number = number
        self._ready_fd = ready_fd

    def ready(self) -> None:
        """Serving now (the supervisor prints the banner once every worker said so)."""
        if self._ready_fd >= 0:
            os.write(self._ready_fd, b"r")
            os.close(self._ready_fd)
            self._ready_fd = -1


class WorkerFailed(Exception):
    """A worker exited before it was ready."""


def supervise(count: int, work: Callable[[Worker], None], banner: str) -> None:
    """Fork ``count`` workers running ``work`` and watch them until they have all stopped."""
    supervisor = _Supervisor(count, work)
    supervisor.start()
    print(banner, flush=True)
    supervisor.watch()


class _Supervisor:
    def __init__(self, count: int, work: Callable[[Worker], None]) -> None:
        self._count, self._work = count, work
        self._children: dict[int, int] = {}  # pid -> worker number
        self._stopping = False
        self._restarts = 0

    def _spawn(self, number: int, ready_fd: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                self._work(Worker(number, ready_fd))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:
                print(
                    f"vault: worker {number} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True
                )
            finally:
                os._exit(code)
        self._children[pid] = number

    def start(self) -> None:
        """Fork every worker and wait until each is ready; if one exits first, stop the rest
        and raise WorkerFailed."""
        read_fd, write_fd = os.pipe()
        for number in range(1, self._count + 1):
            self._spawn(number, write_fd)
        os.close(write_fd)
        for sig in FORWARDED:
            signal.signal(sig, self._forward)
        ready, deadline = 0, time.monotonic() + READY_TIMEOUT
        try:
            while ready < self._count:
                # Every worker holds the pipe's write end until it is ready: EOF means one died.
                chunk = os.read(read_fd, self._count)
                if not chunk or time.monotonic() > deadline:
                    raise WorkerFailed("a worker exited before it was ready")
                ready += len(chunk)
        except BaseException:
            self._stop_all()
            raise
        finally:
            os.close(read_fd)
        log.info("%d workers serving (pids %s)", self._count, ", ".join(map(str, sorted(self._children))))

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        for pid in list(self._children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop_all(self) -> None:
        self._stopping = True
        self._forward(signal.SIGTERM, None)
        while self._children:
            pid, _ = os.wait()
            self._children.pop(pid, None)

    def watch(self) -> None:
        """Wait for the workers; start one again that died while the server was running."""
        while self._children:
            pid, status = os.wait()  # a forwarded signal interrupts and resumes it (PEP 475)
            number = self._children.pop(pid, None)
            if number is None or self._stopping:
                continue
            log.error("worker %d (pid %d) died (wait status %d)", number, pid, status)
            if self._restarts >= MAX_RESTARTS:
                log.error("workers died %d times: stopping the server", MAX_RESTARTS)
                self._stop_all()
                raise WorkerFailed("too many workers died")
            self._restarts += 1
            self._spawn(number, -1)
