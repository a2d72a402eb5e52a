"""The Flower record layout both sides use (keys and small builders/parsers).

A training trip carries the global model as one flat float32 vector, the plan (with its hash)
and the round; a reply carries the update (local - global) or the protocol's messages, training
metrics, and the participant's evaluation of the model it received.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

MODEL = "model"  # ArrayRecord {"vector": float32[d]}
UPDATE = "update"  # ArrayRecord {"vector": float32[d]} (plaintext mode only)
CONFIG = "config"  # ConfigRecord: round, plan, plan-hash, flags
FIT = "fit"  # MetricRecord: num-examples, train-loss
EVAL = "eval"  # ConfigRecord: loss, accuracy, num-examples of the received model
PROTOCOL = "secagg"  # ArrayRecord {"0": uint8[...], "1": ...}: encoded protocol messages, in order
REFUSAL = "refusal"  # ConfigRecord: member, round, rule, detail (a policy refusal)
SECAGG_ACTION = "query.secagg"  # message type of trips that only carry protocol messages
VECTOR = "vector"
NUM_EXAMPLES = "num-examples"


def protocol_round(training_round: int, attempt: int = 0, restart: int = 0) -> int:
    """The protocol's round number for a training round: never reused, even across set-up retries
    (attempt, < 16) and coordinator restarts (restart epoch in the high 32 bits)."""
    return (restart << 32) | (training_round << 4) | attempt


def training_round(protocol_round_: int) -> int:
    return (protocol_round_ & 0xFFFFFFFF) >> 4


def model_digest(vector: np.ndarray) -> bytes:
    """SHA-256 of a model vector's float32 bytes: what a member trained on, bound into what it signs
    (the same digest, hex, as a model card's `sha256`)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).digest()


def vector_record(vec: np.ndarray) -> ArrayRecord:
    return ArrayRecord({VECTOR: Array(np.ascontiguousarray(vec))})


def read_vector(content: RecordDict, key: str) -> np.ndarray:
    return content[key][VECTOR].numpy()


def protocol_record(encoded: list[bytes]) -> ArrayRecord:
    """Protocol messages in their own byte encoding, as uint8 arrays (big ones travel chunked)."""
    return ArrayRecord({str(i): Array(np.frombuffer(b, dtype=np.uint8)) for i, b in enumerate(encoded)})


def read_protocol(content: RecordDict) -> list[bytes]:
    if PROTOCOL not in content:
        return []
    record = content[PROTOCOL]
    return [record[str(i)].numpy().tobytes() for i in range(len(record))]


def fit_metrics(num_examples: int, train_loss: float, clipped: int = 0) -> MetricRecord:
    return MetricRecord({NUM_EXAMPLES: int(num_examples), "train-loss": float(train_loss), "clipped": int(clipped)})


def refusal_record(member: int, round_: int, rule: str, detail: str) -> ConfigRecord:
    return ConfigRecord({"member": int(member), "round": int(round_), "rule": rule, "detail": detail[:1000]})


def eval_record(loss: float, accuracy: float, num_examples: int) -> ConfigRecord:
    return ConfigRecord({"loss": float(loss), "accuracy": float(accuracy), NUM_EXAMPLES: int(num_examples)})
