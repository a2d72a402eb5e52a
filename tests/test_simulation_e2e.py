"""A short federation end to end through the real CLI and Flower's Simulation Engine (the run is
shared with tests/test_loopback_only.py: see tests/shared_runs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sockets import assert_loopback_only

SUMMARY_KEYS = {
    "rounds_completed",
    "participants",
    "secure_aggregation",
    "final",
    "centralized_baseline",
    "wall_seconds",
}
METRIC_KEYS = {"round", "wall_seconds", "train_loss", "eval_loss", "eval_accuracy", "participants_replied"}


def simulate(out: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "console.cli", "simulate", *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


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
def test_the_run_directory_says_how_it_was_made(plain_run):
    """A copy of the scenario and the effective plan, the versions, start and end times, what exactness means."""
    from fedloom.plan import Plan

    summary = json.loads((plain_run / "summary.json").read_text())
    assert (plain_run / "scenario.toml").read_text().startswith('name = "e2e"')
    assert Plan.from_json((plain_run / "plan.json").read_text()).hash == summary["plan_hash"]
    assert set(summary["versions"]) == {"fedloom", "flwr", "torch", "numpy", "python"}
    assert summary["started_at"] <= summary["ended_at"]
    assert "quantization step" in summary["exactness_note"]


@pytest.mark.slow
def test_out_on_an_earlier_run_is_refused_without_force(plain_run):
    proc = simulate(plain_run, "default", "--rounds", "1")
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--force" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_accuracy_rises(plain_run):
    rows = [json.loads(line) for line in (plain_run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["eval_accuracy"], rows[-1]["eval_accuracy"]
    assert last > first + 0.3, (first, last)
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


@pytest.mark.slow
def test_fedloom_simulate_listens_on_loopback_only(simulate_run):
    """`fedloom simulate` (the session's run, tests/shared_runs.py): Ray and every simulation component."""
    assert simulate_run.returncode == 0, simulate_run.output[-3000:]
    assert_loopback_only(simulate_run.listeners, simulate_run.log, ("gcs_server", "raylet", "ray::RuntimeEnvAgent"))
