"""Public probe sets: data every member may score its local model on (named, and hashed in the plan)."""

from __future__ import annotations

import hashlib

import numpy as np

from .base import Dataset
from .participants import load_test
from .registry import get_task


def probe_set(task_name: str, name: str, seed: int = 0) -> Dataset:
    """The probe `name` of a task: a task's own `probe(name, seed)` if it has one, else "test"
    (its held-out test split, public in a simulation)."""
    task = get_task(task_name)
    own = getattr(task, "probe", None)
    if callable(own):
        return own(name, seed)
    if name == "test":
        return load_test(task_name, seed=seed)
    raise ValueError(f"task {task_name!r} has no probe set {name!r} (it offers 'test')")


def dataset_hash(data: Dataset) -> str:
    h = hashlib.sha256()
    for arr in (data.x, data.y):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
