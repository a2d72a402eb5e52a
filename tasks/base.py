"""The task contract shared by coordinator and participants.

A *task* bundles what both sides must agree on: the data (a training pool and a held-out test
split), the model architecture, and how to train and evaluate it locally. Everything crossing the
wire is a flat parameter vector (see :mod:`tasks.params`), so the types here stay plain numpy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Features and integer labels, kept as numpy so they are cheap to slice, save and ship.

    ``x`` is coerced to float32 and ``y`` to int64 on construction, so every consumer can rely on
    those dtypes without re-checking.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        if y.ndim != 1:
            raise ValueError(f"labels y must be 1-D, got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
        if x.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y disagree on the number of examples: x {x.shape}, y {y.shape}"
            )
        # Frozen dataclass: the coerced arrays replace the originals exactly once, here.
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> Dataset:
        """The examples at ``idx`` (a copy, so the subset never aliases a cached pool)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters; ``seed`` fixes the batch order so runs reproduce."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class TrainResult:
    """What a participant reports after local training (loss is the mean over the last epoch)."""

    loss: float
    num_examples: int
    steps: int


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy on a dataset; ``num_examples`` lets the coordinator weight averages."""

    loss: float
    accuracy: float
    num_examples: int


class Task(ABC):
    """One federated learning problem: data, model, local training and evaluation.

    Subclasses set ``name`` and are registered with :func:`tasks.register_task` so both sides can
    look them up by name.
    """

    name: ClassVar[str]

    @abstractmethod
    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Return (training pool, held-out test split), deterministic in ``seed``.

        Participants only ever receive subsets of the training pool; the test split is for the
        coordinator's (or an auditor's) global evaluation.
        """

    @abstractmethod
    def load_local(self, path: str | Path) -> Dataset:
        """Load a participant's own data (an ``.npz`` with arrays ``x`` and ``y``) for deployment.

        Raises ValueError with a readable message when the file does not fit the task.
        """

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh model; its initial weights depend only on the torch RNG state."""

    @abstractmethod
    def train(
        self, model: torch.nn.Module, data: Dataset, cfg: TrainConfig, device: torch.device
    ) -> TrainResult:
        """Train ``model`` in place on ``data``."""

    @abstractmethod
    def evaluate(
        self, model: torch.nn.Module, data: Dataset, device: torch.device, batch_size: int = 512
    ) -> EvalResult:
        """Loss and accuracy of ``model`` on ``data``, without changing the model's weights."""
