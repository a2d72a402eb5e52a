"""Real deployment on loopback, secure aggregation across a coordinator crash (SIGKILL of the
service, its SuperLink, gateway and ServerApp) and restart: the resumed rounds run under fresh round
ids and stay exact. Its own file so xdist runs it beside the plaintext resume test.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from deployment import SECURE_PLAN, Federation, largest_secure_error, rows

pytestmark = pytest.mark.slow  # every test here starts coordinator services and nodes


def test_secure_run_resumes_after_a_coordinator_crash_with_exact_secure_rounds(tmp_path):
    """Secure aggregation across a coordinator restart: the resumed rounds run the protocol under
    fresh round ids (restart epoch), members answer them, and every round's secure mean is within
    one quantization step of the plaintext mean. The model is not bit-identical to another run's:
    each secure round's stochastic rounding draws fresh secret randomness (docs/architecture.md)."""
    fed = Federation(tmp_path, ["ines", "jon", "kai"])
    fed.provision(SECURE_PLAN.replace("rounds = 2", "rounds = 3"))
    try:
        first = fed.start_coordinator("state")
        for m in fed.members:
            (fed.root / "verify" / m).mkdir(parents=True, exist_ok=True)
            fed.start_participant(m, f"nodes/{m}", FEDLOOM_VERIFY_DIR=str(fed.root / "verify" / m))
        fed.wait_for(tmp_path / "state" / "checkpoint.json", 600, lambda p: fed.checkpoint_round("state") >= 1)
        fed.crash_coordinator("state")
        before_crash = json.loads((tmp_path / "state" / "status.json").read_text())["wall_seconds"]
        assert first.returncode != 0
        time.sleep(2)
        second = fed.start_coordinator("state")
        assert second.wait(900) == 0, fed.tail("coordinator:state")
    finally:
        fed.stop_all()
    summary = json.loads((tmp_path / "state" / "outputs" / "summary.json").read_text())
    assert summary["secure_aggregation"] is True and summary["resumed_after_round"] >= 1
    by_round = rows(tmp_path / "state" / "outputs" / "metrics.jsonl")
    in_flight = summary["resumed_after_round"] + 1  # the round the crash interrupted
    done = [r for r in (1, 2, 3) if by_round[r]["skipped"] is None]
    for r in (1, 2, 3):
        if r in done:
            assert len(by_round[r]["aggregated"]) == 3 and not by_round[r]["refusals"], by_round[r]
        else:
            # members that had already masked for this training round before the crash never contribute
            # to it again (a second sum over the same round and model would reveal who was in which)
            assert r == in_flight and by_round[r]["refusals"], by_round[r]
            assert {x["rule"] for x in by_round[r]["refusals"]} == {"contribution.repeat"}, by_round[r]
            # the console gives each refusal with its rule, literally, and the skipped round's reason
            console = (tmp_path / "state.out").read_text(errors="replace")
            assert re.search(rf"round {r}: \w+ refused: \[contribution\.repeat\]", console), console[-3000:]
            assert f"round {r} skipped: " in console
    assert summary["rounds_completed"] == len(done) >= 2 and 3 in done
    # the whole run's time: what the first start had run until the crash, plus the resumed part
    assert summary["wall_seconds"] > before_crash > 0, (summary["wall_seconds"], before_crash)
    assert max(largest_secure_error(fed, "state", done)) <= 1 + 1e-6
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "state" / "ledger.jsonl").read_text().splitlines()]
    assert kinds.count("resume") == 1 and kinds.count("round") == 3
