"""Simulation-only taps on a member's replies: a deployed node never acts on them.

- `deal_garbage`: the member named by the config's SIM_GARBAGE_DEALER plays a malicious dealer;
- `record_for_verification`: the true update for the harness's out-of-band check of the secure sum.

They use test tooling (`protocol.local`), imported only when a simulated node is asked to cheat.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message

from fedloom import records as rec
from protocol.messages import ShareBundle, decode

from .node import NodeView


def deal_garbage(config: ConfigRecord, view: NodeView, replies: list[bytes]) -> list[bytes]:
    """Simulation only: the member named by `sim-garbage-dealer = "<round>:<member>"` plays a
    malicious dealer in that round (garbage shares under valid signatures). A deployed node
    never reads the key, so no coordinator can make an honest member cheat."""
    spec = str(config.get(rec.SIM_GARBAGE_DEALER, ""))
    if not (view.simulation and spec and view.kit):
        return replies
    from protocol.local import garble_share_bundle  # test tooling: simulations only

    round_, member = (int(v) for v in spec.split(":"))
    if member != view.member:
        return replies
    out = []
    for raw in replies:
        reply = decode(raw)
        if isinstance(reply, ShareBundle) and rec.training_round(reply.round) == round_:
            raw = garble_share_bundle(reply, view.kit.identity, view.kit.context).encode()
        out.append(raw)
    return out


VERIFY_ENV = "FEDLOOM_VERIFY_DIR"


def record_for_verification(
    msg: Message, view: NodeView, received: np.ndarray, update: np.ndarray, examples: int
) -> None:
    """Verification mode: hand the received model and the true update to a test harness so it can
    check the secure sum (the coordinator keeps only its last checkpoints).

    In a simulation the harness asks through the config; a deployed member only if it set
    FEDLOOM_VERIFY_DIR itself on its own machine (a coordinator's config is never enough)."""
    where = str(msg.content[rec.CONFIG].get(rec.SIM_VERIFY, "")) if view.simulation else os.environ.get(VERIFY_ENV, "")
    if where:
        path = Path(where) / f"r{view.round}-m{view.member}.npz"
        np.savez(path, received=received, update=update, examples=examples)
