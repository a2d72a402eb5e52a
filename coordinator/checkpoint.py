"""Checkpoints: after every round, the global model and the optimizer state, written atomically.

Layout in the coordinator's state directory:
    checkpoints/round-000005.safetensors   model + optimizer tensors, metadata (round, plan hash)
    checkpoint.json                        {"round": 5, "file": ..., "epoch": 0, "plan_hash": ...}
The tensor file is written first (temp file + rename), then the pointer, so a crash at any moment
leaves either the previous checkpoint or the new one, never a torn one. `epoch` counts restarts:
a resumed run uses fresh protocol round numbers (epoch << 32 | round) so participants never see
a round number twice.

A checkpoint is not signed, the ledger is: before a resume, `attest` checks the checkpoint's model
against the model hash the signed ledger records for its round (`fedloom.ledger.signed_models`).
The driver writes a round's ledger entry BEFORE its checkpoint, so the ledger is never behind the
checkpoints; a crash between the two leaves the ledger one round ahead, which the resume entry
takes back (that round is redone). Anything else (a changed byte, a checkpoint of another round, a
cut-off ledger, lost checkpoints) is refused with one line: `CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from fedloom.errors import UserError
from fedloom.files import atomic_write_bytes

from .outputs import save_model

POINTER = "checkpoint.json"
KEEP = 2


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not match the signed ledger: never resumed from."""


@dataclass(frozen=True)
class Checkpoint:
    round: int
    epoch: int
    model: np.ndarray
    optimizer: dict[str, np.ndarray]
    rounds_completed: int
    path: Path | None = None  # the tensor file it was read from


def model_hash(model: np.ndarray) -> str:
    """The ledger's `model_hash`: SHA-256 of the float32 parameter vector."""
    return hashlib.sha256(np.ascontiguousarray(model, dtype=np.float32)).hexdigest()  # no copy


def save(
    state_dir: Path,
    plan_hash: str,
    round_: int,
    epoch: int,
    model: np.ndarray,
    optimizer: dict[str, np.ndarray],
    rounds_completed: int,
) -> Path:
    folder = state_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{round_:06d}.safetensors"
    tensors = {"model": model, **{f"optimizer.{k}": v for k, v in optimizer.items()}}
    save_model(path, tensors, {"round": str(round_), "plan_hash": plan_hash})
    pointer = {
        "round": round_,
        "epoch": epoch,
        "file": str(path.relative_to(state_dir)),
        "plan_hash": plan_hash,
        "rounds_completed": rounds_completed,
    }
    atomic_write_bytes(state_dir / POINTER, (json.dumps(pointer, indent=2) + "\n").encode())
    for old in sorted(folder.glob("round-*.safetensors"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load(state_dir: Path, plan_hash: str) -> Checkpoint | None:
    """The newest checkpoint for this plan, or None (a different plan is an error, not a restart).

    An unreadable pointer or tensor file is a CheckpointError (one line), not a parser's traceback."""
    pointer = state_dir / POINTER
    if not pointer.exists():
        return None
    info = _read_pointer(pointer)
    if info["plan_hash"] != plan_hash:
        raise CheckpointError(
            f"{state_dir} holds a checkpoint of another plan ({info['plan_hash'][:12]}); "
            "use a fresh state directory for a new plan"
        )
    path = state_dir / info["file"]
    tensors = _read_tensors(path)
    optimizer = {k.removeprefix("optimizer."): v for k, v in tensors.items() if k.startswith("optimizer.")}
    return Checkpoint(
        int(info["round"]),
        int(info["epoch"]),
        tensors["model"],
        optimizer,
        int(info.get("rounds_completed", info["round"])),
        path,
    )


def _read_pointer(pointer: Path) -> dict:
    try:
        info = json.loads(pointer.read_text())
        if not isinstance(info, dict) or not {"round", "epoch", "file", "plan_hash"} <= info.keys():
            raise ValueError("fields are missing")
        int(info["round"]), int(info["epoch"])
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint pointer {pointer} is unreadable or corrupt ({_why(exc)})") from None
    return info


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({_why(exc)})") from None
    if "model" not in tensors or tensors["model"].dtype != np.float32 or tensors["model"].ndim != 1:
        raise CheckpointError(f"checkpoint {path} is corrupt (no float32 model vector in it)")
    return tensors


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def attest(ckpt: Checkpoint | None, models: dict[int, str | None], ledger: Path, initial: np.ndarray | None) -> None:
    """Resume only from the model the signed ledger says is current; CheckpointError (one line) otherwise.

    `models` is `fedloom.ledger.signed_models` of the coordinator's verified ledger. The checkpoint's round c
    (0: none, start from `initial`, the plan's initial model) must have the ledger's hash for round c, and the
    ledger may be at most one round ahead (a crash between its entry and the checkpoint). `initial` None skips
    the round-0 hash (not computed).
    """
    done = max(models) if models else 0
    c = ckpt.round if ckpt else 0
    where = ckpt.path if ckpt else "the initial model"
    if c not in models:
        raise CheckpointError(
            f"checkpoint {where} is for round {c}, but the signed ledger {ledger} ends after round {done}: "
            "the ledger was cut off or the checkpoint is not this federation's; refusing to resume"
        )
    if done > c + 1:
        raise CheckpointError(
            f"the signed ledger {ledger} records rounds up to {done}, but the newest checkpoint is "
            f"{'round ' + str(c) if ckpt else 'missing'}: checkpoints were lost or rolled back; refusing to resume"
        )
    model = ckpt.model if ckpt else initial
    signed = models[c]
    if model is None or signed is None:
        return  # round 0 without a pinned initial model (older ledger)
    actual = model_hash(model)
    if actual != signed:
        raise CheckpointError(
            f"checkpoint {where} does not match the signed ledger: model hash {actual}, "
            f"but {ledger} records {signed} after round {c}; refusing to resume"
        )


def load_attested(
    state_dir: Path, plan_hash: str, ledger: Path, public_key: bytes, initial: np.ndarray | None = None
) -> tuple[Checkpoint | None, dict[int, str | None]]:
    """The newest checkpoint (None: start from `initial`) once `attest` accepts it, and the ledger's signed models.

    The ledger is verified first against the coordinator's own key (a broken ledger is a CheckpointError too).
    """
    from fedloom.ledger import LedgerError, read_verified, signed_models

    ckpt = load(state_dir, plan_hash)
    if not ledger.exists():
        if ckpt is not None:
            raise CheckpointError(f"checkpoint {ckpt.path} has no ledger {ledger} to check it against; refusing")
        return None, {}
    try:
        models = signed_models(read_verified(ledger, public_key))
    except LedgerError as exc:
        raise CheckpointError(f"cannot check the checkpoint against the ledger: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the ledger {ledger}: {exc.strerror or exc}") from None
    attest(ckpt, models, ledger, initial)
    return ckpt, models
