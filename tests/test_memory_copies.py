"""The coordinator's and a member's copies of the d-long vector (issue 14: secure rounds at 10^8
parameters without memory blow-up): each change keeps the bytes and the numbers it replaced."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

import tasks
from coordinator.optimizers import FedAvg
from coordinator.results import RoundResult
from coordinator.transport import _pull_and_fold
from fedloom import records as rec
from protocol.codec import Writer
from protocol.params import ProtocolParams
from protocol.quantize import dequantize, weighted_mean


def test_the_protocol_record_is_the_bytes_flower_would_make_and_reads_back_without_a_copy():
    for n in (0, 1, 7, 70_001):
        raw = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
        ours, flowers = rec._uint8_array(raw), Array(np.frombuffer(raw, dtype=np.uint8))
        assert (ours.data, ours.dtype, tuple(ours.shape), ours.stype) == (
            flowers.data,
            flowers.dtype,
            tuple(flowers.shape),
            flowers.stype,
        )
        assert ours.object_id == flowers.object_id
    content = RecordDict({rec.PROTOCOL: rec.protocol_record([b"abc", bytes(5000)])})
    views = rec.protocol_views(content)
    assert [bytes(v) for v in views] == rec.read_protocol(content) == [b"abc", bytes(5000)]
    assert all(isinstance(v, memoryview) for v in views)
    data = content[rec.PROTOCOL]["1"].data
    assert np.shares_memory(np.frombuffer(views[1], dtype=np.uint8), np.frombuffer(data, dtype=np.uint8))


def test_a_record_that_is_not_plain_uint8_takes_the_copying_path_and_reads_the_same():
    odd = RecordDict({rec.PROTOCOL: ArrayRecord({"0": Array(np.arange(6, dtype=np.uint16))})})
    assert rec.protocol_views(odd) == rec.read_protocol(odd)  # not a view: a 2-byte dtype is not raw bytes
    vec = np.arange(5, dtype=np.float32)
    view = rec.read_vector(RecordDict({rec.MODEL: rec.vector_record(vec)}), rec.MODEL)
    assert np.array_equal(view, vec) and view.dtype == np.float32 and not view.flags.writeable
    wide = rec.read_vector(RecordDict({rec.MODEL: rec.vector_record(vec.astype(np.float64))}), rec.MODEL)
    assert wide.dtype == np.float64 and np.array_equal(wide, vec)


def test_a_read_only_received_model_loads_into_the_model_exactly():
    task = tasks.get_task("synthetic-1e4")
    model = task.build_model()
    vec = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    view = rec.read_vector(RecordDict({rec.MODEL: rec.vector_record(vec)}), rec.MODEL)
    tasks.vector_to_model(model, view)
    assert np.array_equal(tasks.model_to_vector(model), vec)
    view_copy = view.copy()
    tasks.vector_to_model(model, np.zeros_like(vec))
    assert np.array_equal(view, view_copy)  # the source is only read


@pytest.mark.parametrize(("ring_bits", "bits"), [(32, 16), (64, 24)])
@pytest.mark.parametrize("public_total", [None, 77])
def test_the_chunked_weighted_mean_is_bit_for_bit_the_old_float64_path(ring_bits, bits, public_total):
    p = ProtocolParams(vector_length=100_003, ring_bits=ring_bits, bits=bits, max_members=10)
    total = np.empty(p.masked_length, dtype=p.dtype)
    signed = total[:-1].view(np.int32 if ring_bits == 32 else np.int64)
    signed[:] = np.random.default_rng(ring_bits).integers(-p.level * 500, p.level * 500, p.vector_length)
    total[-1] = 1234
    wx, w = dequantize(total, p, public_total)
    mean, weight = weighted_mean(total, p, public_total)
    assert weight == w and mean.dtype == np.float32
    assert np.array_equal(mean, (wx / w).astype(np.float32))
    total[-1] = 0
    assert weighted_mean(total, p, public_total) == (None, 0)


def test_fedavg_step_makes_one_vector_and_the_same_numbers():
    rng = np.random.default_rng(1)
    model, update = rng.normal(size=10_001).astype(np.float32), rng.normal(size=10_001).astype(np.float32)
    for lr in (1.0, 0.7):
        assert np.array_equal(FedAvg(lr).step(model, update), (model + lr * update).astype(np.float32))


def test_a_round_keeps_counting_as_completed_once_its_mean_update_is_released():
    res = RoundResult(1, np.zeros(3, dtype=np.float32))
    res.release_update()
    assert res.mean_update is None and res.completed
    assert not RoundResult(2, None, skipped="nobody").completed


def test_a_var_field_is_written_from_a_view_without_changing_the_bytes():
    vec = np.arange(1000, dtype=np.uint32)
    assert Writer().var(vec.data).getvalue() == Writer().var(vec.tobytes()).getvalue()
    assert Writer().var(memoryview(b"xyz")).getvalue() == b"\x03\x00\x00\x00xyz"


class _Grid:
    """Replies ready at once; records what each pull asked for."""

    def __init__(self, ready: dict[str, object]) -> None:
        self.ready, self.asked = ready, []

    def pull_messages(self, ids):
        self.asked.append(list(ids))
        return [self.ready.pop(i) for i in ids if i in self.ready]


def test_replies_of_d_coordinates_are_pulled_and_folded_one_at_a_time():
    ready = {f"m{i}": object() for i in range(3)}  # stand-ins for replies: only their order matters here
    waiting = {mid: i for i, mid in enumerate(ready)}
    grid, seen = _Grid(dict(ready)), []

    def fold(reply: object) -> None:
        seen.append((len(grid.asked), reply))

    assert _pull_and_fold(grid, waiting, fold, one=True) == 3
    assert grid.asked == [["m0"], ["m1"], ["m2"]]
    assert [k for k, _ in seen] == [1, 2, 3]  # each folded before the next pull
    grid = _Grid(dict(ready))
    assert _pull_and_fold(grid, waiting, lambda r: None) == 3 and grid.asked == [["m0", "m1", "m2"]]


@pytest.mark.parametrize("name", ["synthetic-1e4", "synthetic-1e7"])
def test_sized_synthetic_tasks_have_exactly_d_parameters(name):
    d = {"synthetic-1e4": 10**4, "synthetic-1e7": 10**7}[name]
    assert tasks.num_parameters(tasks.get_task(name).build_model()) == d


def test_a_big_protocol_message_travels_in_parts_and_comes_back_whole(monkeypatch):
    monkeypatch.setattr(rec, "PART_BYTES", 1000)
    msgs = [b"a" * 10, bytes(range(256)) * 20, b"", b"z" * 1000, b"y" * 1001]
    record = rec.protocol_record(msgs)
    assert sorted(record) == ["0", "1", "1.1", "1.2", "1.3", "1.4", "1.5", "2", "3", "4", "4.1"]
    assert rec.read_protocol(RecordDict({rec.PROTOCOL: record})) == msgs
    content = RecordDict({rec.PROTOCOL: rec.protocol_record(msgs)})
    assert [bytes(v) for v in rec.protocol_views(content)] == msgs
    assert sorted(content[rec.PROTOCOL]) == ["0", "2", "3"]  # the parts left the reply once copied


JOIN_PROBE = """
import time
from pathlib import Path
import numpy as np
from flwr.app import ConfigRecord, Message, Metadata, RecordDict
from fedloom import records as rec
from fedloom.malloc import return_big_buffers

