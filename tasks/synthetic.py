"""Synthetic tasks with an exact parameter count, for benchmarks of the machinery (not learning).

`synthetic-1e5` and `synthetic-1e6`: a single linear layer whose weight count is exactly d
(d = in_features x classes), random Gaussian data generated from a fixed seed (nothing is
downloaded), a tiny local training step. What they measure is everything around training: masking,
the protocol's round trips, Flower's transport, for a model of d parameters.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Dataset
from .classification import ClassificationTask
from .registry import register_task

CLASSES = 10
SAMPLES = 400  # training pool; partitions of it are small on purpose


class _Synthetic(ClassificationTask):
    features: int
    num_classes = CLASSES

    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        rng = np.random.default_rng(seed)  # synthetic data, not a secret
        centers = rng.normal(0, 1, (CLASSES, self.features)).astype(np.float32)
        y = rng.integers(0, CLASSES, SAMPLES + 100)
        x = centers[y] + rng.normal(0, 1, (y.size, self.features)).astype(np.float32)
        return Dataset(x[:SAMPLES], y[:SAMPLES]), Dataset(x[SAMPLES:], y[SAMPLES:])

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(self.features, CLASSES, bias=False)


@register_task
class Synthetic1e5(_Synthetic):
    name = "synthetic-1e5"
    features = 10_000  # 10,000 x 10 = 100,000 parameters
    input_shape = (features,)


@register_task
class Synthetic1e6(_Synthetic):
    name = "synthetic-1e6"
    features = 100_000  # 1,000,000 parameters
    input_shape = (features,)
