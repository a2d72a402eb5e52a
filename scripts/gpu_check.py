"""Participant training on a GPU: `--device auto` takes CUDA, and a CUDA round matches a CPU round.

Runs one participant's local round of each scenario's task on the CPU and on `resolve_device("auto")`
from the same global model and seed, then prints a table: the device auto chose, seconds per round
(a warm-up round first), the training loss, and how far the CUDA update lies from the CPU update
(relative L2; kernels differ, so not bit-identical). Needs only torch, numpy and scikit-learn — no
Flower — so it runs on a bare GPU machine:

    python scripts/gpu_check.py [--json out.json] [scenario.toml ...]

Exit status 1 when auto did not pick CUDA on a machine that has it, or a CUDA update strays more
than --tolerance (relative) from the CPU update.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402
from participant.device import resolve_device  # noqa: E402
from participant.local_data import simulated  # noqa: E402
from participant.trainer import LocalTrainer  # noqa: E402
from simulations.scenario import parse_scenario  # noqa: E402

DEFAULT_SCENARIOS = ["simulations/default.toml", "simulations/tapestry.toml"]


def trainer_on(plan, device: torch.device) -> LocalTrainer:
    """Participant 0's trainer; its freshly built model is the federation's initial model (same seed)."""
    return LocalTrainer(plan, simulated(plan.task, 0, plan.participants), device)


def one_round(trainer: LocalTrainer, base: np.ndarray, repeats: int) -> tuple[np.ndarray, float, float]:
    """(update, median seconds per round after a warm-up, training loss)."""
    device = trainer.device
    trainer.train(base, 1, 1)  # warm-up: CUDA context, cuDNN autotune, data on the device
    times, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = trainer.train(base, 1, 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return result.update, float(np.median(times)), result.train_loss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", default=DEFAULT_SCENARIOS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.05, help="largest relative L2 distance CUDA vs CPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    auto = resolve_device("auto")
    has_cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA available: {has_cuda}; --device auto -> {auto}")
    if has_cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    ok = auto.type == ("cuda" if has_cuda else "cpu")
    rows = []
    for path in args.scenarios:
        plan = parse_scenario((ROOT / path).read_bytes()).plan
        cpu_trainer = trainer_on(plan, torch.device("cpu"))
        base = tasks.model_to_vector(cpu_trainer.model)
        cpu_update, cpu_s, cpu_loss = one_round(cpu_trainer, base, args.repeats)
        row = {"scenario": path, "task": plan.task.name, "params": int(base.size), "cpu_s": cpu_s, "cpu_loss": cpu_loss}
        if auto.type == "cuda":
            gpu_update, gpu_s, gpu_loss = one_round(trainer_on(plan, auto), base, args.repeats)
            rel = float(np.linalg.norm(gpu_update - cpu_update) / max(np.linalg.norm(cpu_update), 1e-12))
            row.update(gpu_s=gpu_s, gpu_loss=gpu_loss, speedup=cpu_s / gpu_s, update_rel_l2=rel)
            ok &= rel <= args.tolerance and bool(np.isfinite(gpu_update).all())
        rows.append(row)
    heads = [("cpu s", 7), ("gpu s", 7), ("x", 6), ("loss cpu", 9), ("loss gpu", 9), ("rel L2", 8)]
    print(f"{'scenario':34} {'task':9} {'params':>9} " + " ".join(f"{h:>{w}}" for h, w in heads))
    for r in rows:
        g = (
            f"{r['gpu_s']:7.3f} {r['speedup']:6.1f} {r['cpu_loss']:9.4f} {r['gpu_loss']:9.4f} {r['update_rel_l2']:8.2e}"
            if "gpu_s" in r
            else f"{'-':>7} {'-':>6} {r['cpu_loss']:9.4f} {'-':>9} {'-':>8}"
        )
        print(f"{r['scenario']:34} {r['task']:9} {r['params']:9d} {r['cpu_s']:7.3f} {g}")
    if args.json:
        args.json.write_text(json.dumps({"auto": str(auto), "rows": rows, "ok": ok}, indent=2))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
