"""The deployment ServerApp's pull: the same message as Flower's, holding the reply once, not twice.

The message is a real reply as a member sends it (a masked input of 8 MiB in parts, a config and
metrics), deflated into Flower's objects as the SuperLink stores them; `pull` serves them as the
SuperLink's PullObject would and counts what the coordinator holds.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, inflate_object_from_contents

from coordinator import streaming_pull
from coordinator.streaming_pull import CHUNK_DEPTH, inflate_streaming, stream_pulls
from fedloom import records as rec

MIB = 1 << 20


def _reply(size: int, monkeypatch, seed: int = 5) -> tuple[Message, bytes]:
    monkeypatch.setattr(rec, "PART_BYTES", MIB)
    raw = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    protocol = rec.protocol_record([b"key bundle", raw])
    content = RecordDict({rec.PROTOCOL: protocol, "cfg": ConfigRecord({"a": 1}), "m": MetricRecord({"x": 0.5})})
    meta = Metadata(1, "reply", 3, 1, "asked", "", time.time(), 600, "train")  # a member's reply, as stored
    msg = Message(content, metadata=meta)
    return msg, raw


def _stored(msg: Message) -> tuple[dict[str, bytes], object]:
    objects = get_all_nested_objects(msg)
    return {oid: obj.deflate() for oid, obj in objects.items()}, get_object_tree(msg)


def test_a_streamed_reply_is_the_message_flowers_pull_builds(monkeypatch):
    msg, raw = _reply(5 * MIB + 123, monkeypatch)
    store, tree = _stored(msg)
    shallow = {n.object_id for d in range(CHUNK_DEPTH) for n in _at_depth(tree, d)}
    asked: list[list[str]] = []

    def pull(ids: list[str], late: bool) -> dict[str, bytes]:
        asked.append(ids)
        assert late == (ids[0] not in shallow)
        return {i: store[i] for i in ids}

    got = inflate_streaming(tree, pull)
    want = inflate_object_from_contents(tree.object_id, dict(store))
    assert got.object_id == want.object_id == msg.object_id
    assert rec.read_protocol(got.content) == [b"key bundle", raw]
    assert got.content["cfg"]["a"] == 1 and got.content["m"]["x"] == 0.5
    # one request for the small objects, then one per array part for its chunks, each object once
    pulled = [i for ids in asked for i in ids]
    assert sorted(pulled) == sorted(store) and len(asked) == 1 + len(msg.content[rec.PROTOCOL])


def test_streaming_holds_the_reply_once_where_flowers_pull_holds_it_twice(monkeypatch):
    size = 12 * MIB
    msg, raw = _reply(size, monkeypatch)
    store, tree = _stored(msg)
    del msg

    def peak(inflate) -> float:
        tracemalloc.start()
        try:
            out = inflate()
            _, top = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert out.content[rec.PROTOCOL]["1.3"].numpy()[-1] == raw[4 * MIB - 1]
        return top / size

    flower = peak(lambda: inflate_object_from_contents(tree.object_id, {i: bytes(c) for i, c in store.items()}))
    ours = peak(lambda: inflate_streaming(tree, lambda ids, late: {i: bytes(store[i]) for i in ids}))
    print(f"peak while inflating, in units of the message: Flower {flower:.2f}, streaming {ours:.2f}")
    assert flower > 1.9  # what this module exists for: pulled contents + inflated chunks + arrays
    assert ours < 1.3  # the arrays, one part's chunks and their passing copies


def test_a_missing_chunk_is_flowers_unavailable_error_and_nothing_is_confirmed(monkeypatch):
    msg, _ = _reply(3 * MIB, monkeypatch)
    store, tree = _stored(msg)
    chunk = next(c.object_id for c in _at_depth(tree, CHUNK_DEPTH))

    def pull(ids: list[str], late: bool) -> dict[str, bytes]:
        if chunk in ids:
            raise ObjectPullError(chunk, "the object could not be found.")
        return {i: store[i] for i in ids}

    with pytest.raises(ObjectPullError):
        inflate_streaming(tree, pull)


def test_only_a_deployment_grid_is_changed():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    grid = InMemoryGrid.__new__(InMemoryGrid)
    assert stream_pulls(grid) is False and "pull_messages" not in vars(grid)
    assert streaming_pull.HttpGrid.pull_messages.__qualname__ == "HttpGrid.pull_messages"


def _at_depth(tree, depth: int):
    return [tree] if depth == 0 else [n for c in tree.children for n in _at_depth(c, depth - 1)]


class _Carrier:
    """What Flower's HTTP client leaves behind a pulled object: its body, in a reference cycle."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.me = self


