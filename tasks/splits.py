"""The held-out test split, carved once and the same way for every task.

Stratification keeps the test label mix equal to the pool's, so global test accuracy is comparable
across seeds; the split happens before any partitioning, so no participant trains on test data.

The split is scikit-learn's `train_test_split(..., stratify=y, random_state=seed)`, index for index
(tests/test_tasks.py compares the two), computed here with numpy alone: importing
`sklearn.model_selection` costs ~2.6 s (scipy, pandas) in every process that loads data, and a
simulation or deployment starts many (Ray actors, members' warm processes, the ServerApp).
"""

from __future__ import annotations

import math

import numpy as np

from tasks.base import Dataset


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's `utils.extmath._approximate_mode`: per-class draws summing to `n_draws`,
    remainders handed out largest first, ties broken by `rng`."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_indices(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices exactly as scikit-learn's StratifiedShuffleSplit draws its first split."""
    n_test = math.ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or min(n_train, n_test) < len(classes):
        raise ValueError(f"cannot stratify {len(y)} labels, {len(classes)} classes, test fraction {test_fraction}")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        shuffled = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        test.extend(shuffled[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def holdout_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified (train pool, test) split, deterministic in ``seed``."""
    train_idx, test_idx = stratified_indices(y, test_fraction, seed)
    return Dataset(x[train_idx], y[train_idx]), Dataset(x[test_idx], y[test_idx])
