"""Secure rounds through Flower's Simulation Engine: exactness, dropouts at every stage, a round
with too many dropouts skipped cleanly, and participants whose policy forbids the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.driver import LogObserver
from simulations.runner import run_scenario
from simulations.scenario import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("shared_ray")  # the module's three runs start Ray once


def rows(out: Path) -> dict[int, dict]:
    return {r["round"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def faults_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    summary = run_scenario(load_scenario(ROOT / "simulations" / "faults.toml"), out, LogObserver())
    return summary, rows(out)


@pytest.mark.slow
def test_dropout_at_every_stage_is_recovered(faults_run):
    summary, by_round = faults_run
    assert summary["secure_aggregation"] is True
    expected_missing = {2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7}
    for rnd, member in expected_missing.items():
        row = by_round[rnd]
        assert row["skipped"] is None, (rnd, row["skipped"])
        assert {"member": member, "stage": row["dropped"][0]["stage"]} in row["dropped"]
        if row["dropped"][0]["stage"] in ("advertise", "share", "receive", "mask"):
            assert member not in row["aggregated"]  # its input was never in the sum
        else:
            assert member in row["aggregated"]  # it masked before vanishing: its input is in the sum
        assert row["exactness"] is not None and row["exactness"] < 4.0 / 32767  # one quantization step
    stages = {summary_row["stage"] for summary_row in summary["dropped"]}
    assert stages == {"advertise", "share", "receive", "mask", "sign", "unmask"}


@pytest.mark.slow
def test_too_many_dropouts_skip_the_round_and_training_continues(faults_run):
    summary, by_round = faults_run
    assert by_round[8]["skipped"] and "threshold" in by_round[8]["skipped"]
    assert [s["round"] for s in summary["rounds_skipped"]] == [8]
    assert by_round[9]["skipped"] is None and len(by_round[9]["aggregated"]) == 8
    assert summary["rounds_completed"] == 8
    assert summary["final"]["accuracy"] > by_round[0]["eval_accuracy"] + 0.3


@pytest.mark.slow
def test_participants_whose_policy_forbids_the_run_refuse_and_the_rest_continue(tmp_path):
    summary = run_scenario(load_scenario(ROOT / "simulations" / "policy.toml"), tmp_path, LogObserver())
    by_round = rows(tmp_path)
    refusals = {(r["member"], r["round"], r["rule"]) for r in summary["refusals"]}
    assert {
        (2, 1, "policy.task-not-allowed"),
        (2, 2, "policy.task-not-allowed"),
        (3, 2, "policy.max-rounds"),
        (3, 3, "policy.max-rounds"),
    } <= refusals
    assert (3, 1, "policy.max-rounds") not in refusals
    assert set(by_round[1]["aggregated"]) == {1, 3, 4, 5, 6}
    assert set(by_round[2]["aggregated"]) == set(by_round[3]["aggregated"]) == {1, 4, 5, 6}
    assert summary["rounds_completed"] == 3


@pytest.mark.slow
def test_secure_off_is_said_loudly(tmp_path):
    sc = parse_scenario(b"participants = 3\nrounds = 1\n[training]\nepochs = 1\n[secure]\nenabled = false\n")
    summary = run_scenario(sc, tmp_path, LogObserver())
    assert summary["secure_aggregation"] is False and summary["exactness"] is None
    assert rows(tmp_path)[1]["secure_aggregation"] is False
