"""Task "digits": scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

Small enough that a whole federated simulation runs in seconds on a laptop CPU, which makes it
the default for tests and demos.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tasks.base import Dataset
from tasks.classification import ClassificationTask
from tasks.package_data import package_file
from tasks.registry import register_task
from tasks.splits import holdout_split

DATA_FILE = ("datasets", "data", "digits.csv.gz")  # inside scikit-learn


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """`sklearn.datasets.load_digits()`'s images (N, 8, 8) float64 0..16 and targets (int64), read from
    the same CSV it reads, without importing scikit-learn (~2.6 s of scipy and pandas per process)."""
    path = package_file("sklearn", DATA_FILE, "digits", "scikit-learn")
    table = np.loadtxt(path, delimiter=",")  # .gz is decompressed transparently
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"{path}: expected rows of 64 pixels and a label, got shape {table.shape}")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@register_task
class DigitsTask(ClassificationTask):
    """8x8 grey-scale digits scaled to [0, 1], 10 classes, 20 % stratified test split."""

    name = "digits"
    input_shape = (1, 8, 8)
    num_classes = 10
    input_range = (0.0, 1.0)
    test_fraction = 0.2

    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        images, target = read_digits()
        x = (images / 16.0).astype(np.float32)[:, None, :, :]
        return holdout_split(x, target, self.test_fraction, seed)

    def build_model(self) -> torch.nn.Module:
        # No BatchNorm: its running statistics do not average meaningfully across participants.
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, self.num_classes),
        )
