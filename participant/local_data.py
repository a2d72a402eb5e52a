"""Where a participant's data comes from: its partition (simulation) or its own files (deployment)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

import tasks
from fedloom.plan import TaskSpec
from tasks.participants import resolve_groups
from tasks.partition import by_groups, iid


@dataclass(frozen=True)
class LocalData:
    train: tasks.Dataset
    test: tasks.Dataset


@lru_cache(maxsize=256)  # one process serves many simulated participants; their partitions add up to one dataset
def simulated(spec: TaskSpec, partition_id: int, num_partitions: int) -> LocalData:
    """This participant's training partition and its slice of the held-out test split (with
    `groups`, the held-out data of its own groups: a member evaluates on what it knows)."""
    groups = spec.group_labels() if spec.partition == "groups" else None
    train = tasks.load_partition(
        spec.ref,
        partition_id,
        num_partitions,
        scheme=spec.partition,
        alpha=spec.alpha,
        shards=spec.shards,
        seed=spec.seed,
        groups=groups,
    )
    test = tasks.load_test(spec.ref, seed=spec.seed)
    if groups is not None:
        resolved = resolve_groups(spec.ref, groups)
        return LocalData(train, test.subset(by_groups(test.y, resolved)[partition_id]))
    slices = iid(len(test), num_partitions, seed=spec.seed + 1) if len(test) >= num_partitions else None
    local_test = test.subset(slices[partition_id]) if slices else test
    return LocalData(train, local_test)


@lru_cache(maxsize=4)
def from_path(task_name: str, path: str) -> LocalData:
    """Deployment: `path` is a directory with train.npz (and test.npz), or one .npz file
    (then test.npz beside it is used if present, else 10 % of the file is held out)."""
    task = tasks.get_task(task_name)
    p = Path(path)
    if p.is_dir():
        train_file, test_file = p / "train.npz", p / "test.npz"
    else:
        train_file, test_file = p, p.with_name("test.npz")
    train = task.load_local(train_file)
    if test_file.exists() and test_file != train_file:
        return LocalData(train, task.load_local(test_file))
    cut = max(1, len(train) // 10)
    order = np.random.default_rng(0).permutation(len(train))  # a data split, not a secret
    return LocalData(train.subset(np.sort(order[cut:])), train.subset(np.sort(order[:cut])))
