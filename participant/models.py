"""The N+1 outcome on a member's machine: the shared base it received and its own local model.

A consortium member leaves every round with two models, not one: the shared base the coordinator
sent (what every member got) and its local model after training on its own data. At the end it can
also make a *sovereign* model (participant/sovereign.py: the final base fine-tuned on its own data).
Each is kept as a safetensors file of named tensors (the task model's ``state_dict`` names, so
``model.load_state_dict`` takes it) plus a small JSON model card:

    base.safetensors  base.json        the latest shared base received
    local.safetensors local.json       the local model after the latest training trip
    sovereign.safetensors sovereign.json

A card names the task, the round, the plan hash, the model's SHA-256 and the *lineage*: the
SHA-256 of every shared base this member received under this plan, in order. The hash is the one
the coordinator's ledger records as ``model_hash`` (SHA-256 of the float32 parameter vector), so a
member can match its lineage against the signed history. Only the latest of each kind is kept (a
model is ~0.5 MB here, but real ones are not), and every file is replaced atomically, so a crash
never leaves a half-written model next to a card that describes another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import tasks
from fedloom.files import atomic_write, atomic_write_bytes

BASE, LOCAL, SOVEREIGN = "base", "local", "sovereign"
KINDS = (BASE, LOCAL, SOVEREIGN)
CARD_VERSION = 1


def vector_hash(vector: np.ndarray) -> str:
    """SHA-256 of the float32 parameter vector: the coordinator's ledger `model_hash`."""
    return tensors_hash({"vector": vector})


def named_tensors(model: torch.nn.Module, vector: np.ndarray) -> dict[str, np.ndarray]:
    """`vector` cut into the model's floating-point ``state_dict`` entries (the order of tasks.params)."""
    vector = np.asarray(vector, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        n = tensor.numel()
        out[name] = vector[offset : offset + n].reshape(tuple(tensor.shape))  # a view: the writer reads it
        offset += n
    if offset != vector.size:
        raise ValueError(f"parameter vector has {vector.size} entries, but the model needs {offset}")
    return out


def vector_of(model: torch.nn.Module, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The inverse of :func:`named_tensors`: every float ``state_dict`` entry must be present, same shape."""
    parts = []
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if name not in tensors:
            raise ValueError(f"tensor {name!r} is missing from the file")
        arr = np.asarray(tensors[name], dtype=np.float32)
        if arr.shape != tuple(tensor.shape):
            raise ValueError(f"tensor {name!r} has shape {arr.shape}, the model needs {tuple(tensor.shape)}")
        parts.append(arr.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class Saved:
    """What :func:`read_model` returns: the tensors as stored, the flat vector and the card."""

    tensors: dict[str, np.ndarray]
    vector: np.ndarray
    card: dict[str, Any]


OWNER_ONLY = 0o600  # a member's models and cards derive from its private data


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode(), mode=OWNER_ONLY)


def write_model(directory: Path, kind: str, model: torch.nn.Module, vector: np.ndarray, card: dict[str, Any]) -> Path:
    """`<directory>/<kind>.safetensors` and `<kind>.json` (the card; its `sha256` is filled in here).

    The model file goes first: a card never describes a file that is not there yet.
    """
    return write_tensors(directory, kind, named_tensors(model, vector), card)


def write_tensors(directory: Path, kind: str, tensors: dict[str, np.ndarray], card: dict[str, Any]) -> Path:
    """:func:`write_model` from the named float32 tensors themselves (views into a vector or into
    a model: nothing d-long is copied); `sha256` is that of their concatenation in this order,
    which is the parameter vector's (:func:`vector_hash`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    directory = Path(directory)
    card = {"card_version": CARD_VERSION, "kind": kind, **card, "sha256": tensors_hash(tensors)}
    card["parameters"] = int(sum(t.size for t in tensors.values()))
    metadata = {k: str(card[k]) for k in ("kind", "task", "round", "plan_hash", "sha256") if k in card}
    path = directory / f"{kind}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), mode=OWNER_ONLY)
    write_json(directory / f"{kind}.json", card)
    return path


def tensors_hash(tensors: dict[str, np.ndarray]) -> str:
    """:func:`vector_hash` of the tensors' concatenation, without making it."""
    digest = hashlib.sha256()
    for tensor in tensors.values():
        digest.update(np.ascontiguousarray(tensor, dtype=np.float32))  # no copy for a float32 view
    return digest.hexdigest()


def read_card(directory: Path, kind: str) -> dict[str, Any] | None:
    path = Path(directory) / f"{kind}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def read_model(directory: Path, kind: str, model: torch.nn.Module) -> Saved:
    """Load `<kind>.safetensors` and its card; refuses a file whose hash is not the card's."""
    directory = Path(directory)
    tensors = load_file(str(directory / f"{kind}.safetensors"))
    vector = vector_of(model, tensors)
    card = read_card(directory, kind) or {}
    if card.get("sha256") and card["sha256"] != vector_hash(vector):
        raise ValueError(f"{directory / kind}.safetensors does not match the SHA-256 in its card")
    return Saved(tensors, vector, card)


def lineage_after(previous: dict[str, Any] | None, plan_hash: str, after_round: int, digest: str) -> list[dict]:
    """The lineage once the base `digest` (the model after round `after_round`) has arrived.

    A card of another plan starts a new lineage; a base received again for the same round (a
    coordinator that restarted and resent it) replaces that round's entry instead of adding one.
    """
    lineage = list(previous.get("lineage", [])) if previous and previous.get("plan_hash") == plan_hash else []
    lineage = [e for e in lineage if int(e["after_round"]) < after_round]
    lineage.append({"after_round": int(after_round), "sha256": digest})
    return lineage


class ModelKeeper:
    """Keeps one member's N+1 models in `directory` as training trips arrive."""

    def __init__(self, directory: Path, task: str, plan_hash: str, member: str, model: torch.nn.Module) -> None:
        self.directory, self.task, self.plan_hash, self.member, self.model = (
            Path(directory),
            task,
            plan_hash,
            member,
            model,
        )

    def _card(self, **extra: Any) -> dict[str, Any]:
        return {"task": self.task, "plan_hash": self.plan_hash, "member": self.member, **extra}

    def keep_base(self, vector: np.ndarray, after_round: int) -> list[dict]:
        """The shared base received after round `after_round` (0 = the initial model); returns the lineage."""
        lineage = lineage_after(read_card(self.directory, BASE), self.plan_hash, after_round, vector_hash(vector))
        card = self._card(round=int(after_round), lineage=lineage)
        write_model(self.directory, BASE, self.model, vector, card)
        return lineage

    def keep_local(self, vector: np.ndarray, round_: int, lineage: list[dict], training: dict[str, Any]) -> None:
        """This member's model after training in round `round_`, started from the last base in `lineage`."""
        write_model(self.directory, LOCAL, self.model, vector, self._local_card(round_, lineage, training))

    def keep_trained(self, round_: int, lineage: list[dict], training: dict[str, Any]) -> None:
        """:meth:`keep_local` of the keeper's model as it is right after training, written from its
        own tensors (`tasks.model_arrays`): no d-long vector is made."""
        card = self._local_card(round_, lineage, training)
        write_tensors(self.directory, LOCAL, tasks.model_arrays(self.model), card)

    def _local_card(self, round_: int, lineage: list[dict], training: dict[str, Any]) -> dict[str, Any]:
        return self._card(round=int(round_), lineage=lineage, derived_from=lineage[-1]["sha256"], training=training)
