"""The N+1 models a member keeps after each trip (the shared base and its local model), for a NodeView.

In deployment under `<state-dir>/models/`, in a simulation where the harness asks (`rec.SIM_MODELS`);
the files and cards themselves are participant/models.py's.
"""

from __future__ import annotations

import logging

import numpy as np

from .models import ModelKeeper
from .node import NodeView
from .trainer import LocalTrainer

log = logging.getLogger("fedloom.participant")


def keep_models(view: NodeView, trainer: LocalTrainer, base: np.ndarray) -> None:
    """N+1: keep the shared base received this round and the local model trained from it."""
    if view.models_dir is None:
        return
    try:
        keeper = ModelKeeper(view.models_dir, view.plan.task.name, view.plan.hash, view.member_name, trainer.model)
        lineage = keeper.keep_base(base, view.round - 1)
        t = view.plan.training
        training = {"steps": t.steps, "epochs": t.epochs, "optimizer": t.optimizer, "lr": t.lr}
        # the trainer's model is the local one right after training: written from its own tensors
        keeper.keep_trained(view.round, lineage, training | {"examples": len(view.data.train)})
    except OSError as exc:  # the member's disk, not the round: train on, say so loudly
        log.error("member %d could not keep its models in %s: %s", view.member, view.models_dir, exc)


def keep_final_base(view: NodeView, trainer: LocalTrainer, base: np.ndarray) -> None:
    """The evaluate trip carries the final shared base (after the last round): keep it too."""
    if view.models_dir is None:
        return
    try:
        ModelKeeper(view.models_dir, view.plan.task.name, view.plan.hash, view.member_name, trainer.model).keep_base(
            base, view.round
        )
    except OSError as exc:
        log.error("member %d could not keep the final base in %s: %s", view.member, view.models_dir, exc)
