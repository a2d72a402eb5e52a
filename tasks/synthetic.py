"""Synthetic tasks with an exact parameter count, for benchmarks of the machinery (not learning).

`synthetic-1e5` and `synthetic-1e6`: a single linear layer whose weight count is exactly d
(d = in_features x classes), random Gaussian data generated from a fixed seed (nothing is
downloaded), a tiny local training step. What they measure is everything around training: masking,
the protocol's round trips, Flower's transport, for a model of d parameters.

`synthetic-1e4`, `synthetic-1e7`, `synthetic-1e8`, `synthetic-1.35e8` (134,515,008: SmolLM2-135M's
full fine-tuning size), for `fedloom bench memory`: 16 features whatever d (a 1e8-wide input would
be gigabytes of data), a 160-weight classifier and one flat parameter that brings the count to
exactly d and takes part in training (dense gradient and momentum, like a real model's weights).
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


class _SizedModel(torch.nn.Module):
    """A tiny classifier plus one flat parameter that brings the count to exactly d.

    The padding takes part in the forward pass (its mean shifts every logit), so it gets a dense
    gradient and momentum like a real model's weights, at the cost of one pass over d per step."""

    def __init__(self, features: int, d: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(features, CLASSES, bias=False)
        self.padding = torch.nn.Parameter(torch.zeros(d - features * CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + self.padding.mean()


class _SyntheticSized(_Synthetic):
    """Exactly `d` parameters whatever d is, with 16 input features: the data stays tiny at any size."""

    d: int
    features = 16
    input_shape = (16,)

    def build_model(self) -> torch.nn.Module:
        return _SizedModel(self.features, self.d)


def _sized(name: str, d: int) -> type[_SyntheticSized]:
    """Register a sized synthetic task (one class per size: tasks are addressed by name)."""
    cls = type(f"Synthetic{name.split('-', 1)[1].replace('.', '_')}", (_SyntheticSized,), {"name": name, "d": d})
    cls.__module__ = __name__
    return register_task(cls)


# memory benchmarks (`fedloom bench memory`): 1.35e8 is SmolLM2-135M's full fine-tuning size
SIZED = {10**4: "synthetic-1e4", 10**7: "synthetic-1e7", 10**8: "synthetic-1e8", 134_515_008: "synthetic-1.35e8"}
for _d, _name in SIZED.items():
    _sized(_name, _d)
