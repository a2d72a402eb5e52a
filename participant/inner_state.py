"""The inner optimizer's state a member keeps between rounds (plan `training.keep_optimizer_state`).

It never leaves the member's node. Where the node has a directory of its own (a deployed member's
state dir; a simulated member's kit directory in the run's throwaway workspace) it is a file there,
tagged with the plan's hash and the run: Flower hands the node's `Context` to the ClientApp and back
with every message (in a simulation through Ray and the coordinator's process, in deployment between
the SuperNode and each ClientApp process), and AdamW's two moments are 2 x 4d bytes: at full
fine-tuning of a 1.35e8-parameter model that was 1.08 GB per member carried both ways on every trip,
and the simulation's process held every member's copy (measured: 12 GB private at the peak with 4
members). Without such a directory it stays in `context.state`, as before.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context

from fedloom import records as rec
from fedloom.files import atomic_write
from fedloom.plan import Plan

INNER_STATE_KEY = "fedloom.inner-optimizer"
INNER_STATE_FILE = "inner-optimizer.pt"


def load_inner_state(context: Context, plan: Plan, node_dir: Path | None = None) -> dict | None:
    """The inner optimizer's state this member kept from its previous round of this run and plan.
    An empty dict (first round, another plan or run) starts a fresh optimizer; None: not kept."""
    if not plan.training.keep_optimizer_state:
        return None
    if node_dir is not None:
        path = node_dir / INNER_STATE_FILE
        if not path.exists():
            return {}
        kept = torch.load(path, map_location="cpu", weights_only=True)
        same = kept.get("plan_hash") == plan.hash and kept.get("run_id") == context.run_id
        return kept["state"] if same else {}
    if INNER_STATE_KEY not in context.state:
        return {}
    stored = context.state[INNER_STATE_KEY]
    if str(stored[rec.PLAN_HASH]) != plan.hash:
        return {}
    return torch.load(io.BytesIO(stored["state"]), map_location="cpu", weights_only=True)


def save_inner_state(context: Context, plan: Plan, state: dict | None, node_dir: Path | None = None) -> None:
    if state is None or not state:
        return
    if node_dir is not None:  # written whole or not at all: a crash leaves the last round's state
        kept = {"plan_hash": plan.hash, "run_id": context.run_id, "state": state}
        atomic_write(node_dir / INNER_STATE_FILE, lambda tmp: torch.save(kept, tmp), mode=0o600)
        return
    buf = io.BytesIO()
    torch.save(state, buf)
    context.state[INNER_STATE_KEY] = ConfigRecord({rec.PLAN_HASH: plan.hash, "state": buf.getvalue()})
