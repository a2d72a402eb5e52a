"""What a run directory keeps about how it was made: the plan it ran, the software versions, when.

A summary.json read months later (or sent to a colleague) must say which fedloom, Flower, torch
and Python produced it and under which plan, without anyone remembering; and it must explain the
figures a reader cannot guess, such as `exactness`.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from fedloom.files import atomic_write_bytes
from fedloom.plan import Plan

PLAN_COPY = "plan.json"

EXACTNESS_NOTE = (
    "largest |secure mean - plaintext mean| over all coordinates and rounds, in model units, where the "
    "plaintext mean is recomputed out of band from the members' true updates as the round aggregated them "
    "(clipped to secure.clip, with the weights actually used: public contribution weights, or example counts "
    "capped at max_weight); null when not verified (plaintext mode, or a deployment without verification). "
    "Below one quantization step (secure.clip / (2^(bits-1) - 1)) the secure sum is exact up to rounding"
)


def versions() -> dict[str, str]:
    """The software that made the run: fedloom, flwr, torch, numpy, python."""
    found = {"python": platform.python_version()}
    for name in ("fedloom", "flwr", "torch", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def keep_plan(out_dir: Path, plan: Plan) -> None:
    """The exact plan of the run (its canonical JSON, whose SHA-256 is the plan hash) beside its outputs."""
    atomic_write_bytes(out_dir / PLAN_COPY, (plan.canonical_json() + "\n").encode())
