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
from tasks.registry import register_task
from tasks.splits import holdout_split


@register_task
class DigitsTask(ClassificationTask):
    """8x8 grey-scale digits scaled to [0, 1], 10 classes, 20 % stratified test split."""

    name = "digits"
    input_shape = (1, 8, 8)
    num_classes = 10
    input_range = (0.0, 1.0)
    test_fraction = 0.2

    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        from sklearn.datasets import load_digits  # heavy import; only when data is needed

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        y = bunch.target.astype(np.int64)
        return holdout_split(x, y, self.test_fraction, seed)

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
