"""Files written whole or not at all: a crash never leaves a half-written checkpoint, state or reply."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask_mode() -> int:
    """The mode a plain new file gets under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[str], None], mode: int | None = None) -> None:
    """The one way fedloom replaces a file: `write(tmp)` fills a temp file beside `path`, which is
    fsynced, given `mode` (default: the umask's) and renamed over `path`, so a crash leaves the old
    file or the new one, never a half-written one. For writers that want a file name (safetensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, umask_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """`data` as the whole new content of `path` (see atomic_write)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), mode)
