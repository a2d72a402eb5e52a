"""One atomic write (fedloom.files): every replaced file is fsynced before the rename, checkpoints too."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from coordinator import checkpoint
from fedloom.files import atomic_write, atomic_write_bytes


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """Names of the files fsynced (by their open descriptor), in order."""
    names: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        names.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return names


def test_a_checkpoint_and_its_pointer_are_fsynced_before_they_replace_anything(tmp_path, synced):
    path = checkpoint.save(tmp_path, "p" * 64, 1, 0, np.ones(4, np.float32), {}, 1)
    # the temp files (".<name>.<random>") were synced, i.e. before the rename made them visible
    assert [n.split(".")[1] for n in synced] == [path.stem, Path(checkpoint.POINTER).stem]
    assert all(n.startswith(".") for n in synced)


def test_a_failed_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_the_mode_is_applied(tmp_path):
    atomic_write_bytes(tmp_path / "secret", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
