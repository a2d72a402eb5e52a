"""The centralized baseline: the same model trained on the pooled training data, same budget.

Budget = the same local work: every participant does `epochs` local epochs (or `steps` local steps)
per round, so the centralized model gets rounds x epochs passes over the pooled data (or
rounds x steps steps). It shows what federation costs.
"""

from __future__ import annotations

import torch

import tasks
from fedloom.plan import Plan
from participant.trainer import train_config


def centralized_baseline(plan: Plan, device: str = "cpu", threads: int = 2) -> dict[str, float]:
    torch.set_num_threads(threads)
    task = tasks.get_task(plan.task.ref)
    train, test = tasks.load_splits(plan.task.ref, seed=plan.task.seed)
    torch.manual_seed(plan.seed)
    model = task.build_model().to(device)
    t = plan.training
    cfg = train_config(plan, plan.seed, epochs=plan.rounds * t.epochs, steps=plan.rounds * t.steps)
    task.train(model, train, cfg, torch.device(device))
    ev = task.evaluate(model, test, torch.device(device))
    return {"accuracy": ev.accuracy, "loss": ev.loss, "epochs": cfg.epochs, "examples": len(train)}
