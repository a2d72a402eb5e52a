"""Typed Flower records (fedloom/records.py): exact round trips, the wire layout of earlier versions,
and no record key spelled out anywhere else in production code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedloom import records as rec

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("protocol", "coordinator", "participant", "simulations", "fedloom", "console", "tasks")


def _plain(record) -> list[tuple]:
    """A record's items in order, as the wire encodes them."""
    return list(record.items())


@pytest.mark.parametrize(
    "fit",
    [
        rec.FitReport(359, 0.25),
        rec.FitReport(1, 2.5, clipped=17),
        rec.FitReport(40, 0.125, clipped=0, probe_loss=1.75),
    ],
)
def test_fit_report_round_trips(fit: rec.FitReport):
    assert rec.FitReport.from_metrics(fit.to_metrics()) == fit


@pytest.mark.parametrize("who", [rec.Who(3), rec.Who(3, examples=120), rec.Who(7, None, 4), rec.Who(2, 0, 0)])
def test_who_round_trips_through_a_reply(who: rec.Who):
    content = RecordDict({rec.WHO: who.to_record()})
    assert rec.Who.of(content) == who
    assert rec.Who.of(RecordDict({})) is None


def test_eval_and_refusal_reports_round_trip():
    ev = rec.EvalReport(0.5, 0.875, 1)
    assert rec.EvalReport.from_record(ev.to_record()) == ev
    ref = rec.RefusalReport(4, 2, "plan.hash", "the plan is not the one this member agreed to")
    assert rec.RefusalReport.from_record(ref.to_record()) == ref
    long = rec.RefusalReport(4, 2, "x", "y" * 5000)
    assert rec.RefusalReport.from_record(long.to_record()).detail == "y" * 1000  # cut on the wire, as before


def test_the_wire_layout_is_that_of_earlier_versions():
    """Old and new members and coordinators interoperate: same keys, same order, same value types."""
    fit = rec.FitReport(359, 0.25, clipped=3, probe_loss=1.5).to_metrics()
    assert _plain(fit) == [("num-examples", 359), ("train-loss", 0.25), ("clipped", 3), ("probe-loss", 1.5)]
    assert _plain(rec.FitReport(1, 0.5).to_metrics()) == [("num-examples", 1), ("train-loss", 0.5), ("clipped", 0)]
    assert _plain(rec.Who(3, 120, 9).to_record()) == [("member", 3), ("examples", 120), ("ledger-head", 9)]
    assert _plain(rec.Who(3).to_record()) == [("member", 3)]
    assert _plain(rec.EvalReport(0.5, 0.75, 10).to_record()) == [
        ("loss", 0.5),
        ("accuracy", 0.75),
        ("num-examples", 10),
    ]
    assert _plain(rec.RefusalReport(4, 2, "r", "d").to_record()) == [
        ("member", 4),
        ("round", 2),
        ("rule", "r"),
        ("detail", "d"),
    ]
    cfg = rec.request_config(5, "{}", "ab" * 32, {"ledger": "x", "sim-kits": "/k"})
    assert _plain(cfg) == [("round", 5), ("plan", "{}"), ("plan-hash", "ab" * 32), ("ledger", "x"), ("sim-kits", "/k")]
    assert rec.WHO == "who" and rec.FIT == "fit" and rec.EVAL == "eval" and rec.REFUSAL == "refusal"


def test_records_an_earlier_member_sent_decode():
    """What the previous code built by hand (a reply from a member not yet upgraded) reads the same."""
    old_fit = MetricRecord({"num-examples": 12, "train-loss": 0.5})  # before the clip count existed
    assert rec.FitReport.from_metrics(old_fit) == rec.FitReport(12, 0.5, 0, None)
    old_who = ConfigRecord({"member": 5, "ledger-head": 2})
    assert rec.Who.from_record(old_who) == rec.Who(5, None, 2)


def _record_keys() -> set[str]:
    """The distinctive record keys records.py defines: those with a hyphen, plus "who" and "clipped".
    (Plain words such as "round", "member" or "loss" also name fields of other formats: the
    ledger, summary.json, model cards; they are defined in records.py too, but not searched for.)"""
    keys = set()
    for node in ast.parse((ROOT / "fedloom" / "records.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            for c in ast.walk(node.value):
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    keys.add(c.value)
    return {k for k in keys if "-" in k or k in ("who", "clipped")} - {rec.SECAGG_ACTION}


def test_the_searched_keys_are_the_ones_that_travel():
    keys = _record_keys()
    assert {"who", "train-loss", "clipped", "probe-loss", "num-examples", "ledger-head", "plan-hash"} <= keys
    assert {"sim-kits", "sim-models", "sim-verify", "sim-garbage-dealer"} <= keys


def test_no_production_module_outside_records_spells_a_record_key():
    keys = _record_keys()
    found: dict[str, list[str]] = {}
    for top in PRODUCTION:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "fedloom/records.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            hits = sorted(
                {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)} & keys
            )
            if hits:
                found[rel] = hits
    assert not found, f"record keys spelled outside fedloom/records.py: {found}"