def test_what_carried_a_part_is_freed_before_the_next_part_is_pulled(monkeypatch):
    """httpx responses sit in reference cycles: left to Python's collector, a whole reply's bodies
    outlived it (traced in a deployment's ServerApp). Each part's carriers must be gone before the
    next part comes, even with the collector's automatic runs off."""
    import gc
    import weakref

    msg, raw = _reply(5 * MIB, monkeypatch)
    store, tree = _stored(msg)
    carriers: list[weakref.ref] = []
    alive_at_next_part: list[int] = []

    def pull(ids: list[str], late: bool) -> dict[str, bytes]:
        if late:
            alive_at_next_part.append(sum(1 for c in carriers if c() is not None))
        out = {}
        for i in ids:
            carrier = _Carrier(bytes(store[i]))
            carriers.append(weakref.ref(carrier))
            out[i] = carrier.body
        return out

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        got = inflate_streaming(tree, pull)
    finally:
        if was_enabled:
            gc.enable()
    assert rec.read_protocol(got.content)[1] == raw
    # the small key bundle's chunk waits for a MiB of chunks (COLLECT_AFTER); from the first big part on,
    # nothing that carried a part is left when the next is pulled
    assert len(alive_at_next_part) > 4 and alive_at_next_part[2:] == [0] * (len(alive_at_next_part) - 2)


class _Runtime:
    """The SuperLink's Runtime API as the ServerApp's grid calls it, over the stored objects."""

    def __init__(self, replies: list[tuple[Message, dict[str, bytes], object]]) -> None:
        self.replies, self.confirmed = replies, []

    def PullMessages(self, request):
        from flwr.common.serde import message_to_proto
        from flwr.proto.runtime_pb2 import PullAppMessagesResponse

        return PullAppMessagesResponse(
            messages_list=[message_to_proto(m) for m, _, _ in self.replies],
            message_object_trees=[t for _, _, t in self.replies],
        )

    def PullObject(self, request):
        from flwr.proto.message_pb2 import PullObjectResponse

        for _, store, _ in self.replies:
            if request.object_id in store:
                return PullObjectResponse(
                    object_found=True, object_available=True, object_content=store[request.object_id]
                )
        return PullObjectResponse(object_found=False, object_available=False)

    def ConfirmMessageReceived(self, request):
        self.confirmed.append(request.message_object_id)


def test_a_malformed_reply_is_that_members_error_and_the_others_come_through(monkeypatch):
    """Flower's pull raises on an object that does not inflate, which ends the run; here that one
    reply becomes an error reply (the member is dropped from the round) and the rest arrive."""
    from types import SimpleNamespace

    from flwr.proto.node_pb2 import Node

    good, raw = _reply(3 * MIB, monkeypatch)
    bad, _ = _reply(2 * MIB, monkeypatch, seed=6)
    good.metadata.__dict__["_message_id"] = good.object_id
    bad.metadata.__dict__["_reply_to_message_id"] = "asked-too"
    bad.metadata.__dict__["_message_id"] = bad.object_id
    (good_store, good_tree), (bad_store, bad_tree) = _stored(good), _stored(bad)
    array = next(n.object_id for n in _at_depth(bad_tree, CHUNK_DEPTH - 1) if n.object_id not in good_store)
    head, _, _body = bad_store[array].partition(b"\x00")
    bad_store[array] = head + b"\x00" + b"{not json"  # an Array whose body is not its metadata
    runtime = _Runtime([(good, good_store, good_tree), (bad, bad_store, bad_tree)])
    grid = SimpleNamespace(run=SimpleNamespace(run_id=1), node=Node(node_id=1), _runtime_client=runtime)
    got = streaming_pull.pull_messages(grid, [good.object_id, bad.object_id])
    assert len(got) == 2 and not got[0].has_error() and rec.read_protocol(got[0].content)[1] == raw
    assert got[1].has_error() and "could not be rebuilt" in got[1].error.reason
    assert got[1].metadata.reply_to_message_id == "asked-too"
    assert runtime.confirmed == [good.object_id, bad.object_id]  # the bad one's objects may go too


