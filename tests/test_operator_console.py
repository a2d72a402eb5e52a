"""The coordinator tells its story (issue 13, items 3 and 4): events and status.json as the run goes,
`fedloom status` and `fedloom stop` from another terminal, a run stopped when members hold a history
the state directory lacks, a finished run never re-run, rule names kept literal on the console.

The rounds run the real driver and PlainRounds against a fake Grid (no Flower processes: the
deployment test checks the same lines with real ones)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from coordinator import journal as jr
from coordinator.control import finished_run, process_start_time, status_lines
from coordinator.driver import RunSettings, run_federation
from fedloom import records as rec
from fedloom.plan import Plan, SecureSpec

FEDLOOM = [sys.executable, "-m", "console.cli"]


class FakeGrid:
    """Every node answers at once: a small update, or a policy refusal with `refuse` as its rule."""

    def __init__(self, nodes: int, refuse: str | None = None, refuse_from: int = 1) -> None:
        self.nodes, self.refuse, self.pending, self.trained = list(range(1, nodes + 1)), refuse, [], []
        self.refuse_from = refuse_from

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages):
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{len(self.trained)}-{i}-{time.monotonic_ns()}"
        self.pending += list(messages)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        ready, self.pending = [m for m in self.pending if m.metadata.message_id in ids], []
        return [self._reply(m) for m in ready]

    def _reply(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        round_ = int(msg.content[rec.CONFIG]["round"])
        content = RecordDict({"who": ConfigRecord({"member": node})})
        if self.refuse and round_ >= self.refuse_from:
            detail = "the coordinator's ledger contradicts this member's copy"
            refusal = {"member": node, "round": round_, "rule": self.refuse, "detail": detail}
            content[rec.REFUSAL] = ConfigRecord(refusal)
        elif msg.metadata.message_type == "train":
            self.trained.append(round_)
            size = msg.content[rec.MODEL][rec.VECTOR].numpy().size
            content[rec.UPDATE] = rec.vector_record(np.full(size, 0.01 * node, dtype=np.float32))
            content[rec.FIT] = MetricRecord({rec.NUM_EXAMPLES: 10, "train-loss": 0.5, "clipped": 0})
        content[rec.EVAL] = ConfigRecord({"loss": 1.0, "accuracy": 0.5, rec.NUM_EXAMPLES: 10})
        reply = Message(content, reply_to=msg)
        reply.metadata.__dict__["_message_id"] = f"r-{msg.metadata.message_id}"
        reply.metadata.__dict__["_src_node_id"] = node
        return reply


@pytest.fixture(autouse=True)
def task_identity():
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def run(state: Path, grid: FakeGrid, rounds: int = 2) -> dict:
    """The run's RunSummary (or RunRefused) as summary.json would hold it."""
    plan = Plan(participants=len(grid.nodes), rounds=rounds, secure=SecureSpec(enabled=False), stage_timeout=5.0)
    settings = RunSettings(plan=plan, out_dir=state / "outputs", state_dir=state, node_wait=5.0)
    return run_federation(grid, settings).to_json()


def events(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / jr.EVENTS).read_text().splitlines()]


def test_a_run_writes_a_line_per_stage_and_round_as_it_happens(tmp_path):
    summary = run(tmp_path, FakeGrid(3), rounds=2)
    story = events(tmp_path)
    kinds = [e["kind"] for e in story]
    assert kinds[0] == "started" and kinds[-1] == "done", kinds
    texts = [e["text"] for e in story]
    assert "round 1 · train: asked 3 (node 1, node 2, node 3)" in texts  # who is who: from their first replies
    assert "round 2 · train: asked 3 (member 1, member 2, member 3)" in texts
    assert "round 1 · train: 3 answered" in texts
    # round 1's line comes when round 1 ends, before round 2 starts (not with round 2's evaluation)
    done_1 = next(i for i, e in enumerate(story) if e["kind"] == "round" and e["round"] == 1)
    stage_2 = next(i for i, e in enumerate(story) if e["kind"] == "stage" and e["round"] == 2)
    assert done_1 < stage_2
    assert story[done_1]["text"].startswith("round 1 done in ")
    assert "aggregated 3 (member 1, member 2, member 3)" in story[done_1]["text"]
    assert texts[-1] == f"done: 2 of 2 rounds completed, final accuracy 0.5000, outputs in {tmp_path / 'outputs'}"
    status = json.loads((tmp_path / jr.STATUS).read_text())
    assert status["state"] == "done" and status["rounds_done"] == 2 and status["stage"] is None
    assert 0 < summary["wall_seconds"] <= status["wall_seconds"]  # the status clock also saw the plot written
    assert json.loads((tmp_path / "outputs" / "summary.json").read_text()) == summary
    assert list(summary) == SUMMARY_KEYS  # the layout users' tools read (tests/test_run_summary.py pins the bytes)


