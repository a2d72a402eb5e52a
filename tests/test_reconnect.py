"""A member's node that misses its heartbeats is waited for, and its repeat is answered once.

The exchange runs against Flower's own in-memory LinkState (the SuperLink's state: the same code
that decides a node is offline and answers "Node Unavailable" for it); the nodes are threads that
claim their messages from it and reply, heartbeat, or stop doing both (a frozen machine).
The participant's kept reply (`participant.replay`) is checked on its own.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import (
    NOOP_ACCOUNT_NAME,
    NOOP_FLWR_AID,
    RUN_ID_NUM_BYTES,
    SUPERLINK_NODE_ID,
    TASK_ID_NUM_BYTES,
)
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from coordinator.transport import exchange
from participant import replay

HEARTBEAT = 0.3  # seconds; the SuperLink deems a node offline 2 x this after its last heartbeat


class Node(threading.Thread):
    """A SuperNode in miniature: heartbeats, claims its messages, answers each with its `a` + 1."""

    def __init__(self, state, node_id: int, answer_after: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.state, self.id, self.answer_after = state, node_id, answer_after
        self.frozen = threading.Event()
        self.failing = False  # answer with an error (the ClientApp raised)
        self.stop = threading.Event()
        self.answered = 0

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.frozen.is_set():
                self.state.acknowledge_node_heartbeat(self.id, HEARTBEAT)
                for msg in self.state.get_message_ins(self.id, None):
                    time.sleep(self.answer_after)
                    while self.frozen.is_set() and not self.stop.is_set():  # frozen mid-work: the reply waits
                        time.sleep(0.02)
                    self.reply(msg)
            time.sleep(0.02)

    def reply(self, msg: Message) -> None:
        if self.failing:
            out = Message(Error(code=0, reason="the ClientApp raised"), reply_to=msg)
        else:
            out = Message(RecordDict({"r": ConfigRecord({"a": int(msg.content["q"]["a"]) + 1})}), reply_to=msg)
        out.metadata.__dict__["_message_id"] = out.object_id
        self.state.store_message_res(out)
        self.answered += 1


@pytest.fixture
def link():
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    grid = InMemoryGrid(factory)
    grid.set_run(run)
    nodes: list[Node] = []

    def add(**kw) -> Node:
        node_id = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32), HEARTBEAT)
        state.acknowledge_node_heartbeat(node_id, HEARTBEAT)
        node = Node(state, node_id, **kw)
        node.start()
        nodes.append(node)
        return node

    yield grid, add
    for node in nodes:
        node.stop.set()
        node.join(5)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def ask(grid, nodes, timeout=20.0, grace=10.0, max_resends=5):
    built: list[int] = []
    answers: dict[int, int] = {}

    def build(node: int) -> Message:
        built.append(node)
        return Message(RecordDict({"q": ConfigRecord({"a": node % 1000})}), dst_node_id=node, message_type="train")

    def on_reply(reply: Message) -> None:
        answers[reply.metadata.src_node_id] = int(reply.content["r"]["a"])

    t0 = time.monotonic()
    trip = exchange(grid, [n.id for n in nodes], build, timeout, on_reply, grace=grace, max_resends=max_resends)
    return trip, answers, built, time.monotonic() - t0


def test_a_node_frozen_past_its_heartbeats_is_waited_for_and_asked_again(link):
    grid, add = link
    steady, frozen = add(), add(answer_after=0.2)

    def freeze_while_working() -> None:
        time.sleep(0.1)  # it has claimed its message by now and is working on it
        frozen.frozen.set()
        time.sleep(6 * HEARTBEAT)  # long past the SuperLink's patience
        frozen.frozen.clear()

    threading.Thread(target=freeze_while_working, daemon=True).start()
    trip, answers, built, _ = ask(grid, [steady, frozen])
    assert trip.replied == {steady.id, frozen.id} and not trip.errors
    assert trip.resent == {frozen.id: 1}
    assert answers == {steady.id: steady.id % 1000 + 1, frozen.id: frozen.id % 1000 + 1}
    assert built.count(frozen.id) == 2 and built.count(steady.id) == 1


def test_a_node_that_never_returns_is_dropped_after_the_grace_not_the_deadline(link):
    grid, add = link
    steady, gone = add(), add(answer_after=0.2)
    threading.Timer(0.1, gone.frozen.set).start()
    trip, _, _, elapsed = ask(grid, [steady, gone], timeout=30.0, grace=1.0)
    assert trip.replied == {steady.id} and set(trip.errors) == {gone.id}
    assert "Node Unavailable" in trip.errors[gone.id] and not trip.resent
    assert elapsed < 10.0  # offline after 2 heartbeats, then 1 s of grace; not the 30 s deadline


def test_a_node_that_keeps_lapsing_is_asked_again_at_most_max_resends_times(link):
    grid, add = link
    flaky = add(answer_after=0.2)
    stop = threading.Event()

    def lapse_forever() -> None:  # frozen while it works on every message; back in between
        while not stop.is_set():
            time.sleep(0.1)
            flaky.frozen.set()
            time.sleep(4 * HEARTBEAT)
            flaky.frozen.clear()
            time.sleep(0.3)

    threading.Thread(target=lapse_forever, daemon=True).start()
    try:
        trip, _, built, _ = ask(grid, [flaky], timeout=30.0, grace=5.0, max_resends=2)
    finally:
        stop.set()
    assert trip.resent.get(flaky.id, 0) <= 2 and built.count(flaky.id) <= 3
    assert flaky.id in trip.replied or flaky.id in trip.errors


def test_a_failed_clientapp_is_an_error_at_once_and_not_asked_again(link):
    grid, add = link
    steady, failing = add(), add()
    failing.failing = True
    trip, _, built, elapsed = ask(grid, [steady, failing], timeout=30.0)
    assert trip.replied == {steady.id} and trip.errors == {failing.id: "the ClientApp raised"}
    assert not trip.resent and built.count(failing.id) == 1 and elapsed < 10.0


# ---------------------------------------------------------------- the member's kept reply


def test_request_digest_covers_kind_round_and_every_byte_and_boundary():
    base = replay.request_digest("train", 3, [b"ab", b"c"])
    assert base == replay.request_digest("train", 3, [b"ab", b"c"])
    others = [
        replay.request_digest("query.secagg", 3, [b"ab", b"c"]),
        replay.request_digest("train", 4, [b"ab", b"c"]),
        replay.request_digest("train", 3, [b"a", b"bc"]),
        replay.request_digest("train", 3, [b"abc"]),
        replay.request_digest("train", 3, [b"ab", b"d"]),
        replay.request_digest("train", 3, [b"ab", b"c", b""]),
    ]
    assert len({base, *others}) == 7


def test_kept_reply_round_trips_exactly_and_only_for_its_own_request(tmp_path):
    big = os.urandom(3_000_000)  # a masked input of 750k parameters
    kept = replay.KeptReply(
        "d1", [big, b"", b"sig"], {"weight": np.int64(359), "clipped": 0}, {"examples": 359, "loss": np.float32(0.5)}
    )
    replay.save(tmp_path, kept)
    back = replay.load(tmp_path, "d1")
    assert back is not None and back.replies == [big, b"", b"sig"]
    assert back.info == {"weight": 359, "clipped": 0} and back.fit == {"examples": 359, "loss": 0.5}
    assert replay.load(tmp_path, "d2") is None
    assert stat.S_IMODE((tmp_path / replay.REPLY_FILE).stat().st_mode) == 0o600
    replay.save(tmp_path, replay.KeptReply("d2", [b"x"]))  # the next request replaces it
    assert replay.load(tmp_path, "d1") is None and replay.load(tmp_path, "d2").replies == [b"x"]


def test_an_unreadable_kept_reply_counts_as_none(tmp_path):
    (tmp_path / replay.REPLY_FILE).write_bytes(b"not a zip file")
    assert replay.load(tmp_path, "d1") is None
    assert replay.load(tmp_path / "nowhere", "d1") is None
