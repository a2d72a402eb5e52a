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

from fedloom.ledger import LedgerCopy, LedgerError, signed_models
from fedloom.policy import PolicyRefusal

from .models import vector_hash

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
