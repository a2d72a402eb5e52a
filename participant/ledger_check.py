"""A member trains on, evaluates or keeps a received model only if its own signed ledger says it is current.

The coordinator sends both the model and the ledger entries, so the entries alone prove nothing about
the model; what it cannot do is sign a history that contradicts the member's own verified copy (a fork
is refused when the entries arrive, a cut-off history by `LedgerCopy.check_head`). So the check is:
the received model's SHA-256 equals the model hash of the newest signed state in the member's copy
(`fedloom.ledger.signed_models`), and that state is after the round the message claims to continue
from. Round 0 (the initial model) is pinned by the genesis's `initial_model_hash` when it has one.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Message

from fedloom import records as rec
from fedloom.kits import LEDGER_PUB_FILE
from fedloom.ledger import LedgerCopy, LedgerError, LedgerGap, LedgerTruncated, read_public_key, signed_models
from fedloom.policy import PolicyRefusal

from .models import vector_hash
from .node import NodeView

log = logging.getLogger("fedloom.participant")
RULE = "ledger.model"


def check_received_model(copy: LedgerCopy, vector: np.ndarray, after_round: int) -> None:
    """Refuse (PolicyRefusal) a model that is not the one the signed ledger records after `after_round`."""
    try:
        models = signed_models(copy.entries())
    except LedgerError as exc:
        raise PolicyRefusal(RULE, f"cannot read this member's own ledger copy: {exc}") from None
    if not models:
        raise PolicyRefusal(RULE, "this member's ledger copy is empty: the received model cannot be checked")
    newest = max(models)
    if newest != after_round:
        raise PolicyRefusal(
            RULE,
            f"the model is sent as the one after round {after_round}, but this member's signed ledger "
            f"is after round {newest}",
        )
    signed = models[newest]
    if signed is None:  # only round 0 of a ledger whose genesis does not pin the initial model
        log.warning("the initial model is not pinned by the ledger (no initial_model_hash): not checked")
        return
    actual = vector_hash(vector)
    if actual != signed:
        raise PolicyRefusal(
            RULE,
            f"the received model has hash {actual}, but the signed ledger records {signed} after round {after_round}",
        )


def sync_ledger(view: NodeView, msg: Message) -> None:
    """Deployment: verify and keep the coordinator's ledger entries; a rewritten history (a fork)
    is evidence the coordinator lied, and this member stops taking part."""
    if view.state_dir is None or view.kit_dir is None or not (view.kit_dir / LEDGER_PUB_FILE).exists():
        return
    copy = LedgerCopy(view.state_dir / "ledger.jsonl", read_public_key(view.kit_dir / LEDGER_PUB_FILE))
    lines = [x for x in str(msg.content[rec.CONFIG].get(rec.LEDGER, "")).split("\n") if x]
    try:
        if lines:
            copy.extend(lines)
            copy.check_head(lines[-1])  # the coordinator's newest entry: never behind what this member holds
    except LedgerGap:
        pass  # entries we have not seen yet will come again from our head
    except LedgerTruncated as exc:
        raise PolicyRefusal("ledger.truncated", str(exc)) from exc
    except LedgerError as exc:
        raise PolicyRefusal("ledger.fork", f"the coordinator's ledger contradicts this member's copy: {exc}") from exc
    view.ledger_head = copy.next_index
    view.ledger = copy


def received_model(view: NodeView, msg: Message, after_round: int) -> np.ndarray:
    """The model in the message, once this member's signed ledger says it is the model after `after_round`
    (deployment with a ledger copy; PolicyRefusal otherwise): nothing is trained, evaluated or kept before."""
    vector = rec.read_vector(msg.content, rec.MODEL)
    if view.ledger is not None:
        check_received_model(view.ledger, vector, after_round)
    return vector
