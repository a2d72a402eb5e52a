"""Each participant's slice of a task's training pool, in simulation and on disk.

In simulation a participant process is asked for its data every round, so the loaded splits and
the partition index lists are cached in-process per (task, seed). For deployment tests the same
slices are written out as ``participant-<i>.npz`` files that nodes read with ``Task.load_local``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.base import Dataset, Task
from tasks.npz import save_npz
from tasks.partition import iid, partition
from tasks.registry import get_task, is_registered

TEST_FILE = "test.npz"

Groups = Sequence[Sequence[int | str]]
"""Label groups for scheme "groups": one sequence per participant of integer labels or label names."""


def participant_file(out_dir: str | Path, partition_id: int) -> Path:
    """Where :func:`export_partitions` puts participant ``partition_id``'s data."""
    return Path(out_dir) / f"participant-{partition_id}.npz"


def _read_only(data: Dataset) -> Dataset:
    # Cached arrays are shared by every caller in the process; make accidental writes fail loudly.
    data.x.setflags(write=False)
    data.y.setflags(write=False)
    return data


@lru_cache(maxsize=4)
def _cached_splits(spec: str, seed: int) -> tuple[Dataset, Dataset]:
    train, test = get_task(spec).load(seed)
    return _read_only(train), _read_only(test)


@lru_cache(maxsize=16)
def _cached_parts(
    spec: str,
    seed: int,
    num_partitions: int,
    scheme: str,
    alpha: float,
    shards: int,
    groups: tuple[tuple[int, ...], ...] | None = None,
) -> tuple[np.ndarray, ...]:
    labels = _cached_splits(spec, seed)[0].y
    parts = partition(
        labels, num_partitions, scheme, alpha=alpha, shards_per_partition=shards, seed=seed, groups=groups
    )
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def resolve_groups(task: Task | str, groups: Groups | None) -> tuple[tuple[int, ...], ...] | None:
    """``groups`` as a hashable tuple of tuples of integer labels; names go through ``task.label_index``.

    E.g. for "charlm", ``[["arb", "tzm", "zgh"], ["kri", "tem", "men"]]`` becomes
    ``((0, 1, 2), (3, 4, 5))``. Integers pass through unchanged; None stays None.
    """
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)):
        raise ValueError(f"groups must be a sequence of label sequences, got the string {groups!r}")
    resolved = []
    instance: Task | None = None
    for i, group in enumerate(groups):
        if isinstance(group, (str, bytes)):
            raise ValueError(f"group {i} must be a sequence of labels, got the string {group!r}")
        labels = []
        for label in group:
            if isinstance(label, str):
                instance = instance or get_task(task)
                labels.append(int(instance.label_index(label)))
            elif isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
                labels.append(int(label))
            else:
                raise ValueError(f"group {i}: a label must be an integer or a name, got {label!r}")
        resolved.append(tuple(labels))
    return tuple(resolved)


def _cache_key(task: Task | str) -> str | None:
    """The string identifying the task's data, or None when it cannot be cached safely."""
    if isinstance(task, str):
        return task.strip()
    return task.ref if is_registered(task) else None


def load_splits(task: Task | str, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(training pool, test split) of ``task``; cached for registered names and string specs.

    The returned arrays are read-only because they are shared; ``Dataset.subset`` makes copies.
    """
    key = _cache_key(task)
    if key is None:
        return get_task(task).load(seed)
    return _cached_splits(key, seed)


def load_pool(task: Task | str, seed: int = 0) -> Dataset:
    """The training pool that partitions are cut from."""
    return load_splits(task, seed)[0]


def load_test(task: Task | str, seed: int = 0) -> Dataset:
    """The held-out test split, for the coordinator's global evaluation."""
    return load_splits(task, seed)[1]


def partition_indices(
    task: Task | str,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.3,
    shards: int = 2,
    seed: int = 0,
    groups: Groups | None = None,
) -> list[np.ndarray]:
    """Index arrays into the training pool, one per participant (``seed`` drives both).

    Scheme ``"groups"`` gives participant ``i`` every example whose label is in ``groups[i]``;
    labels may be integers or names the task knows (see :func:`resolve_groups`).
    """
    resolved = resolve_groups(task, groups)
    key = _cache_key(task)
    if key is None:
        labels = load_pool(task, seed).y
        return partition(
            labels, num_partitions, scheme, alpha=alpha, shards_per_partition=shards, seed=seed, groups=resolved
        )
    if scheme != "groups":
        resolved = None  # ignored by the other schemes; keep one cache entry per split
    return list(_cached_parts(key, seed, num_partitions, scheme, float(alpha), shards, resolved))


def load_partition(
    task: Task | str,
    partition_id: int,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.3,
    shards: int = 2,
    seed: int = 0,
    groups: Groups | None = None,
) -> Dataset:
    """Participant ``partition_id``'s (0-based) share of the training pool, as a fresh copy."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    parts = partition_indices(task, num_partitions, scheme, alpha, shards, seed, groups)
    return load_pool(task, seed).subset(parts[partition_id])


def export_partitions(
    task: Task | str,
    out_dir: str | Path,
    num_partitions: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.3,
    shards: int = 2,
    seed: int = 0,
    groups: Groups | None = None,
) -> list[Path]:
    """Write ``participant-<i>.npz`` for every participant plus ``test.npz`` into ``out_dir``.

    Returns the participant files in id order; the test split is at ``out_dir / TEST_FILE``.
    """
    pool, test = load_splits(task, seed)
    parts = partition_indices(task, num_partitions, scheme, alpha, shards, seed, groups)
    paths = [save_npz(participant_file(out_dir, i), pool.subset(p)) for i, p in enumerate(parts)]
    save_npz(Path(out_dir) / TEST_FILE, test)
    return paths


def export_member_data(
    task: Task | str,
    out_dir: str | Path,
    members: Sequence[str],
    scheme: str = "iid",
    *,
    alpha: float = 0.3,
    shards: int = 2,
    seed: int = 0,
    groups: Groups | None = None,
) -> list[Path]:
    """Write ``<out_dir>/<member>/train.npz`` and ``test.npz`` per member: the layout
    `fedloom participant start --data <out_dir>/<member>` and the compose volumes take (a rehearsal
    with a public dataset; real members write their own files the same way, arrays ``x`` and ``y``).

    Each member's test.npz is its own slice of the held-out split. Returns the member directories."""
    pool, test = load_splits(task, seed)
    parts = partition_indices(task, len(members), scheme, alpha, shards, seed, groups)
    slices = iid(len(test), len(members), seed=seed + 1) if len(test) >= len(members) else None
    dirs = []
    for i, name in enumerate(members):
        where = Path(out_dir) / name
        save_npz(where / "train.npz", pool.subset(parts[i]))
        save_npz(where / TEST_FILE, test.subset(slices[i]) if slices else test)
        dirs.append(where)
    return dirs
