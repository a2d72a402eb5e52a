"""Reading and writing a participant's data as ``.npz`` (arrays ``x`` and ``y``).

In a deployment each node brings its own file, so reading is strict: a wrong shape, dtype or label
range must fail at start-up with a message the data owner can act on, not deep inside training.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tasks.base import Dataset


def save_npz(path: str | Path, data: Dataset) -> Path:
    """Write ``data`` to ``path`` (compressed) and return the path; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # an open file keeps numpy from appending a second ".npz"
        np.savez_compressed(fh, x=data.x, y=data.y)
    return path


def load_npz(path: str | Path, input_shape: tuple[int, ...], num_classes: int) -> Dataset:
    """Read and validate an ``.npz`` holding ``x`` (N, *input_shape) floats and ``y`` (N,) ints.

    Every problem is reported as ValueError naming the file, so callers need only one except.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected an .npz with arrays x and y)")
    x, y = _read_xy(path)
    _check_arrays(path, x, y, input_shape, num_classes)
    return Dataset(x, y)


def _read_xy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    unreadable = (OSError, EOFError, ValueError, zipfile.BadZipFile)
    with path.open("rb") as fh:
        magic = fh.read(6)
    if not magic.startswith((b"PK", b"\x93NUMPY")):
        raise ValueError(f"{path}: not a readable .npz file (expected a numpy.savez zip archive)")
    try:
        archive = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single .npy array, expected an .npz with x and y")
    with archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(archive.files)}")
        try:
            return archive["x"], archive["y"]
        except unreadable as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc


def _check_arrays(path: Path, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...], num_classes: int) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{path}: x must be floating point (scaled like the task's data, e.g. to [0, 1]), got dtype {x.dtype}"
        )
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{path}: x must have shape (N, {', '.join(map(str, input_shape))}), got {x.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{path}: x has {x.shape[0]} examples but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{path}: contains no examples")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: x contains NaN or infinite values")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{path}: labels must lie in [0, {num_classes - 1}], got range [{y.min()}, {y.max()}]")
