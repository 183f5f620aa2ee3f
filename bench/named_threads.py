"""Run a Python program with each thread's name set as its OS thread name (benchmarks only).

    python bench/named_threads.py PATH/run.py ARGS...

Python 3.11 leaves every thread's ``/proc/<pid>/task/<tid>/comm`` as the interpreter's name, so
``bench/transfer.py`` could not tell the server's crypto threads from its event loop or its
SQLite threads. This launcher sets the OS name of each thread to its kind when it starts
(``crypto_0``, ``sha256_0``, ``bcrypt_0``, ``sqlite``; the main thread is ``loop``) and then
runs the program unchanged, so any checkout of vault (``--baseline``) is measured the same way.
"""

import ctypes
import ctypes.util
import runpy
import sys
import threading
from pathlib import Path
from typing import Any

PR_SET_NAME = 15
COMM_LEN = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def os_thread_name(name: str) -> str:
    """The short kind name for a Python thread name (aiosqlite's workers become ``sqlite``)."""
    if "_connection_worker" in name:
        return "sqlite"
    return name[:COMM_LEN]


def set_os_name(name: str) -> None:
    _libc.prctl(PR_SET_NAME, os_thread_name(name).encode(), 0, 0, 0)


_bootstrap_inner: Any = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named_bootstrap(self: threading.Thread) -> None:
    set_os_name(self.name)
    _bootstrap_inner(self)


def main() -> None:
    program = Path(sys.argv[1]).resolve()
    sys.argv = [str(program), *sys.argv[2:]]
    sys.path[0] = str(program.parent)  # as if run.py had been started itself, not bench/
    threading.Thread._bootstrap_inner = _named_bootstrap  # type: ignore[attr-defined]
    set_os_name("loop")
    runpy.run_path(str(program), run_name="__main__")


if __name__ == "__main__":
    main()
