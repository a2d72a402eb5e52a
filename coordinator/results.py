"""What one round produced, as the driver and the outputs see it (plain or secure alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EvalSummary:
    """Federated evaluation: example-weighted mean over the participants that replied."""

    loss: float
    accuracy: float
    num_examples: int
    participants: int

    @classmethod
    def combine(cls, rows: list[tuple[float, float, int]]) -> EvalSummary | None:
        total = sum(n for _, _, n in rows)
        if not rows or total == 0:
            return None
        loss = sum(loss_ * n for loss_, _, n in rows) / total
        acc = sum(a * n for _, a, n in rows) / total
        return cls(loss, acc, total, len(rows))


@dataclass
class RoundResult:
    round: int
    mean_update: np.ndarray | None  # sum w (local - global) / sum w; None when the round was skipped
    total_weight: float = 0.0
    asked: list[int] = field(default_factory=list)  # members asked to train
    aggregated: list[int] = field(default_factory=list)  # members whose update is in the mean
    train_loss: float | None = None
    incoming_eval: EvalSummary | None = None  # evaluation of the model sent this round
    stage_seconds: dict[str, float] = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)  # {"member", "stage"}
    refusals: list[dict] = field(default_factory=list)  # {"member", "round", "rule", "reason"}
    resent: list[dict] = field(default_factory=list)  # {"member" or "node", "stage", "times"}: sent again after a lapse
    faults: list[dict] = field(default_factory=list)  # {"member", "rule"}: rejected or convicted
    skipped: str | None = None  # why no aggregate was produced
    exactness: float | None = None  # max |secure - plaintext| (verification mode)
    clipped: int = 0  # coordinates clipped by participants' quantizers
    weights_capped: list[dict] = field(default_factory=list)  # {"member", "examples", "weight"}: FedAvg weight capped
    contribution: dict | None = None  # floor, cap, scores, public weights and exclusions (if governed)
    update_applied: bool = False  # the mean update went into the model and its vector was let go

    @property
    def completed(self) -> bool:
        """The round produced an aggregate (also once its d-long mean update was released)."""
        return self.mean_update is not None or self.update_applied

    def release_update(self) -> None:
        """Let go of the mean update once the outer optimizer applied it: a run keeps every round's
        result, and d floats per round would grow without bound (4 GB a round at 10^9 parameters)."""
        if self.mean_update is not None:
            self.mean_update, self.update_applied = None, True
