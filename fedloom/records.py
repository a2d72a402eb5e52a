"""The Flower record layout both sides use: every record key, and typed encoders/decoders.

A training trip carries the global model as one flat float32 vector, the plan (with its hash)
and the round; a reply carries the update (local - global) or the protocol's messages, training
metrics, and the participant's evaluation of the model it received.

Every key a record carries is named here and nowhere else (tests/test_records.py checks it); the
other modules build and read records through the typed classes below (`Who`, `FitReport`,
`EvalReport`, `RefusalReport`, `request_config`). The bytes on the wire are those of earlier
versions, except that a protocol message over PART_BYTES (4 MiB: a masked input once d is above
about a million) now travels in parts (`protocol_record`): a coordinator reads an earlier member's
reply, an earlier coordinator cannot read a new member's big masked input (a run uses one app
bundle on every side, pinned by hash, so versions do not mix within a federation).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SType

from fedloom.array_pickling import pickle_arrays_out_of_band

pickle_arrays_out_of_band()  # Ray (the Simulation Engine) then moves these records' arrays without copying

MODEL = "model"  # ArrayRecord {"vector": float32[d]}
UPDATE = "update"  # ArrayRecord {"vector": float32[d]} (plaintext mode only)
CONFIG = "config"  # ConfigRecord: round, plan, plan-hash, flags
FIT = "fit"  # MetricRecord: FitReport (num-examples, train-loss, clipped, probe-loss)
EVAL = "eval"  # ConfigRecord: EvalReport (loss, accuracy, num-examples) of the received model
PROTOCOL = "secagg"  # ArrayRecord {"0": uint8[...], "1": ...}: encoded protocol messages, in order
# (a message over PART_BYTES travels in parts: "i" holds its first PART_BYTES, "i.1", "i.2", ... the rest)
REFUSAL = "refusal"  # ConfigRecord: RefusalReport (member, round, rule, detail): a policy refusal
WHO = "who"  # ConfigRecord: Who (member, examples when public, ledger-head)
SECAGG_ACTION = "query.secagg"  # message type of trips that only carry protocol messages
VECTOR = "vector"
NUM_EXAMPLES = "num-examples"  # FedAvg's weight key (coordinator.plain) as well as the reports'

# keys of a request's CONFIG record
ROUND = "round"
PLAN = "plan"  # the plan's canonical JSON
PLAN_HASH = "plan-hash"
LEDGER = "ledger"  # ledger entries the member lacks, one JSON line each (coordinator.ledger_feed)
# simulation only: a deployed member never reads these (a coordinator's config cannot make it act on them)
SIM_KITS = "sim-kits"  # directory of the simulated members' kits
SIM_MODELS = "sim-models"  # where simulated members keep their N+1 models
SIM_VERIFY = "sim-verify"  # where simulated members leave the true update for the harness
SIM_GARBAGE_DEALER = "sim-garbage-dealer"  # "<round>:<member>": that member deals garbage shares

# keys inside the records below
_MEMBER, _EXAMPLES, _LEDGER_HEAD = "member", "examples", "ledger-head"
_TRAIN_LOSS, _CLIPPED, _PROBE_LOSS = "train-loss", "clipped", "probe-loss"
_LOSS, _ACCURACY = "loss", "accuracy"
_RULE, _DETAIL = "rule", "detail"


def protocol_round(training_round: int, attempt: int = 0, restart: int = 0) -> int:
    """The protocol's round number for a training round: never reused, even across set-up retries
    (attempt, < 16) and coordinator restarts (restart epoch in the high 32 bits)."""
    return (restart << 32) | (training_round << 4) | attempt


def training_round(protocol_round_: int) -> int:
    return (protocol_round_ & 0xFFFFFFFF) >> 4


def model_digest(vector: np.ndarray) -> bytes:
    """SHA-256 of a model vector's float32 bytes: what a member trained on, bound into what it signs
    (the same digest, hex, as a model card's `sha256`)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32)).digest()  # the buffer, not a copy of it


def vector_record(vec: np.ndarray) -> ArrayRecord:
    return ArrayRecord({VECTOR: Array(np.ascontiguousarray(vec))})


def read_vector(content: RecordDict, key: str) -> np.ndarray:
    """The record's vector: a read-only view into the message's own bytes when it is a plain 1-D
    float32 .npy (Flower's `.numpy()` would copy the d floats), else Flower's copy."""
    array = content[key][VECTOR]
    view = _npy_view(array, np.dtype(np.float32))
    return view if view is not None else array.numpy()


# 4 MiB: with its .npy header a part fits one Flower chunk (5 MiB), so rebuilding it on arrival
# copies 4 MiB twice, not 16 (0.8 x 4d at d = 10^7 with 16 MiB parts). In a simulation the reply
# crosses Ray out of band (fedloom.array_pickling) and the coordinator reads it in place, so there a
# message travels whole: parts would only add the join's copy (measured at d = 10^8 with the
# reply out of band: 16 MiB parts 4.52 x 4d above idle for the coordinator process, whole 3.01).
PART_BYTES = 4 << 20


def protocol_record(encoded: list[bytes], whole: bool = False) -> ArrayRecord:
    """Protocol messages in their own byte encoding, as uint8 arrays (Flower chunks each for the wire).

    A message over PART_BYTES (a masked input: 4d bytes) is cut into arrays of that size, unless
    `whole` (simulation) keeps every message in one array. Flower's deployment pull rebuilds each received array
    with passing copies of it, so a receiver that takes one big array in holds about three times
    the message at once; in parts it holds the message and copies of one part. Smaller messages
    keep the layout of earlier versions (one array each, keys "0", "1", ...)."""
    size = max([1, *(len(raw) for raw in encoded)]) if whole else PART_BYTES
    arrays: dict[str, Array] = {}
    for i, raw in enumerate(encoded):
        view = memoryview(raw)
        for j, start in enumerate(range(0, max(len(view), 1), size)):
            arrays[str(i) if j == 0 else f"{i}.{j}"] = _uint8_array(view[start : start + size])
    return ArrayRecord(arrays)


def _part_keys(record: ArrayRecord) -> list[list[str]]:
    """The keys of each message's parts, in order: [["0"], ["1", "1.1", "1.2"], ...]."""
    out = []
    for i in range(sum(1 for k in record if "." not in k)):
        keys = [str(i)]
        while f"{i}.{len(keys)}" in record:
            keys.append(f"{i}.{len(keys)}")
        out.append(keys)
    return out


def _uint8_array(raw: bytes | memoryview) -> Array:
    """`Array(np.frombuffer(raw, dtype=np.uint8))` byte for byte (np.save's .npy: a 1.0 header, then
    the bytes), built with one copy of `raw` where np.save into a buffer makes two."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (len(raw),)})
    return Array(dtype="uint8", shape=(len(raw),), stype=SType.NUMPY, data=header.getvalue() + raw)


def read_protocol(content: RecordDict) -> list[bytes]:
    if PROTOCOL not in content:
        return []
    record = content[PROTOCOL]
    return [b"".join(record[k].numpy().tobytes() for k in keys) for keys in _part_keys(record)]


def protocol_views(content: RecordDict, max_bytes: int | None = None) -> list[bytes | memoryview]:
    """`read_protocol` without copies, for the coordinator: a masked input is 4d bytes, and Flower's
    `Array.numpy()` copies it once and `.tobytes()` again. Each message is a read-only view into the
    record's own buffer (kept alive by the view) once its .npy header says uint8, 1-D and the exact
    length; anything else takes the copying path, which decodes (or refuses) it as before.

    A message in parts is copied once, into one buffer of its size, each part taken out of the
    record (and so freed) as soon as it is in: the reply holds the message once, not twice. Parts
    adding up to over `max_bytes` are refused (ValueError) before anything is allocated: a sender
    can name one small stored array as every part of a message of any length."""
    if PROTOCOL not in content:
        return []
    record = content[PROTOCOL]
    out: list[bytes | memoryview] = []
    for keys in _part_keys(record):
        if max_bytes is not None and sum(len(record[k].data) for k in keys) > max_bytes:  # data: what is held
            raise ValueError(f"a protocol message in {len(keys)} parts is longer than {max_bytes} bytes")
        out.append(_uint8_view(record[keys[0]]) if len(keys) == 1 else _joined(record, keys))
    return out


def _joined(record: ArrayRecord, keys: list[str]) -> memoryview:
    views = [_uint8_view(record[k]) for k in keys]
    # np.empty, not bytearray(n): bytearray zero-fills, so every page of the buffer was resident
    # before the first part was in and freed (the message twice at once); these pages arrive as
    # the parts leave
    buf = np.empty(sum(len(v) for v in views), dtype=np.uint8)
    at = 0
    for k in keys:
        part = views.pop(0)
        buf[at : at + len(part)] = part
        at += len(part)
        del part, record[k]  # this part's bytes go now
    buf.flags.writeable = False
    return memoryview(buf)


def _uint8_view(array: Array) -> bytes | memoryview:
    view = _npy_view(array, np.dtype(np.uint8))
    return memoryview(view) if view is not None else array.numpy().tobytes()


NPY_HEADER_MAX = 64 * 1024  # a longer .npy header (never written here) takes the copying path


def _npy_view(array: Array, want: np.dtype) -> np.ndarray | None:
    """A read-only 1-D view of an Array's .npy bytes when its header says exactly `want`, 1-D, C order
    and the length the bytes hold; None otherwise (the caller then takes Flower's copying path)."""
    data = array.data  # bytes, or a read-only view of Ray's object store (fedloom.array_pickling)
    if array.stype != SType.NUMPY or not isinstance(data, bytes | memoryview):
        return None
    f = io.BytesIO(memoryview(data)[:NPY_HEADER_MAX])  # BytesIO copies a view: only the header's bytes
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with contextlib.suppress(ValueError):
        version = np.lib.format.read_magic(f)
        if version in read:
            shape, fortran, dtype = read[version](f)
            start = f.tell()
            if dtype == want and len(shape) == 1 and not fortran and start + shape[0] * want.itemsize == len(data):
                return np.frombuffer(data, dtype=want, offset=start)
    return None


def request_config(round_: int, plan_json: str, plan_hash: str, extra: Mapping[str, Any] = ()) -> ConfigRecord:
    """A request's CONFIG: the training round, the plan and its hash, then `extra` (ledger, sim-*)."""
    cfg: dict[str, Any] = {ROUND: round_, PLAN: plan_json, PLAN_HASH: plan_hash}
    cfg.update(extra)
    return ConfigRecord(cfg)


@dataclass(frozen=True)
class Who:
    """Who replies, and what it declares publicly: its training examples (None when the plan keeps
    sizes private) and how many ledger entries its own copy holds (None before it holds any)."""

    member: int
    examples: int | None = None
    ledger_head: int | None = None

    def to_record(self) -> ConfigRecord:
        who: dict[str, int] = {_MEMBER: int(self.member)}
        if self.examples is not None:
            who[_EXAMPLES] = int(self.examples)
        if self.ledger_head is not None:
            who[_LEDGER_HEAD] = int(self.ledger_head)
        return ConfigRecord(who)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Who:
        examples, head = record.get(_EXAMPLES), record.get(_LEDGER_HEAD)
        return cls(
            int(record[_MEMBER]),
            None if examples is None else int(examples),
            None if head is None else int(head),
        )

    @classmethod
    def of(cls, content: RecordDict) -> Who | None:
        """The reply's Who, if it carries one."""
        return cls.from_record(content[WHO]) if WHO in content else None


@dataclass(frozen=True)
class FitReport:
    """What local training reports to the coordinator: `examples` is the FedAvg weight of the
    train loss (1 when the plan keeps sizes private), `clipped` the update coordinates the
    quantizer clipped (secure aggregation; 0 in plaintext), `probe_loss` the local model's score on
    the plan's public probe set (contribution policies only)."""

    examples: int
    train_loss: float
    clipped: int = 0
    probe_loss: float | None = None

    def to_metrics(self) -> MetricRecord:
        m: dict[str, int | float] = {
            NUM_EXAMPLES: int(self.examples),
            _TRAIN_LOSS: float(self.train_loss),
            _CLIPPED: int(self.clipped),
        }
        if self.probe_loss is not None:
            m[_PROBE_LOSS] = float(self.probe_loss)
        return MetricRecord(m)

    @classmethod
    def from_metrics(cls, record: Mapping[str, Any]) -> FitReport:
        probe = record.get(_PROBE_LOSS)
        return cls(
            int(record[NUM_EXAMPLES]),
            float(record[_TRAIN_LOSS]),
            int(record.get(_CLIPPED, 0)),
            None if probe is None else float(probe),
        )

    @staticmethod
    def mean_train_loss(metrics: Mapping[str, Any]) -> float:
        """The train loss from metrics Flower's FedAvg aggregated (weighted by num-examples)."""
        return float(metrics[_TRAIN_LOSS])


@dataclass(frozen=True)
class EvalReport:
    """A member's evaluation of the model it received (examples: 1 when sizes are private)."""

    loss: float
    accuracy: float
    examples: int

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {_LOSS: float(self.loss), _ACCURACY: float(self.accuracy), NUM_EXAMPLES: int(self.examples)}
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> EvalReport:
        return cls(float(record[_LOSS]), float(record[_ACCURACY]), int(record[NUM_EXAMPLES]))


@dataclass(frozen=True)
class RefusalReport:
    """A member's policy refusal of a round (the detail is cut to 1000 characters on the wire)."""

    member: int
    round: int
    rule: str
    detail: str

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {_MEMBER: int(self.member), ROUND: int(self.round), _RULE: self.rule, _DETAIL: self.detail[:1000]}
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RefusalReport:
        return cls(int(record[_MEMBER]), int(record[ROUND]), str(record[_RULE]), str(record[_DETAIL]))