SUMMARY_KEYS = [
    *("scenario", "task", "strategy", "plan_hash", "rounds_planned", "rounds_completed", "rounds_skipped"),
    *("participants", "participants_connected", "secure_aggregation", "final", "centralized_baseline"),
    *("wall_seconds", "model_parameters", "exactness", "dropped", "refusals", "resent", "faults", "weights_capped"),
    *("adversary", "out_dir", "started_at", "ended_at", "versions", "exactness_note"),
]


def test_members_holding_another_history_stop_the_run_after_one_round(tmp_path):
    """A fresh or lost state dir: every member refuses ([ledger.fork] in plaintext, [round.replay] secure).
    The run stops after round 1 with the operator's one line instead of wasting every round."""
    grid = FakeGrid(3, refuse="ledger.fork")
    result = run(tmp_path, grid, rounds=5)
    assert "refused" in result
    status = json.loads((tmp_path / jr.STATUS).read_text())
    assert status["state"] == "refused"
    assert "[ledger.fork] from member 1, member 2, member 3" in status["message"]
    assert "Restore the original --state-dir" in status["message"]
    asked_rounds = {e["round"] for e in events(tmp_path) if e["kind"] == "stage"}
    assert asked_rounds == {1}  # rounds 2..5 never asked
    assert not (tmp_path / "outputs" / "summary.json").exists()
    refusals = [e for e in events(tmp_path) if e["kind"] == "refusal"]
    assert [r["rule"] for r in refusals] == ["ledger.fork"] * 3


def test_refusals_of_a_later_round_skip_it_and_do_not_stop_the_run(tmp_path):
    """[round.replay] in round 2 after a good round 1 is no lost state directory (this coordinator
    ran round 1 with these members): a replaying coordinator or a bug; the round is skipped, the
    run goes on and ends with its summary (the adversary scenarios replay in round 2)."""
    result = run(tmp_path, FakeGrid(3, refuse="round.replay", refuse_from=2), rounds=3)
    assert "refused" not in result and result["rounds_completed"] == 1
    status = json.loads((tmp_path / jr.STATUS).read_text())
    assert status["state"] == "done"
    assert (tmp_path / "outputs" / "summary.json").exists()


def test_wall_seconds_continue_across_a_restart_and_start_over_for_a_new_run(tmp_path):
    (tmp_path / jr.STATUS).write_text(json.dumps({"state": "running", "round": 3, "wall_seconds": 100.0}))
    assert jr.Journal(tmp_path, 5).wall_seconds() >= 100.0
    (tmp_path / jr.STATUS).write_text(json.dumps({"state": "done", "round": 5, "wall_seconds": 100.0}))
    assert jr.Journal(tmp_path, 5).wall_seconds() < 100.0


def test_a_resumed_run_reports_its_whole_wall_time(tmp_path):
    (tmp_path / jr.STATUS).write_text(json.dumps({"state": "stopped", "round": 1, "wall_seconds": 250.0}))
    summary = run(tmp_path, FakeGrid(2), rounds=1)
    assert summary["wall_seconds"] >= 250.0


def test_a_finished_state_dir_is_recognised_only_for_its_own_plan(tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "summary.json").write_text(json.dumps({"plan_hash": "abc", "rounds_completed": 3}))
    assert finished_run(tmp_path, "abc")["rounds_completed"] == 3
    assert finished_run(tmp_path, "other") is None
    (tmp_path / "outputs" / "summary.json").write_text(json.dumps({"plan_hash": "abc", "interrupted": True}))
    assert finished_run(tmp_path, "abc") is None  # an interrupted run has work left


def test_the_console_keeps_rule_names_literal(capsys):
    from console.cli import _print_event

    text = "round 2 skipped: secure aggregation aborted: [cohort.too-small] 0 bundles, 3 needed"
    _print_event({"kind": "round", "skipped": "x", "text": text})
    _print_event({"kind": "refusal", "text": "round 1: bo refused: [round.replay] seen [bold]before[/]"})
    out = capsys.readouterr().out
    assert text in out
    assert "[round.replay] seen [bold]before[/]" in out


def test_serverapp_info_lines_go_to_stdout_for_flwr_log(capsys):
    from coordinator.server_app import log_to_stdout

    log_to_stdout()
    log_to_stdout()  # twice: still one line per message
    logging.getLogger("fedloom.coordinator").info("round 1 · train: asked 3")
    assert capsys.readouterr().out.count("round 1 · train: asked 3") == 1


