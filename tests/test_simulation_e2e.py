"""A short federation end to end through the real CLI and Flower's Simulation Engine (the run is
shared with tests/test_loopback_only.py: see tests/shared_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SUMMARY_KEYS = {
    "rounds_completed",
    "participants",
    "secure_aggregation",
    "final",
    "centralized_baseline",
    "wall_seconds",
}
METRIC_KEYS = {"round", "wall_seconds", "train_loss", "eval_loss", "eval_accuracy", "participants_replied"}


@pytest.fixture(scope="module")
def plain_run(simulate_run) -> Path:
    """The session's `fedloom simulate --baseline` run (tests/shared_runs.py): 4 members, 3 plaintext rounds."""
    assert simulate_run.returncode == 0, simulate_run.output[-6000:]
    return simulate_run.out


@pytest.mark.slow
def test_outputs_exist_with_their_keys(plain_run):
    summary = json.loads((plain_run / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert isinstance(summary["rounds_completed"], int) and summary["rounds_completed"] == 3
    assert summary["participants"] == 4 and summary["secure_aggregation"] is False
    assert {"accuracy", "loss"} <= summary["final"].keys()
    assert 0.0 <= summary["centralized_baseline"]["accuracy"] <= 1.0
    assert isinstance(summary["wall_seconds"], float)
    rows = [json.loads(line) for line in (plain_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        assert r.keys() >= METRIC_KEYS and r["participants_replied"] == 4
    assert (plain_run / "accuracy.png").stat().st_size > 10_000
    assert (plain_run / "model.safetensors").exists()


@pytest.mark.slow
def test_accuracy_rises(plain_run):
    rows = [json.loads(line) for line in (plain_run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["eval_accuracy"], rows[-1]["eval_accuracy"]
    assert last > first + 0.3, (first, last)
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
