"""The task contract shared by coordinator and participants.

A *task* bundles what both sides must agree on: the data (a training pool and a held-out test
split), the model architecture, and how to train and evaluate it locally. Everything crossing the
wire is a flat parameter vector (see :mod:`tasks.params`), so the types here stay plain numpy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Features and integer labels, kept as numpy so they are cheap to slice, save and ship.

    ``x`` is coerced to float32 and ``y`` to int64 on construction, so every consumer can rely on
    those dtypes without re-checking (:class:`TokenDataset` keeps integer ``x`` instead).
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = self._coerce_x(self.x)
        y = np.asarray(self.y)
        if y.ndim != 1:
            raise ValueError(f"labels y must be 1-D, got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
        if x.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y disagree on the number of examples: x {x.shape}, y {y.shape}")
        # Frozen dataclass: the coerced arrays replace the originals exactly once, here.
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))

    @staticmethod
    def _coerce_x(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> Dataset:
        """The examples at ``idx`` (a copy, so the subset never aliases a cached pool).

        The subset has the same type as ``self``, so a :class:`TokenDataset` stays one.
        """
        idx = np.asarray(idx, dtype=np.int64)
        return type(self)(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class TokenDataset(Dataset):
    """A :class:`Dataset` whose ``x`` holds integer token ids (e.g. byte windows) instead of features.

    ``x`` keeps its integer dtype (it is never coerced to float32); ``y`` is still an int64 label per
    example, which partitioners use as the group (e.g. the language of a text window).
    """

    @staticmethod
    def _coerce_x(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if not x.size:
            return x.astype(np.int64)
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"token ids x must be integers, got dtype {x.dtype}")
        return x


OPTIMIZERS = ("sgd", "adamw")
ADAMW_BETAS = (0.9, 0.95)


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters; ``seed`` fixes the batch order so runs reproduce.

    ``steps == 0`` trains for ``epochs`` passes over the data; ``steps > 0`` ignores ``epochs`` and
    takes exactly that many minibatch steps (see :func:`minibatches`). ``optimizer`` is ``"sgd"``
    (with ``momentum``) or ``"adamw"`` (betas :data:`ADAMW_BETAS`, decoupled ``weight_decay``;
    ``momentum`` unused). Tasks that predate these fields honour only the defaults.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    steps: int = 0
    optimizer: str = "sgd"
    gradient_checkpointing: bool = False  # recompute activations in backward (tasks that support it, on CUDA)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0 = use epochs), got {self.steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
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


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over ``params`` (tensors or param-group dicts)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=ADAMW_BETAS, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def minibatches(n: int, cfg: TrainConfig) -> Iterator[torch.Tensor]:
    """Index batches (CPU int64 tensors) for one local training run, deterministic in ``cfg.seed``.

    Epoch mode (``cfg.steps == 0``): ``cfg.epochs`` shuffled passes, the last batch of a pass may be
    short. Step mode: exactly ``cfg.steps`` batches of ``min(batch_size, n)`` indices cut from a
    stream of back-to-back shuffled passes, so every example is seen equally often (within one).
    """
    if n < 1:
        raise ValueError("cannot draw minibatches from an empty dataset")
    generator = torch.Generator().manual_seed(cfg.seed)  # CPU generator: same order anywhere
    if cfg.steps == 0:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator)
            yield from order.split(cfg.batch_size)
        return
    size = min(cfg.batch_size, n)
    buffer = torch.empty(0, dtype=torch.int64)
    for _ in range(cfg.steps):
        while buffer.numel() < size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:size]
        buffer = buffer[size:]


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


def scored_eval_result(stats: dict[str, np.ndarray], unit: str) -> EvalResult:
    """Mean nats per scored `unit` (byte, token) and next-unit accuracy from per-window sums
    (`nats`, `correct`, and `unit + "s"`: how many targets each window scored)."""
    scored = int(stats[f"{unit}s"].sum())
    if scored == 0:
        raise ValueError(f"the data has no scored {unit}s (all targets are padding)")
    return EvalResult(
        loss=float(stats["nats"].sum() / scored),
        accuracy=float(stats["correct"].sum() / scored),
        num_examples=scored,
    )


class Task(ABC):
    """One federated learning problem: data, model, local training and evaluation.

    Subclasses set ``name`` and are registered with :func:`tasks.register_task` so both sides can
    look them up by name.
    """

    name: ClassVar[str]
    # the range the model's inputs are scaled to (None: not stated); data far outside it gets a warning
    input_range: ClassVar[tuple[float, float] | None] = None

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> Task:
        """An instance configured by a spec's options (``name?key=value``); tasks without options refuse any."""
        if options:
            raise ValueError(f"task {cls.name!r} takes no options (got {', '.join(sorted(options))})")
        return cls()

    @property
    def ref(self) -> str:
        """The spec naming this task with its options (a cache key for its data): the name, unless options are set."""
        return self.name

    def label_index(self, label: str) -> int:
        """The integer label that ``label`` names (e.g. a language code), for label-group partitions.

        Tasks without named labels raise ValueError; give their groups as integers instead.
        """
        raise ValueError(f"task {self.name!r} has no named labels (got {label!r}); give label groups as integers")

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

    def initial_model(self) -> torch.nn.Module:
        """The model a federation starts from, built by the coordinator: what travels (its vector) must
        equal `build_model()`'s for the same torch RNG state, and leave the RNG where `build_model`
        leaves it; a task may skip what does not travel (a frozen base's weights)."""
        return self.build_model()

    @abstractmethod
    def train(self, model: torch.nn.Module, data: Dataset, cfg: TrainConfig, device: torch.device) -> TrainResult:
        """Train ``model`` in place on ``data``."""

    @abstractmethod
    def evaluate(
        self, model: torch.nn.Module, data: Dataset, device: torch.device, batch_size: int = 512
    ) -> EvalResult:
        """Loss and accuracy of ``model`` on ``data``, without changing the model's weights."""


def range_warning(task: Task, data: Dataset, where: str) -> str | None:
    """A warning when `data`'s inputs lie far outside the range the task expects (e.g. pixels in
    0..255 where 0..1 is expected): such data trains badly and drags the shared model, and nothing
    else would tell the member. "Far" is more than twice the expected span beyond either end."""
    if task.input_range is None or len(data) == 0 or not np.issubdtype(data.x.dtype, np.floating):
        return None
    lo, hi = task.input_range
    span = hi - lo
    seen_lo, seen_hi = float(np.min(data.x)), float(np.max(data.x))
    if seen_lo >= lo - 2 * span and seen_hi <= hi + 2 * span:
        return None
    return (
        f"{where}: inputs range from {seen_lo:g} to {seen_hi:g}, but task {task.name!r} expects {lo:g} to {hi:g} "
        f"(e.g. pixels divided by 255): scale the data the way the task's own loader does, or training will suffer"
    )