return_big_buffers()
def status(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024
size = 64 << 20
raw = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
content = RecordDict({rec.PROTOCOL: rec.protocol_record([raw]), "c": ConfigRecord({"a": 1})})
del raw
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the kernel's peak (VmHWM) starts again from here
views = rec.protocol_views(content)
print((status("VmHWM") - before) / size, len(views[0]) == size)
"""


def test_joining_a_message_in_parts_holds_it_about_once():
    """The parts of a masked input are copied into one buffer and freed one by one; the buffer's
    pages must not all be resident before the first part goes (bytearray(n) zero-fills them: the
    message was held twice)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", JOIN_PROBE], capture_output=True, text=True, timeout=120, check=True)
    growth, whole = out.stdout.split()
    assert whole == "True"
    assert float(growth) < 0.5, f"peak grew by {growth} x the message while joining it"


def test_a_members_local_model_is_written_from_its_own_tensors_as_from_its_vector(tmp_path):
    """keep_trained writes the trainer's model without a d-long vector (model_arrays shares the
    model's memory; the hash is taken tensor by tensor); the tensors, metadata and card are those of the vector."""
    import torch

    import tasks
    from participant.models import LOCAL, ModelKeeper, named_tensors, read_card, tensors_hash, vector_hash

    task = tasks.get_task("charlm")
    torch.manual_seed(3)
    model = task.build_model()
    vector = tasks.model_to_vector(model)
    arrays = tasks.model_arrays(model)
    first = next(iter(model.state_dict().values()))
    assert np.shares_memory(next(iter(arrays.values())), first.numpy())
    assert tensors_hash(arrays) == vector_hash(vector) == tensors_hash(named_tensors(model, vector))
    assert all(np.shares_memory(v, vector) for v in named_tensors(model, vector).values())
    lineage = [{"round": 0, "sha256": "b" * 64, "plan_hash": "p" * 64}]
    by_vector, by_model = tmp_path / "v", tmp_path / "m"
    by_vector.mkdir()
    by_model.mkdir()
    ModelKeeper(by_vector, "charlm", "p" * 64, "spain", model).keep_local(vector, 1, lineage, {"steps": 1})
    ModelKeeper(by_model, "charlm", "p" * 64, "spain", model).keep_trained(1, lineage, {"steps": 1})
    from safetensors import safe_open

    files = [safe_open(str(where / f"{LOCAL}.safetensors"), "numpy") for where in (by_vector, by_model)]
    assert files[0].metadata() == files[1].metadata()  # (safetensors writes it in a hash map's order)
    names = list(files[0].keys())
    assert names == list(files[1].keys())
    assert all(np.array_equal(files[0].get_tensor(k), files[1].get_tensor(k)) for k in names)
    assert read_card(by_vector, LOCAL) == read_card(by_model, LOCAL)
