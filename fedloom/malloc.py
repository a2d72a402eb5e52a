"""Big buffers straight from the OS and back (glibc), so a process's peak is what it holds.

glibc serves an allocation above its mmap threshold with its own mapping and gives it back to the
OS on free, but it raises that threshold (up to 32 MiB) whenever such a buffer is freed. After the
first few frees, the buffers a secure round allocates and drops (Flower's message chunks of a few
MiB, the parts of a masked input) come from the heap, which keeps freed memory and grows with each
message. Fixing the threshold (mallopt M_MMAP_THRESHOLD) turns that adjustment off: measured with
`fedloom bench memory` at d = 10^7 in deployment, the ServerApp's peak above idle went from 6.6 to
4.5 x 4d (docs/benchmarks.md, "Memory").
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1 << 20  # 1 MiB: small objects stay on the heap, vectors and message chunks do not


def return_big_buffers() -> bool:
    """Fix glibc's mmap threshold for this process; False where that is not glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the running process's C library
    except (OSError, AttributeError):  # no mallopt: not glibc (musl), nothing to fix
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_back_free_heap() -> bool:
    """glibc's malloc_trim(0): the heap's free pages go back to the OS, not only those at its top.

    A reply comes through HTTP in small buffers (below the mmap threshold, so from the heap); once
    freed they leave holes that later small objects keep from being trimmed, and the process
    keeps their pages. Microseconds per call here; False where that is not glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
