"""What the round loop needs of an aggregation backend, stated once.

The driver runs plain (`PlainRounds`) and secure (`SecureRounds`) rounds through this interface only,
so a new backend (or a test double) knows exactly what to provide; `tests/test_run_summary.py`
checks that both backends match it, signatures included.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .results import EvalSummary, RoundResult


@runtime_checkable
class RoundBackend(Protocol):
    """One training round at a time, and the final evaluation of the last model."""

    secure: bool  # whether members' updates stay hidden from the coordinator (written to every metrics row)

    def train_round(self, round_: int, model: np.ndarray) -> RoundResult:
        """Send `model` (the global model of round `round_`), collect the updates, return their mean.

        The RoundResult also carries the federated evaluation of `model` (`incoming_eval`), and what
        went wrong (dropped, refusals, faults, skipped)."""
        ...

    def evaluate(self, round_: int, model: np.ndarray) -> EvalSummary | None:
        """Federated evaluation of the final model (None: no participant answered)."""
        ...
