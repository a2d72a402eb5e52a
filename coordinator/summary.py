"""summary.json as a typed value: what a run achieved, built by the driver and written once at its end.

The file's layout is a contract with users' tools (and `fedloom status`, the simulation report, the
tests): `RunSummary.to_json()` gives exactly the keys, order and values earlier versions wrote, and
`from_json()` reads them back. The keys a run only has sometimes (a resume, an interruption) and the
keys others add (a simulation's hooks, its report) keep their places.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedloom.plan import Plan

from . import provenance
from .results import EvalSummary, RoundResult

Rows = list[dict[str, Any]]


@dataclass
class FinalEval:
    """The federated evaluation of the last model (None: it never came)."""

    accuracy: float | None = None
    loss: float | None = None

    @classmethod
    def of(cls, ev: EvalSummary | None) -> FinalEval:
        return cls(ev.accuracy, ev.loss) if ev else cls()


@dataclass
class Interruption:
    """How a stopped run ended: the signal, the last round that finished, the last model evaluated."""

    by: str
    last_round: int
    last_evaluated: dict[str, Any] | None  # {"round", "accuracy", "loss"}

    def to_json(self) -> dict[str, Any]:
        return {
            "interrupted": True,
            "interrupted_by": self.by,
            "last_round": self.last_round,
            "last_evaluated": self.last_evaluated,
        }


@dataclass
class RunSummary:
    """summary.json. Fields up to `out_dir` are the run's figures (in file order); then the keys a
    simulation's hooks report, the provenance, and the optional resume / interruption keys."""

    scenario: str
    task: str
    strategy: str
    plan_hash: str
    rounds_planned: int
    rounds_completed: int
    rounds_skipped: Rows  # {"round", "reason"}
    participants: int
    participants_connected: int
    secure_aggregation: bool
    final: FinalEval
    centralized_baseline: dict[str, Any] | None  # filled in by `fedloom simulate --baseline`
    wall_seconds: float
    model_parameters: int
    exactness: float | None  # max |secure - plaintext| over the verified rounds
    dropped: Rows  # {"round", "member" or "node", "stage"}
    refusals: Rows  # {"member", "round", "rule", "reason"}
    resent: Rows  # {"round", "member" or "node", "stage", "times"}
    faults: Rows  # {"round", "member", "rule"}
    weights_capped: Rows  # {"round", "member", "examples", "weight"}
    adversary: dict[str, Any] | None  # what a simulated attack achieved
    out_dir: str
    started_at: str | None
    ended_at: str
    versions: dict[str, str]
    exactness_note: str = provenance.EXACTNESS_NOTE
    reported: dict[str, Any] = field(default_factory=dict)  # other keys a simulation's hooks add (after out_dir)
    resumed_after_round: int | None = None  # set when the run resumed from a checkpoint
    interruption: Interruption | None = None  # set when a signal stopped the run
    later: dict[str, Any] = field(default_factory=dict)  # keys written after the coordinator (e.g. "report")

    @classmethod
    def of_history(
        cls,
        plan: Plan,
        history: list[RoundResult],
        *,
        scenario: str,
        out_dir: Path,
        final: EvalSummary | None,
        connected: int,
        wall: float,
        params: int,
        secure: bool,
        started_at: str | None,
    ) -> RunSummary:
        """The summary of the rounds this process ran (a resume adds the earlier ones: `add_rounds_before`)."""
        exact = [h.exactness for h in history if h.exactness is not None]
        return cls(
            scenario=scenario,
            task=plan.task.name,
            strategy=plan.strategy.name,
            plan_hash=plan.hash,
            rounds_planned=plan.rounds,
            rounds_completed=sum(1 for h in history if h.completed),
            rounds_skipped=[{"round": h.round, "reason": h.skipped} for h in history if not h.completed],
            participants=plan.participants,
            participants_connected=connected,
            secure_aggregation=secure,
            final=FinalEval.of(final),
            centralized_baseline=None,
            wall_seconds=round(wall, 3),
            model_parameters=int(params),
            exactness=max(exact) if exact else None,
            dropped=[{"round": h.round, **d} for h in history for d in h.dropped],
            refusals=[r for h in history for r in h.refusals],
            resent=[{"round": h.round, **e} for h in history for e in h.resent],
            faults=[{"round": h.round, **f} for h in history for f in h.faults],
            weights_capped=[{"round": h.round, **c} for h in history for c in h.weights_capped],
            adversary=None,
            out_dir=str(out_dir),
            started_at=started_at,
            ended_at=provenance.now_iso(),
            versions=provenance.versions(),
        )

    def add_report(self, report: dict[str, Any]) -> None:
        """Keys a simulation's hooks report: "adversary" fills its field, others go after out_dir."""
        for key, value in report.items():
            if key in _FIGURES and key != "final":
                setattr(self, key, value)
            else:
                self.reported[key] = value

    def add_rounds_before(self, rows: Rows, first: int) -> None:
        """A resumed run covers the whole plan: the rounds before the crash come from metrics.jsonl."""
        before = [row for row in rows if 1 <= int(row["round"]) < first and "aggregated" in row]
        self.dropped = [{"round": row["round"], **d} for row in before for d in row["dropped"]] + self.dropped
        self.refusals = [x for row in before for x in row["refusals"]] + self.refusals
        self.resent = [{"round": row["round"], **e} for row in before for e in row.get("resent", [])] + self.resent
        skipped = [{"round": row["round"], "reason": row["skipped"]} for row in before if row["skipped"]]
        self.rounds_skipped = skipped + self.rounds_skipped
        exact = [row["exactness"] for row in before if row.get("exactness") is not None]
        if exact:
            self.exactness = max(exact + ([self.exactness] if self.exactness is not None else []))
        self.resumed_after_round = first - 1

    def to_json(self) -> dict[str, Any]:
        """summary.json's content, in the file's key order."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIGURES}
        out["final"] = {"accuracy": self.final.accuracy, "loss": self.final.loss}
        out |= self.reported
        out |= {name: getattr(self, name) for name in _PROVENANCE}
        if self.resumed_after_round is not None:
            out["resumed_after_round"] = self.resumed_after_round
        if self.interruption is not None:
            out |= self.interruption.to_json()
        return out | self.later

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """A summary.json this version writes (ValueError naming the missing keys otherwise)."""
        missing = [k for k in (*_FIGURES, *_PROVENANCE) if k not in data]
        if missing:
            raise ValueError(f"not a fedloom run summary: missing {', '.join(missing)}")
        known = {k: data[k] for k in (*_FIGURES, *_PROVENANCE)}
        known["final"] = FinalEval(data["final"].get("accuracy"), data["final"].get("loss"))
        summary = cls(**known)
        if data.get("interrupted"):
            summary.interruption = Interruption(data["interrupted_by"], data["last_round"], data["last_evaluated"])
        summary.resumed_after_round = data.get("resumed_after_round")
        keys = list(data)
        provenance_at = keys.index(_PROVENANCE[0])
        for i, key in enumerate(keys):
            if key not in _KNOWN:
                (summary.reported if i < provenance_at else summary.later)[key] = data[key]
        return summary


@dataclass
class RunRefused:
    """A run that stopped before its first round completed because the members refuse to go on."""

    reason: str
    out_dir: str

    def to_json(self) -> dict[str, Any]:
        return {"refused": self.reason, "out_dir": self.out_dir}


_FIELDS = [f.name for f in fields(RunSummary)]
_FIGURES = tuple(_FIELDS[: _FIELDS.index("out_dir") + 1])  # the keys every summary starts with, in file order
_PROVENANCE = ("started_at", "ended_at", "versions", "exactness_note")
_OPTIONAL = ("resumed_after_round", "interrupted", "interrupted_by", "last_round", "last_evaluated")
_KNOWN = frozenset((*_FIGURES, *_PROVENANCE, *_OPTIONAL))
