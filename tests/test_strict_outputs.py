"""Outputs are strict JSON (no NaN/Infinity words), and a plaintext round leaves out a non-finite update."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from coordinator import outputs
from coordinator.plain import PlainRounds
from fedloom import records as rec
from fedloom.plan import Plan, SecureSpec


def strict_load(text: str):
    """A parser that refuses NaN/Infinity, as jq, JavaScript and most non-Python parsers do."""

    def refuse(word: str):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


NON_FINITE = {
    "final": {"accuracy": float("nan"), "loss": float("inf")},
    "rows": [1.5, float("-inf"), {"x": np.float64("nan")}],
    "pair": (float("nan"), 2),
    "ok": 0.25,
    "name": "NaN",
}


def test_summary_with_non_finite_numbers_is_strict_json_with_nulls(tmp_path):
    outputs.write_json(tmp_path / "summary.json", NON_FINITE)
    data = strict_load((tmp_path / "summary.json").read_text())
    assert data == {
        "final": {"accuracy": None, "loss": None},
        "rows": [1.5, None, {"x": None}],
        "pair": [None, 2],
        "ok": 0.25,
        "name": "NaN",
    }


def test_metrics_rows_are_strict_json_too(tmp_path):
    outputs.append_jsonl(tmp_path / "metrics.jsonl", {"round": 1, "train_loss": float("nan")})
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert strict_load(line) == {"round": 1, "train_loss": None}


class FakeGrid:
    """Answers every train message at once with what `updates[member]` says (member = node id)."""

    def __init__(self, updates: dict[int, tuple[np.ndarray, float]]) -> None:
        self.updates, self.pending = updates, []

    def get_node_ids(self) -> list[int]:
        return sorted(self.updates)

    def push_messages(self, messages):
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{len(self.pending) + i}"
        self.pending += list(messages)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        ready, self.pending = [m for m in self.pending if m.metadata.message_id in ids], []
        return [self._reply(m) for m in ready]

    def _reply(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        vector, examples = self.updates[node]
        content = RecordDict(
            {
                rec.UPDATE: rec.vector_record(vector),
                rec.FIT: MetricRecord({rec.NUM_EXAMPLES: examples, "train-loss": 0.5, "clipped": 0}),
                "who": ConfigRecord({"member": node}),
            }
        )
        reply = Message(content, reply_to=msg)
        reply.metadata.__dict__["_message_id"] = f"r-{msg.metadata.message_id}"
        reply.metadata.__dict__["_src_node_id"] = node
        return reply


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message needs a run (the Simulation Engine sets this; here a dummy one)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def plain_round(updates):
    plan = Plan(participants=len(updates), rounds=1, secure=SecureSpec(enabled=False), stage_timeout=5.0)
    grid = FakeGrid(updates)
    return PlainRounds(grid, plan, grid.get_node_ids()).train_round(1, np.zeros(4, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_update_is_left_out_as_a_fault(caplog, bad):
    good = np.ones(4, dtype=np.float32)
    poisoned = np.array([1.0, bad, 1.0, 1.0], dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="fedloom.coordinator"):
        res = plain_round({1: (good, 10), 2: (poisoned, 10), 3: (good * 3, 10)})
    assert res.aggregated == [1, 3]
    np.testing.assert_allclose(res.mean_update, np.full(4, 2.0))
    assert [(f["member"], f["rule"]) for f in res.faults] == [(2, "non-finite-update")]
    assert "1 of 4 update coordinates" in res.faults[0]["reason"]
    assert "member 2 left out" in caplog.text


def test_a_non_finite_weight_is_left_out(caplog):
    good = np.ones(4, dtype=np.float32)
    res = plain_round({1: (good, 10), 2: (good, math.inf), 3: (good, 10)})
    assert res.aggregated == [1, 3] and res.faults[0]["member"] == 2


def test_a_round_with_only_non_finite_updates_is_skipped():
    nan = np.full(4, np.nan, dtype=np.float32)
    res = plain_round({1: (nan, 10), 2: (nan, 10)})
    assert res.mean_update is None and res.skipped == "no finite update"
    assert sorted(f["member"] for f in res.faults) == [1, 2]