def test_a_reply_that_names_another_sender_or_request_is_refused(monkeypatch):
    """The rebuilt message's addressing is the member's own upload; the SuperLink's record is what
    it checked. A member whose upload names another node (or request) would take its place."""
    from types import SimpleNamespace

    from flwr.proto.node_pb2 import Node

    honest, _ = _reply(2 * MIB, monkeypatch)
    honest.metadata.__dict__["_message_id"] = honest.object_id
    forged, _ = _reply(2 * MIB, monkeypatch, seed=7)
    forged.metadata.__dict__["_message_id"] = forged.object_id
    store, tree = _stored(forged)  # what the member uploaded: it says it is node 3
    runtime = _Runtime([(honest, *_stored(honest))])
    vouched = Message(forged.content, metadata=forged.metadata)
    vouched.metadata.__dict__["_src_node_id"] = 9  # what the SuperLink recorded: it came from node 9
    vouched.metadata.__dict__["_message_id"] = forged.object_id
    runtime.replies.append((vouched, store, tree))
    grid = SimpleNamespace(run=SimpleNamespace(run_id=1), node=Node(node_id=1), _runtime_client=runtime)
    got = streaming_pull.pull_messages(grid, [honest.object_id, forged.object_id])
    assert not got[0].has_error() and got[0].metadata.src_node_id == 3
    assert got[1].has_error() and "src_node_id" in got[1].error.reason


def test_parts_that_add_up_to_more_than_a_message_can_be_are_refused_before_allocating():
    """Every part key may name the same small stored array: the join must not allocate their sum."""
    from flwr.app import ArrayRecord

    part = rec._uint8_array(b"x" * 1000)
    record = ArrayRecord({"0": part, **{f"0.{i}": part for i in range(1, 50)}})
    content = RecordDict({rec.PROTOCOL: record})
    with pytest.raises(ValueError, match="longer than"):
        rec.protocol_views(content, max_bytes=10_000)
    assert len(rec.protocol_views(content, max_bytes=60_000)[0]) == 50_000


def test_a_reply_with_records_fedloom_never_writes_is_left_out_not_the_end_of_the_run(caplog):
    """What the coordinator reads of a reply is the member's: an EVAL record without its fields, a
    protocol record whose parts add up to more than any message can be. Each reply is logged and
    left out; the next good one is taken."""
    from flwr.app import ArrayRecord

    from coordinator.secure import SecureRounds
    from protocol.local import make_federation
    from protocol.params import ProtocolParams
    from simulations.scenario import parse_scenario

    plan = parse_scenario(b'name = "t"\nparticipants = 3\nrounds = 1\n[task]\nname = "digits"\n').plan
    roster = make_federation(3, ProtocolParams(vector_length=10, max_members=3), seed=1).roster
    rounds = SecureRounds(grid=None, plan=plan, nodes=[1, 2, 3], roster=roster, vector_length=10)
    meta = Metadata(1, "r", 2, 1, "asked", "", time.time(), 600, "train")
    no_fields = RecordDict({rec.EVAL: ConfigRecord({"x": 1})})
    part = rec._uint8_array(b"x" * 1000)
    too_long = ArrayRecord({"0": part, **{f"0.{i}": part for i in range(1, 10_000)}})  # 10 MB from 1 kB
    with caplog.at_level("WARNING", logger="fedloom.coordinator"):
        for content in (no_fields, RecordDict({rec.PROTOCOL: too_long})):
            rounds._on_reply(Message(content, metadata=meta))  # logged, not raised
    assert caplog.text.count("cannot be read") == 2 and "longer than" in caplog.text
    good = rec.EvalReport(0.5, 0.9, 7).to_record()
    rounds._on_reply(Message(RecordDict({rec.EVAL: good}), metadata=meta))
    assert rounds._evals == [(0.5, 0.9, 7)]
