"""What a resumed coordinator keeps of the rounds before its crash (the metrics rows and summary)."""

from __future__ import annotations

import json

from coordinator.driver import PENDING_ROW, _add_rounds_before_resume, _pending_row


def test_the_row_pending_at_the_crash_keeps_its_training_part(tmp_path):
    (tmp_path / PENDING_ROW).write_text(json.dumps({"round": 2, "wall_seconds": 12.5, "aggregated": [1, 2, 3]}))
    assert _pending_row(tmp_path, 2)["aggregated"] == [1, 2, 3]
    assert _pending_row(tmp_path, 3) == {"round": 3, "wall_seconds": 0.0}  # a stale file is ignored
    assert _pending_row(tmp_path, 0) == {"round": 0, "wall_seconds": 0.0}


def test_a_resumed_summary_includes_the_rounds_before_the_crash():
    rows = [
        {"round": 0, "wall_seconds": 0.0},
        {
            "round": 1,
            "aggregated": [1, 2],
            "dropped": [{"member": 3, "stage": "mask"}],
            "refusals": [],
            "resent": [{"member": 1, "node": 7, "trip": "train", "times": 1}],
            "skipped": None,
            "exactness": 2e-5,
        },
        {
            "round": 2,
            "aggregated": [],
            "dropped": [],
            "refusals": [{"member": 2, "round": 2, "reason": "policy"}],
            "skipped": "too few",
            "exactness": None,
        },
        {"round": 3, "aggregated": [1, 2, 3], "dropped": [], "refusals": [], "skipped": None, "exactness": 1e-5},
    ]
    summary = {
        "dropped": [],
        "refusals": [],
        "resent": [{"round": 3, "member": 2, "node": 8, "trip": "secagg", "times": 2}],
        "rounds_skipped": [],
        "exactness": 1e-5,
    }
    _add_rounds_before_resume(summary, rows, first=3)  # rounds 1 and 2 ran before the crash
    assert summary["dropped"] == [{"round": 1, "member": 3, "stage": "mask"}]
    assert summary["refusals"] == [{"member": 2, "round": 2, "reason": "policy"}]
    assert summary["rounds_skipped"] == [{"round": 2, "reason": "too few"}]
    assert [(r["round"], r["member"]) for r in summary["resent"]] == [(1, 1), (3, 2)]  # earlier rounds first
    assert summary["exactness"] == 2e-5 and summary["resumed_after_round"] == 2
