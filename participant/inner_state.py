"""The inner optimizer's state a member keeps between rounds (plan `training.keep_optimizer_state`).

It lives in `context.state`, which never leaves the member's node, tagged with the plan's hash.
"""

from __future__ import annotations

import io

import torch
from flwr.app import ConfigRecord, Context

from fedloom import records as rec
from fedloom.plan import Plan

INNER_STATE_KEY = "fedloom.inner-optimizer"


def load_inner_state(context: Context, plan: Plan) -> dict | None:
    """The inner optimizer's state this member kept from its previous round (plan
    `training.keep_optimizer_state`), in `context.state`, which never leaves the member's node.
    An empty dict (first round, or another plan) starts a fresh optimizer; None: not kept."""
    if not plan.training.keep_optimizer_state:
        return None
    if INNER_STATE_KEY not in context.state:
        return {}
    stored = context.state[INNER_STATE_KEY]
    if str(stored[rec.PLAN_HASH]) != plan.hash:
        return {}
    return torch.load(io.BytesIO(stored["state"]), map_location="cpu", weights_only=True)


def save_inner_state(context: Context, plan: Plan, state: dict | None) -> None:
    if state is None or not state:
        return
    buf = io.BytesIO()
    torch.save(state, buf)
    context.state[INNER_STATE_KEY] = ConfigRecord({rec.PLAN_HASH: plan.hash, "state": buf.getvalue()})
