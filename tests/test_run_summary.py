"""Typed messages between the round loop and what it drives and writes (issue 15): the `RoundBackend` protocol
both backends satisfy, and `RunSummary`, which must write summary.json byte for byte as the earlier dict code did
(users' tools, `fedloom status` and the simulation report read it)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import pytest

from coordinator import driver, outputs, provenance
from coordinator.backend import RoundBackend
from coordinator.plain import PlainRounds
from coordinator.results import EvalSummary, RoundResult
from coordinator.secure import SecureRounds
from coordinator.summary import Interruption, RunRefused, RunSummary
from fedloom.plan import Plan

# ------------------------------------------------------------------ RoundBackend


@pytest.mark.parametrize("backend", [PlainRounds, SecureRounds])
def test_both_backends_are_round_backends_with_the_same_signatures(backend):
    assert isinstance(backend.__new__(backend), RoundBackend)
    assert isinstance(backend.secure, bool)
    for name in ("train_round", "evaluate"):
        wanted = inspect.signature(getattr(RoundBackend, name), eval_str=True)
        got = inspect.signature(getattr(backend, name), eval_str=True)
        assert got == wanted, f"{backend.__name__}.{name}{got} is not RoundBackend.{name}{wanted}"


def test_something_without_a_final_evaluation_is_no_round_backend():
    class TrainOnly:
        secure = False

        def train_round(self, round_: int, model: np.ndarray) -> RoundResult:
            return RoundResult(round_, None)

    assert not isinstance(TrainOnly(), RoundBackend)


def test_the_driver_holds_its_backend_as_a_round_backend():
    assert get_type_hints(driver._aggregation)["return"] is RoundBackend
    source = inspect.getsource(driver._run_rounds)
    assert "rounds: RoundBackend = _aggregation(" in source


# ------------------------------------------------------------------ the earlier code, kept as the reference layout


def old_summary(
    plan: Plan,
    scenario: str,
    out_dir: Path,
    history: list[RoundResult],
    final: EvalSummary | None,
    connected: int,
    wall: float,
    params: int,
    secure: bool,
    report: dict[str, Any],
) -> dict[str, Any]:
    """driver._summary before RunSummary (with `_hook_report`'s keys as `report`)."""
    exact = [h.exactness for h in history if h.exactness is not None]
    return {
        "scenario": scenario,
        "task": plan.task.name,
        "strategy": plan.strategy.name,
        "plan_hash": plan.hash,
        "rounds_planned": plan.rounds,
        "rounds_completed": sum(1 for h in history if h.mean_update is not None),
        "rounds_skipped": [{"round": h.round, "reason": h.skipped} for h in history if h.mean_update is None],
        "participants": plan.participants,
        "participants_connected": connected,
        "secure_aggregation": secure,
        "final": {"accuracy": final.accuracy if final else None, "loss": final.loss if final else None},
        "centralized_baseline": None,
        "wall_seconds": round(wall, 3),
        "model_parameters": int(params),
        "exactness": max(exact) if exact else None,
        "dropped": [{"round": h.round, **d} for h in history for d in h.dropped],
        "refusals": [r for h in history for r in h.refusals],
        "resent": [{"round": h.round, **e} for h in history for e in h.resent],
        "faults": [{"round": h.round, **f} for h in history for f in h.faults],
        "weights_capped": [{"round": h.round, **c} for h in history for c in h.weights_capped],
        "adversary": None,
        "out_dir": str(out_dir),
    } | report


def old_provenance(started_at: str) -> dict[str, Any]:
    return {
        "started_at": started_at,
        "ended_at": provenance.now_iso(),
        "versions": provenance.versions(),
        "exactness_note": provenance.EXACTNESS_NOTE,
    }


def old_add_rounds_before_resume(summary: dict[str, Any], rows: list[dict[str, Any]], first: int) -> None:
    before = [row for row in rows if 1 <= int(row["round"]) < first and "aggregated" in row]
    summary["dropped"] = [{"round": row["round"], **d} for row in before for d in row["dropped"]] + summary["dropped"]
    summary["refusals"] = [x for row in before for x in row["refusals"]] + summary["refusals"]
    resent = [{"round": row["round"], **e} for row in before for e in row.get("resent", [])]
    summary["resent"] = resent + summary.get("resent", [])
    skipped = [{"round": row["round"], "reason": row["skipped"]} for row in before if row["skipped"]]
    summary["rounds_skipped"] = skipped + summary["rounds_skipped"]
    exact = [row["exactness"] for row in before if row.get("exactness") is not None]
    if exact:
        summary["exactness"] = max(exact + ([summary["exactness"]] if summary["exactness"] is not None else []))
    summary["resumed_after_round"] = first - 1


# ------------------------------------------------------------------ a run's history

PLAN = Plan(participants=4, rounds=3)
OUT = Path("/runs/demo")
STARTED = "2026-11-02T10:00:00+00:00"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(provenance, "now_iso", lambda: "2026-11-02T10:05:00+00:00")
    monkeypatch.setattr(provenance, "versions", lambda: {"python": "3.12.0", "fedloom": "0.1.0", "flwr": "1.41.0"})


def history() -> list[RoundResult]:
    """Round 2 aggregated with a dropout, a resend, a fault and a capped weight; round 3 was skipped."""
    return [
        RoundResult(
            2,
            np.zeros(3, np.float32),
            asked=[1, 2, 3, 4],
            aggregated=[1, 2, 3],
            dropped=[{"member": 4, "stage": "mask"}],
            refusals=[{"member": 4, "round": 2, "rule": "policy.task", "reason": "no"}],
            resent=[{"member": 2, "node": 8, "stage": "sign", "times": 1}],
            faults=[{"member": 3, "rule": "share.bad"}],
            exactness=3.5e-6,
            weights_capped=[{"member": 1, "examples": 900, "weight": 500}],
        ),
        RoundResult(3, None, asked=[1, 2, 3, 4], skipped="too few: 1 < 3", exactness=None),
    ]


EARLIER_ROWS = [  # metrics.jsonl as the crashed process left it (round 1 ran before the resume)
    {"round": 0, "wall_seconds": 0.0},
    {
        "round": 1,
        "aggregated": [1, 2],
        "dropped": [{"node": 5, "stage": "train"}],
        "refusals": [],
        "resent": [{"member": 1, "node": 7, "stage": "train", "times": 2}],
        "skipped": None,
        "exactness": 9e-6,
    },
]


def new_summary(final: EvalSummary | None, report: dict[str, Any], done_before: int = 0) -> RunSummary:
    """What the driver's `_summary` does now."""
    summary = RunSummary.of_history(
        PLAN,
        history(),
        scenario="demo",
        out_dir=OUT,
        final=final,
        connected=4,
        wall=12.34567,
        params=1234,
        secure=True,
        started_at=STARTED,
    )
    summary.rounds_completed += done_before
    summary.add_report(report)
    return summary


def old(final: EvalSummary | None, report: dict[str, Any], done_before: int = 0) -> dict[str, Any]:
    summary = old_summary(PLAN, "demo", OUT, history(), final, 4, 12.34567, 1234, True, report)
    summary["rounds_completed"] += done_before
    summary.update(old_provenance(STARTED))
    return summary


def written(tmp_path: Path, content: dict[str, Any]) -> bytes:
    outputs.write_json(tmp_path / "summary.json", content)
    return (tmp_path / "summary.json").read_bytes()


FINAL = EvalSummary(loss=0.31, accuracy=0.9125, num_examples=400, participants=4)
ADVERSARY = {"adversary": {"recovered": False, "survivors": (1, 2), "why": "refused"}}


@pytest.mark.parametrize("report", [{}, ADVERSARY, {**ADVERSARY, "sim-extra": {"n": 1}}], ids=["plain", "adv", "more"])
def test_a_finished_run_writes_the_summary_the_dict_code_wrote(tmp_path, report):
    new = new_summary(FINAL, report).to_json()
    assert list(new) == list(old(FINAL, report))
    assert written(tmp_path, new) == written(tmp_path, old(FINAL, report))


def test_a_resumed_run_writes_the_summary_the_dict_code_wrote(tmp_path):
    new = new_summary(FINAL, ADVERSARY, done_before=1)
    new.add_rounds_before(EARLIER_ROWS, first=2)
    reference = old(FINAL, ADVERSARY, done_before=1)
    old_add_rounds_before_resume(reference, EARLIER_ROWS, first=2)
    assert new.to_json()["resumed_after_round"] == 1 and new.to_json()["exactness"] == 9e-6
    assert written(tmp_path, new.to_json()) == written(tmp_path, reference)


def test_an_interrupted_run_writes_the_summary_the_dict_code_wrote(tmp_path):
    new = new_summary(None, {}, done_before=1)
    new.interruption = Interruption("SIGINT", 2, {"round": 1, "accuracy": 0.8, "loss": 0.5})
    reference = old(None, {}, done_before=1)
    last_evaluated = {"round": 1, "accuracy": 0.8, "loss": 0.5}
    reference.update(interrupted=True, interrupted_by="SIGINT", last_round=2, last_evaluated=last_evaluated)
    assert written(tmp_path, new.to_json()) == written(tmp_path, reference)


# ------------------------------------------------------------------ summary.json files as earlier versions wrote them


def old_files() -> list[dict[str, Any]]:
    """summary.json contents of the earlier code: finished (with an attack's report, a centralized baseline and the
    simulation's "report" appended by the runner), resumed, interrupted."""
    finished = json.loads(json.dumps(old(FINAL, ADVERSARY)))
    finished["centralized_baseline"] = {"accuracy": 0.95, "loss": 0.2}
    finished["report"] = {"report": "/runs/demo/report.md", "checks": {"a": {"pass": True, "summary": "ok"}}}
    resumed = old(FINAL, {}, done_before=1)
    old_add_rounds_before_resume(resumed, EARLIER_ROWS, first=2)
    interrupted = old(None, {"sim-extra": [1, 2]})
    interrupted.update(interrupted=True, interrupted_by="SIGTERM", last_round=0, last_evaluated=None)
    return [json.loads(json.dumps(s)) for s in (finished, resumed, interrupted)]


@pytest.mark.parametrize("index", range(3), ids=["finished", "resumed", "interrupted"])
def test_a_summary_file_reads_back_and_writes_the_same_bytes(tmp_path, index):
    data = old_files()[index]
    summary = RunSummary.from_json(data)
    assert summary.to_json() == data and list(summary.to_json()) == list(data)
    assert written(tmp_path, summary.to_json()) == written(tmp_path, data)
    assert summary.final.accuracy == data["final"]["accuracy"] and summary.rounds_completed == data["rounds_completed"]
    assert (summary.interruption is not None) == ("interrupted" in data)


def test_the_typed_fields_read_what_the_file_says():
    finished, resumed, interrupted = (RunSummary.from_json(d) for d in old_files())
    assert finished.adversary == {"recovered": False, "survivors": [1, 2], "why": "refused"}
    assert finished.later == {"report": old_files()[0]["report"]} and finished.reported == {}
    assert resumed.resumed_after_round == 1 and resumed.dropped[0] == {"round": 1, "node": 5, "stage": "train"}
    assert interrupted.interruption == Interruption("SIGTERM", 0, None)
    assert interrupted.reported == {"sim-extra": [1, 2]} and interrupted.final.accuracy is None


def test_a_file_that_is_no_run_summary_is_refused_in_one_line():
    minimal = {"scenario": "demo", "interrupted": True, "rounds_completed": 0, "out_dir": "/x"}
    with pytest.raises(ValueError, match=r"^not a fedloom run summary: missing task, strategy, .*exactness_note$"):
        RunSummary.from_json(minimal)


def test_a_refused_run_reads_as_before():
    assert RunRefused("members refuse", "/runs/x").to_json() == {"refused": "members refuse", "out_dir": "/runs/x"}
