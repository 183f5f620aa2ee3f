"""The C allocator settings the server sets for itself (glibc's ``mallopt``).

Every segment passes through several fresh segment-sized buffers (the blob read from SQLite,
the plaintext, the sealed blob). glibc serves a request of 128 KiB or more from a new ``mmap``
and gives freed memory at the top of the heap back to the system, so each such buffer starts
as untouched pages: one page fault per 4 KiB, which costs far more than filling the buffer
(measured: ``iv + ct[:-16]`` on 1 MiB ran about 20 times faster with the thresholds below).
Raising the mmap threshold above the largest buffer and the trim threshold to two segments
lets freed buffers be reused as they are; what is kept is bounded by the trim threshold per
allocator arena (bench/transfer.py reports peak and idle RSS, README "Performance").

Buffers that are filled before anything reads them (a socket read's, a sealed segment's) are
taken with :func:`uninitialized`: ``bytearray(n)`` writes n zeros first, which for the 256 KiB
read of every TLS batch and the 1 MiB of every sealed segment cost more than a reused heap
buffer's allocation (README "Performance", round 6).
"""

import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
MIN_MMAP_THRESHOLD = 4 * 1024 * 1024
# Two segments' worth at the top of a heap are kept for reuse, more is given back: measured
# (64 MiB, 8 concurrent uploads) 2 MiB kept peak RSS at 94 MiB and idle RSS flat over runs
# (72-73 MiB) where 8 MiB gave 102 MiB and 83-85 MiB, at the same CPU per GB.
MIN_TRIM_THRESHOLD = 4 * 1024 * 1024
ENV_OVERRIDES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def thresholds(seg_size: int) -> tuple[int, int]:
    """(mmap threshold, trim threshold) for segments of ``seg_size`` bytes."""
    mmap_threshold = min(max(MIN_MMAP_THRESHOLD, 2 * seg_size), MAX_MMAP_THRESHOLD)
    return mmap_threshold, max(MIN_TRIM_THRESHOLD, 4 * seg_size)


def tune_malloc(seg_size: int, environ: Mapping[str, str]) -> bool:
    """Set both thresholds for this process; True if set. Leaves glibc's own environment
    variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) to win where given,
    and does nothing on a C library without ``mallopt``."""
    if any(name in environ for name in ENV_OVERRIDES):
        log.info("malloc thresholds left to the environment")
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    mmap_threshold, trim_threshold = thresholds(seg_size)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def _bytearray_from_string_and_size() -> Callable[[None, int], bytearray] | None:
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:  # an interpreter without CPython's C API
        return None
    make.restype = ctypes.py_object
    make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    return make  # type: ignore[no-any-return]


_NEW_BYTEARRAY = _bytearray_from_string_and_size()


def uninitialized(size: int) -> bytearray:
    """A ``bytearray`` of ``size`` bytes whose contents are whatever the allocator had there
    (CPython's ``PyByteArray_FromStringAndSize(NULL, size)``), not zeros.

    Only for a buffer whose every byte is written before any is read, or that is cut to what
    was written (``del buf[got:]``) before anyone sees it: the old bytes may be another
    request's. Called with the GIL held (``ctypes.pythonapi``), like ``bytearray``."""
    if _NEW_BYTEARRAY is None:
        return bytearray(size)
    return _NEW_BYTEARRAY(None, size)
