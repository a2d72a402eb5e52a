"""Real deployment on loopback, a coordinator killed mid-run (SIGKILL of the service, its SuperLink,
gateway and ServerApp: a machine crash) and started again: it resumes at the next round and
ends with exactly the model of an uninterrupted run; a finished state directory is not run again.
The secure variant is tests/test_deployment_secure_resume.py (its own file: xdist runs them side by side).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from deployment import Federation
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow  # every test here starts coordinator services and nodes


PLAIN_PLAN = """rounds = 3
[plan.task]
name = "digits"
partition = "iid"
[plan.training]
epochs = 1
[plan.secure]
enabled = false
"""


def test_coordinator_crash_resumes_at_the_next_round_with_the_same_result(tmp_path):
    """The reference, an uninterrupted run, goes on beside the crashed one, on a federation of its own
    (the same plan, members and data; its own keys and port): deployment rounds mostly wait on
    Flower's polls, so running the two together costs little more than one."""
    ref, fed = (Federation(tmp_path / name, ["ines", "jon", "kai"]) for name in ("reference", "resumed"))
    for f in (ref, fed):
        f.root.mkdir()
        f.provision(PLAIN_PLAN, policy_toml="require_secure_aggregation = false")
    try:
        reference = ref.start_coordinator("ref")
        first = fed.start_coordinator("crash")  # the same plan; its coordinator is killed after round 1
        for m in fed.members:
            ref.start_participant(m, f"ref-nodes/{m}")
            fed.start_participant(m, f"nodes/{m}")
        fed.wait_for(fed.root / "crash" / "checkpoint.json", 600, lambda p: fed.checkpoint_round("crash") >= 1)
        fed.crash_coordinator("crash")
        assert first.returncode != 0
        time.sleep(2)
        second = fed.start_coordinator("crash")
        assert second.wait(900) == 0, fed.tail("coordinator:crash")
        assert reference.wait(900) == 0, ref.tail("coordinator:ref")
        summary = ref.root / "ref" / "outputs" / "summary.json"
        before = (summary.stat().st_mtime_ns, summary.read_bytes())
        again = ref.start_coordinator("ref")  # a finished state dir: says so, re-runs nothing
        assert again.wait(120) == 0, ref.tail("coordinator:ref")
        assert (summary.stat().st_mtime_ns, summary.read_bytes()) == before
    finally:
        fed.stop_all()
        ref.stop_all()
    console = (ref.root / "ref.out").read_text(errors="replace")
    assert "WARNING: secure aggregation is OFF in this plan" in console
    assert "is already complete: nothing is run again" in console.rsplit("done: 3 of 3 rounds completed", 1)[1]
    resumed = load_file(fed.root / "crash" / "outputs" / "model.safetensors")["vector"]
    reference = load_file(ref.root / "ref" / "outputs" / "model.safetensors")["vector"]
    assert np.array_equal(resumed, reference)
    kinds = [json.loads(line)["kind"] for line in (fed.root / "crash" / "ledger.jsonl").read_text().splitlines()]
    assert kinds.count("resume") == 1 and kinds.count("round") == 3
    metric_rounds = [
        r["round"] for r in map(json.loads, (fed.root / "crash" / "outputs" / "metrics.jsonl").read_text().splitlines())
    ]
    assert metric_rounds == [0, 1, 2, 3]
