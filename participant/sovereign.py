"""The sovereign build: a member fine-tunes the consortium's final shared base on its own data.

The shared base is good at every member's languages; a member that cares most about its own can
spend a little local compute to specialise it, on its own machine, without asking anyone. The
result is the member's *sovereign* model: it starts from the base (its card keeps the base's
lineage, so anyone can see which consortium model it came from) and never leaves the member.
The same function serves the simulation (after the federated run) and `fedloom participant
sovereign` on a member's node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tasks
from fedloom.plan import Plan

from .models import BASE, SOVEREIGN, read_model, write_model


@dataclass(frozen=True)
class SovereignSpec:
    """How much local compute the sovereign build spends (defaults: the plan's inner optimizer)."""

    steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adamw"
    batch_size: int = 32
    weight_decay: float = 0.0
    seed: int = 0

    @classmethod
    def from_plan(cls, plan: Plan, steps: int, lr: float = 0.0) -> SovereignSpec:
        t = plan.training
        return cls(steps, lr or t.lr, t.optimizer, t.batch_size, t.weight_decay, plan.seed)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("steps", "lr", "optimizer", "batch_size", "weight_decay", "seed")}


def sovereign_build(
    task: tasks.Task,
    base: np.ndarray,
    train: tasks.Dataset,
    spec: SovereignSpec,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The base fine-tuned for `spec.steps` steps on `train`; returns the new parameter vector."""
    if spec.steps < 1:
        raise ValueError(f"a sovereign build needs at least one step (got {spec.steps})")
    device = torch.device(device)
    torch.manual_seed(spec.seed)
    model = task.build_model().to(device)
    tasks.vector_to_model(model, base)
    cfg = tasks.TrainConfig(
        steps=spec.steps,
        optimizer=spec.optimizer,
        batch_size=spec.batch_size,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        seed=spec.seed,
    )
    task.train(model, train, cfg, device)
    return tasks.model_to_vector(model)


def build_from_directory(
    models_dir: Path,
    task: tasks.Task,
    train: tasks.Dataset,
    spec: SovereignSpec,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the member's kept shared base, fine-tune it, write `sovereign.safetensors` + its card.

    The card carries the base's task, plan hash and lineage, `derived_from` = the base's SHA-256
    and the fine-tuning settings.
    """
    model = task.build_model()
    base = read_model(models_dir, BASE, model)
    if not base.card:
        raise ValueError(f"{models_dir} has a base model but no card (base.json)")
    vector = sovereign_build(task, base.vector, train, spec, device)
    card = {
        "task": base.card.get("task", task.name),
        "plan_hash": base.card.get("plan_hash", ""),
        "member": base.card.get("member", ""),
        "round": base.card.get("round"),
        "lineage": base.card.get("lineage", []),
        "derived_from": base.card["sha256"],
        "training": {**spec.as_dict(), "examples": len(train)},
    }
    write_model(models_dir, SOVEREIGN, model, vector, card)
    return vector, card
