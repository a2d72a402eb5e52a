"""Run outputs: metrics.jsonl (a row per round, written as rounds finish), summary.json, the
final model (safetensors) and accuracy.png. Files are written atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from fedloom.files import atomic_write, atomic_write_bytes

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOT = "accuracy.png"
MODEL = "model.safetensors"


def finite_or_null(obj: Any) -> Any:
    """`obj` with every NaN/Infinity float (inside dicts, lists, tuples) replaced by None.

    Python's json writes them as the bare words NaN and Infinity, which are not JSON: strict parsers
    (jq, JavaScript, most other languages) refuse the whole file. A diverged loss or a failed
    evaluation is "no number", which JSON spells null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    return obj


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON text that is valid for every parser: non-finite floats as null, and allow_nan=False to be sure."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (strict_json(obj, indent=2, sort_keys=False) + "\n").encode())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(strict_json(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_model(path: Path, tensors: np.ndarray | dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """A safetensors file, atomically (a bare vector is stored as "vector")."""
    if isinstance(tensors, np.ndarray):
        tensors = {"vector": tensors}
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def plot_run(out_dir: Path) -> Path:
    """accuracy.png: federated accuracy and loss per round, the centralized baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in read_jsonl(out_dir / METRICS) if r.get("eval_accuracy") is not None]
    summary = json.loads((out_dir / SUMMARY).read_text()) if (out_dir / SUMMARY).exists() else {}
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [r["round"] for r in rows]
    ax_acc.plot(rounds, [r["eval_accuracy"] for r in rows], marker="o", ms=3, label="federated (test)")
    ax_loss.plot(rounds, [r["eval_loss"] for r in rows], marker="o", ms=3, label="federated eval loss")
    train = [(r["round"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if train:
        ax_loss.plot(*zip(*train, strict=True), ls="--", label="local train loss")
    base = summary.get("centralized_baseline")
    if base:
        ax_acc.axhline(base["accuracy"], color="grey", ls=":", label=f"centralized {base['accuracy']:.3f}")
        if base.get("loss") is not None:
            ax_loss.axhline(base["loss"], color="grey", ls=":", label="centralized loss")
    secure = "secure aggregation" if summary.get("secure_aggregation") else "PLAINTEXT aggregation"
    fig.suptitle(f"{summary.get('scenario', '')} — {summary.get('task', '')}, {secure}")
    ax_acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1))
    ax_loss.set(xlabel="round", ylabel="loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out_dir / PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
