"""Shared local training and evaluation for classification tasks.

Concrete tasks only supply data and an architecture. Batching is plain tensor indexing with a
seeded permutation: on small datasets a DataLoader with workers costs more than the training and
would make the batch order depend on worker scheduling.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from tasks.base import Dataset, EvalResult, Task, TrainConfig, TrainResult
from tasks.npz import load_npz


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # torch warns on read-only arrays (cached pools are read-only); copy those instead of aliasing.
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device)


class ClassificationTask(Task):
    """A :class:`Task` trained with cross-entropy and SGD with momentum.

    Subclasses set ``name``, ``input_shape`` (one example, e.g. ``(1, 28, 28)``) and
    ``num_classes``, and implement ``load`` and ``build_model``.
    """

    input_shape: ClassVar[tuple[int, ...]]
    num_classes: ClassVar[int]

    def load_local(self, path: str | Path) -> Dataset:
        return load_npz(path, self.input_shape, self.num_classes)

    def train(self, model: torch.nn.Module, data: Dataset, cfg: TrainConfig, device: torch.device) -> TrainResult:
        n = len(data)
        if n == 0:
            raise ValueError("cannot train on an empty dataset")
        model.to(device)
        model.train()
        x, y = _to_tensor(data.x, device), _to_tensor(data.y, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)  # CPU generator: same order anywhere
        steps = 0
        epoch_loss = 0.0
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            total = torch.zeros((), device=device)
            for start in range(0, n, cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * batch.numel()  # stays on device: no sync per step
                steps += 1
            epoch_loss = total.item() / n
        return TrainResult(loss=epoch_loss, num_examples=n, steps=steps)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, data: Dataset, device: torch.device, batch_size: int = 512
    ) -> EvalResult:
        n = len(data)
        if n == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model.to(device)
        model.eval()
        x, y = _to_tensor(data.x, device), _to_tensor(data.y, device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(dim=1) == target).sum()
        return EvalResult(loss=loss_sum.item() / n, accuracy=correct.item() / n, num_examples=n)
