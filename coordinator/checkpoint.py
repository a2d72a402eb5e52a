"""Checkpoints: after every round, the global model and the optimizer state, written atomically.

Layout in the coordinator's state directory:
    checkpoints/round-000005.safetensors   model + optimizer tensors, metadata (round, plan hash)
    checkpoint.json                        {"round": 5, "file": ..., "epoch": 0, "plan_hash": ...}
The tensor file is written first (temp file + rename), then the pointer, so a crash at any moment
leaves either the previous checkpoint or the new one, never a torn one. `epoch` counts restarts:
a resumed run uses fresh protocol round numbers (epoch << 32 | round) so participants never see
a round number twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from .outputs import atomic_write_bytes, save_model

POINTER = "checkpoint.json"
KEEP = 2


@dataclass(frozen=True)
class Checkpoint:
    round: int
    epoch: int
    model: np.ndarray
    optimizer: dict[str, np.ndarray]
    rounds_completed: int


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
    """The newest checkpoint for this plan, or None (a different plan is an error, not a restart)."""
    pointer = state_dir / POINTER
    if not pointer.exists():
        return None
    info = json.loads(pointer.read_text())
    if info["plan_hash"] != plan_hash:
        raise ValueError(
            f"{state_dir} holds a checkpoint of another plan ({info['plan_hash'][:12]}); "
            "use a fresh state directory for a new plan"
        )
    tensors = load_file(state_dir / info["file"])
    optimizer = {k.removeprefix("optimizer."): v for k, v in tensors.items() if k.startswith("optimizer.")}
    return Checkpoint(
        int(info["round"]),
        int(info["epoch"]),
        tensors["model"],
        optimizer,
        int(info.get("rounds_completed", info["round"])),
    )
