"""The held-out test split, carved once and the same way for every task.

Stratification keeps the test label mix equal to the pool's, so global test accuracy is comparable
across seeds; the split happens before any partitioning, so no participant trains on test data.
"""

from __future__ import annotations

import numpy as np

from tasks.base import Dataset


def holdout_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified (train pool, test) split, deterministic in ``seed``."""
    from sklearn.model_selection import train_test_split  # heavy import; only when loading data

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    return Dataset(x[train_idx], y[train_idx]), Dataset(x[test_idx], y[test_idx])