# ---------------------------------------------------------------------------------- status and stop
def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDLOOM, *args], capture_output=True, text=True, timeout=timeout)


def test_status_shows_round_stage_awaited_members_and_refusals(tmp_path):
    j = jr.Journal(tmp_path, 4, names={1: "amara", 2: "bo", 3: "chen"})
    j.member_of = {11: 1, 12: 2, 13: 3}
    j.started(3, 1, True, tmp_path / "outputs")
    j.round_done({"round": 1, "wall_seconds": 3.0, "aggregated": [1, 2, 3], "train_loss": 0.4}, 1, 0.8)
    j.stage(2, "sign survivors", [11, 12, 13])
    j.waiting(2, "sign survivors", [11], [12, 13])
    j.refusal(2, 2, "round.replay", "protocol round 33 was already answered")
    proc = cli("status", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "rounds done: 1 of 4" in out
    assert "now: round 2 · sign survivors" in out
    assert "awaiting: bo, chen" in out and "answered: amara" in out
    assert "round 2: bo refused: [round.replay] protocol round 33 was already answered" in out
    assert "not running" in out  # no coordinator process serves this state dir
    as_json = json.loads(cli("status", str(tmp_path), "--json").stdout)
    assert as_json["round"] == 2 and as_json["coordinator_running"] is False


@pytest.mark.parametrize("args", [["status", "/nonexistent/state"], ["stop", "/nonexistent/state"]])
def test_status_and_stop_on_a_wrong_directory_are_one_line(args):
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "not a directory" in proc.stderr


def fake_coordinator(state: Path, argv: list[str]) -> subprocess.Popen:
    """A process that looks like `fedloom coordinator start` (or not) and records itself as service.json does."""
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv])
    deadline = time.time() + 10
    while process_start_time(proc.pid) is None and time.time() < deadline:
        time.sleep(0.05)
    info = {"pid": proc.pid, "pid_started": process_start_time(proc.pid)}
    (state / "service.json").write_text(json.dumps(info))
    return proc


def test_stop_sends_sigterm_to_the_recorded_coordinator(tmp_path):
    proc = fake_coordinator(tmp_path, ["coordinator", "start"])
    try:
        time.sleep(0.5)  # its handler is installed
        out = cli("stop", str(tmp_path), "--wait", "20")
        assert out.returncode == 0, out.stderr
        assert proc.wait(10) == 143
        assert f"stopped the coordinator (pid {proc.pid})" in out.stdout
    finally:
        proc.kill()


@pytest.mark.parametrize("case", ["not-a-coordinator", "pid-reused"])
def test_stop_never_signals_a_process_that_is_not_the_coordinator(tmp_path, case):
    argv = ["something", "else"] if case == "not-a-coordinator" else ["coordinator", "start"]
    proc = fake_coordinator(tmp_path, argv)
    try:
        if case == "pid-reused":  # the recorded pid now names a process started at another time
            info = json.loads((tmp_path / "service.json").read_text())
            (tmp_path / "service.json").write_text(json.dumps(info | {"pid_started": info["pid_started"] - 1}))
        out = cli("stop", str(tmp_path), "--wait", "2")
        assert out.returncode == 2 and "no coordinator is running" in out.stderr
        assert proc.poll() is None  # untouched
    finally:
        proc.kill()
        proc.wait(10)


def test_status_lines_without_a_stage():
    lines = status_lines({"state": "done", "rounds_planned": 3, "rounds_done": 3, "out_dir": "/x"})
    assert lines == ["state: done", "rounds done: 3 of 3", "outputs: /x"]


def test_sigterm_signal_numbers_are_what_the_console_reports():
    from coordinator.control import closing_line

    text, _ = closing_line(Path("/nonexistent"), 128 + signal.SIGTERM)
    assert text.startswith("stopped (SIGTERM)")
    assert os.path.sep in text


def test_the_awaiting_line_repeats_only_when_something_changed(tmp_path):
    from types import SimpleNamespace

    j = jr.Journal(tmp_path, 2)
    watch = j.watcher(1, "train")
    for replied in ({1}, {1}, {1}, {1, 2}):
        watch("waiting", SimpleNamespace(replied=replied), sorted({1, 2, 3} - replied))
    watch("waiting", SimpleNamespace(replied={1, 2, 3}), [])  # nobody left: no line
    lines = [e["text"] for e in events(tmp_path) if e["kind"] == "waiting"]
    assert lines == [
        "round 1 · train: 1 answered, awaiting 2 (node 2, node 3)",
        "round 1 · train: 2 answered, awaiting 1 (node 3)",
    ]
