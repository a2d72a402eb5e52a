"""The Flower record layout both sides use (keys and small builders/parsers).

A training trip carries the global model as one flat float32 vector, the plan (with its hash)
and the round; a reply carries the update (local - global) or the protocol's messages, training
metrics, and the participant's evaluation of the model it received.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

MODEL = "model"  # ArrayRecord {"vector": float32[d]}
UPDATE = "update"  # ArrayRecord {"vector": float32[d]} (plaintext mode only)
CONFIG = "config"  # ConfigRecord: round, plan, plan-hash, flags
FIT = "fit"  # MetricRecord: num-examples, train-loss
EVAL = "eval"  # ConfigRecord: loss, accuracy, num-examples of the received model
PROTOCOL = "secagg"  # ConfigRecord: protocol messages as bytes, keyed by stage
MASKED = "masked"  # ArrayRecord {"vector": uint32/uint64[d+1]} (the masked input, big)
REFUSAL = "refusal"  # ConfigRecord: member, round, rule, detail
VECTOR = "vector"
NUM_EXAMPLES = "num-examples"


def vector_record(vec: np.ndarray) -> ArrayRecord:
    return ArrayRecord({VECTOR: Array(np.ascontiguousarray(vec))})


def read_vector(content: RecordDict, key: str) -> np.ndarray:
    return content[key][VECTOR].numpy()


def fit_metrics(num_examples: int, train_loss: float) -> MetricRecord:
    return MetricRecord({NUM_EXAMPLES: int(num_examples), "train-loss": float(train_loss)})


def eval_record(loss: float, accuracy: float, num_examples: int) -> ConfigRecord:
    return ConfigRecord({"loss": float(loss), "accuracy": float(accuracy), NUM_EXAMPLES: int(num_examples)})
