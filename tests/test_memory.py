"""vault/memory.py: the allocator thresholds the server sets for itself (page faults, not time)."""

import subprocess
import sys

import pytest

from tests.server import ROOT
from vault import format as sfs
from vault.memory import MAX_MMAP_THRESHOLD, thresholds, tune_malloc, uninitialized

# Allocate and free a segment-sized buffer the way the pipeline does, 50 times; print the page
# faults it took. Each fresh mmap'd MiB costs 256 faults; a reused heap buffer costs none.
_FAULTS = """
import os, resource, sys
from vault.memory import tune_malloc
print(tune_malloc(2**20, {} if sys.argv[1] == "tuned" else {"MALLOC_MMAP_THRESHOLD_": "x"}))
iv, ct = os.urandom(16), os.urandom(2**20 + 32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    blob = iv + ct[:-16]
    del blob
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_process_reuses_segment_buffers_instead_of_faulting_them_in() -> None:
    tuned, untuned = page_faults("tuned"), page_faults("untuned")
    assert tuned[0] == "True" and untuned[0] == "False"
    assert untuned[1] > 50 * 100  # glibc's default: fresh pages for (nearly) every buffer
    assert tuned[1] < untuned[1] / 10


def test_environment_variables_of_glibc_win() -> None:
    assert tune_malloc(2**20, {"MALLOC_TRIM_THRESHOLD_": "0"}) is False
    assert tune_malloc(2**20, {"MALLOC_MMAP_THRESHOLD_": "131072"}) is False


@pytest.mark.parametrize("seg_size", [sfs.MIN_SEG_SIZE, sfs.DEFAULT_SEG_SIZE, 8 * 2**20, sfs.MAX_SEG_SIZE])
def test_thresholds_cover_a_sealed_segment_within_glibc_limits(seg_size: int) -> None:
    mmap_threshold, trim_threshold = thresholds(seg_size)
    assert mmap_threshold <= MAX_MMAP_THRESHOLD
    sealed = sfs.IV_LEN + seg_size + sfs.BLOCK_LEN + sfs.TAG_LEN
    assert mmap_threshold > sealed or mmap_threshold == MAX_MMAP_THRESHOLD
    assert trim_threshold >= 2 * seg_size  # a freed segment buffer on top of the heap stays


@pytest.mark.parametrize("size", [0, 1, 4096, 256 * 1024, sfs.IV_LEN + sfs.DEFAULT_SEG_SIZE + sfs.TAG_LEN])
def test_an_uninitialized_buffer_is_a_bytearray_of_its_size_to_write_cut_and_grow(size: int) -> None:
    """What the TLS reads and the seal allocate without zeroing: a plain bytearray, which takes
    writes, cuts (a read shorter than its buffer) and growth like any other."""
    buf = uninitialized(size)
    assert type(buf) is bytearray and len(buf) == size
    buf[:] = b"\x5a" * size
    assert buf == b"\x5a" * size
    del buf[size // 2 :]
    buf += b"end"
    assert buf == b"\x5a" * (size // 2) + b"end"
