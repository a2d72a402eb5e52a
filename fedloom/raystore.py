"""Ray's shared object store leaves a process's resident set once the process is done with its pages.

In a simulation every Message crosses Ray's object store, a shared file mapping (/dev/shm/plasma...)
in each Ray process. The pages a process writes (a message it sends) or reads (a message it
receives, zero-copy since `fedloom.array_pickling`) stay in its page tables after the object is
freed: the coordinator's process counted every model it sent and every reply it read as its own
resident memory, round after round, though the store reuses that memory for the next objects.

`madvise(MADV_DONTNEED)` on a shared file mapping only drops this process's page-table entries: the
contents stay in the store, and a later read of a live object faults its pages back in from the
same file (man 2 madvise; a written page's dirty state moves to the page cache). So it is safe to call
at any time, also while views of live objects are held; it is called where the process has just
finished with a message. Private mappings are never touched (there MADV_DONTNEED would zero them).
The memory is not freed by this: it is the store's, counted once in the machine's Shmem
(`fedloom bench memory` reports it beside the RSS).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from pathlib import Path

MADV_DONTNEED = 4  # <sys/mman.h> on Linux
STORE_PREFIX = "plasma"  # Ray's store file: /dev/shm/plasmaXXXXXX, or /tmp/... where /dev/shm is small (Docker)


def store_mappings(maps_text: str) -> list[tuple[int, int]]:
    """(start, end) of each shared mapping of Ray's object store in a /proc/<pid>/maps text: a shared
    ("s") mapping of a file whose name starts with "plasma" (unlinked once mapped: "(deleted)")."""
    found = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[1].endswith("s") and Path(fields[5]).name.startswith(STORE_PREFIX):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end))
    return found


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


def release_store_pages() -> int:
    """Drop this process's resident pages of Ray's object store; the bytes of mapping advised.

    0 outside a Ray process (no store mapped) or off Linux. Reading /proc/self/maps and the advice
    take about a millisecond; a process that never imported Ray (a deployment) skips both."""
    madvise = _madvise()
    if madvise is None or "ray" not in sys.modules:  # only Ray's client maps the store
        return 0
    try:
        spans = store_mappings(Path("/proc/self/maps").read_text())
    except OSError:
        return 0
    released = 0
    for start, end in spans:
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            released += end - start
    return released
