"""Local work of one participant per round: evaluate the incoming model, train, return the update."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

import tasks
from fedloom.plan import Plan
from tasks.probe import dataset_hash, probe_set

from .local_data import LocalData


def train_config(plan: Plan, seed: int, *, epochs: int | None = None, steps: int | None = None) -> tasks.TrainConfig:
    """The plan's [training] table as the task's TrainConfig: one mapping for federated rounds and
    for the baselines they are compared with (local-only, centralized); `epochs`/`steps` override
    the plan's per-round budget where a baseline trains for the whole run at once."""
    t = plan.training
    return tasks.TrainConfig(
        epochs=t.epochs if epochs is None else epochs,
        steps=t.steps if steps is None else steps,
        optimizer=t.optimizer,
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        seed=seed,
        gradient_checkpointing=t.gradient_checkpointing,
    )


@dataclass(frozen=True)
class LocalResult:
    update: np.ndarray  # float32: local model - global model
    num_examples: int
    train_loss: float


@lru_cache(maxsize=4)
def _probe(task: str, name: str, seed: int) -> tasks.Dataset:
    return probe_set(task, name, seed)


@lru_cache(maxsize=4)
def _task(name: str) -> tasks.Task:
    return tasks.get_task(name)


def supports_optimizer_state(task: tasks.Task) -> bool:
    """Whether the task's `train` can carry its optimizer's state across calls (charlm can)."""
    return "optimizer_state" in inspect.signature(task.train).parameters


class LocalTrainer:
    """Holds the model on the participant's device between rounds (one per process)."""

    def __init__(self, plan: Plan, data: LocalData, device: torch.device) -> None:
        self.plan = plan
        self.data = data
        self.device = device
        self.task = _task(plan.task.ref)
        torch.manual_seed(plan.seed)
        self.model = self.task.build_model().to(device)

    def load(self, vector: np.ndarray) -> None:
        tasks.vector_to_model(self.model, vector)

    def evaluate(self, vector: np.ndarray) -> tasks.EvalResult:
        self.load(vector)
        return self.task.evaluate(self.model, self.data.test, self.device)

    def probe_loss(self) -> float:
        """The current (local) model's loss on the plan's public probe set, checked by hash."""
        c = self.plan.contribution
        probe = _probe(self.plan.task.ref, c.probe, self.plan.task.seed)
        if c.probe_hash and dataset_hash(probe) != c.probe_hash:
            raise ValueError(f"probe set {c.probe!r} does not match the hash in the plan")
        return float(self.task.evaluate(self.model, probe, self.device).loss)

    def train(self, vector: np.ndarray, round_: int, member: int, optimizer_state: dict | None = None) -> LocalResult:
        """Train from `vector`; `optimizer_state` (a dict, updated in place) carries the inner
        optimizer's state across rounds when the plan keeps it and the task supports it."""
        self.load(vector)
        cfg = train_config(self.plan, self.plan.train_seed(round_, member))
        if optimizer_state is not None and supports_optimizer_state(self.task):
            result = self.task.train(self.model, self.data.train, cfg, self.device, optimizer_state=optimizer_state)
        else:
            result = self.task.train(self.model, self.data.train, cfg, self.device)
        self.model.zero_grad(set_to_none=True)  # the last step's gradients (d floats) are not needed any more
        update = tasks.model_to_vector(self.model)
        update -= vector  # in place: one d-long vector, not two
        return LocalResult(update, result.num_examples, result.loss)
