"""A member's kept models as Hugging Face model directories (`fedloom participant export`).

After a deployment on a language-model task (tasks/hflm.py) a member holds, under
`<state-dir>/models/`, the last shared base it received and its own model (its sovereign build if it
made one with `fedloom participant sovereign`, else its local model after the last training trip;
participant/models.py). This writes them as

    <out>/shared-base/   the shared base
    <out>/<member>/      this member's own model

each a plain transformers directory (LoRA merged into a copy of the base) with the base's tokenizer
and a model card (tasks/hf_export.py) naming the base pin, the vector's SHA-256 (for the shared base
the ledger's `model_hash`), the lineage this member kept, the members, the rounds, whether secure
aggregation was on. Simulations export the same way (simulations/hf_models.py). Nothing leaves the
member's machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.errors import UserError
from fedloom.plan import Plan

from .models import BASE, LOCAL, SOVEREIGN, read_model, vector_hash

log = logging.getLogger("fedloom.participant")
SHARED = "shared-base"


def hf_task(task_ref: str) -> Any:
    """The plan's task, if it exports HF directories (an hflm task), else None."""
    import tasks

    task = tasks.get_task(task_ref)
    return task if callable(getattr(task, "transformers_model", None)) else None


def card_facts(task: Any, plan: Plan, members: tuple[str, ...], secure: bool) -> dict[str, Any]:
    """What every card of a federation's exports states: task, base and its pin, rounds, members."""
    return {
        "task": task.ref,
        "mode": task.mode,
        "base": task.base,
        "base_sha256": task.source().sha256,
        "rounds": plan.rounds,
        "secure_aggregation": secure,
        "plan_hash": plan.hash,
        "members": members,
    }


def write_hf_dir(task: Any, vector: np.ndarray, out: Path, facts: dict[str, Any], **fields: Any) -> str:
    """One HF directory: the vector into a task model, merged into a plain transformers model."""
    import tasks
    from tasks.hf_export import ExportCard, save_pretrained_dir

    model = task.build_model()
    tasks.vector_to_model(model, vector)
    card = ExportCard(sha256=vector_hash(vector), **facts, **fields)
    save_pretrained_dir(task.transformers_model(model), task.hf_tokenizer(), out, card)
    return str(out)


def lineage(card: dict[str, Any] | None) -> tuple[str, ...]:
    """The SHA-256 of every shared base a kept card says this member received, in order."""
    return tuple(e["sha256"] for e in (card or {}).get("lineage", []))


def export_member(kit_dir: Path, state_dir: Path, out: Path, force: bool = False) -> dict[str, str]:
    """Write `<out>/shared-base` and `<out>/<member>` from this member's kept models; returns
    `{name: directory}`. One-line UserErrors for a task without HF exports, nothing kept yet, or an
    output that exists (unless `force`)."""
    import torch

    from fedloom.kits import load_member_kit

    member = load_member_kit(kit_dir)
    plan, name = member.plan, member.member.name
    task = hf_task(plan.task.ref)
    if task is None:
        raise UserError(f"the plan's task {plan.task.name!r} is not a language-model task: nothing to export as HF")
    models = state_dir / "models"
    if not (models / f"{BASE}.safetensors").is_file():
        raise UserError(f"no shared base in {models}: this node has not finished a training round yet")
    targets = {SHARED: out / SHARED, name: out / name}
    taken = [str(p) for p in targets.values() if p.exists() and any(p.iterdir())]
    if taken and not force:
        raise UserError(f"{', '.join(taken)} already exist; give --force to write over them")
    torch.set_num_threads(1)
    try:
        task.source()  # the base must still hash to the plan's pin (it is read again to build each model)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    facts = card_facts(task, plan, tuple(m.name for m in member.roster.members), plan.secure.enabled)
    base = read_model(models, BASE, task.build_model())
    written = {
        SHARED: write_hf_dir(
            task, base.vector, targets[SHARED], facts, title=f"{plan.task.name}: shared base (as {name} received it)",
            kind="shared base", lineage=lineage(base.card),
        )
    }  # fmt: skip
    kind = next((k for k in (SOVEREIGN, LOCAL) if (models / f"{k}.safetensors").is_file()), None)
    if kind is None:
        log.warning("%s kept no model of its own in %s: only the shared base is exported", name, models)
        return written
    own = read_model(models, kind, task.build_model())
    written[name] = write_hf_dir(
        task, own.vector, targets[name], facts, title=f"{plan.task.name}: {name}'s {kind} model", kind=kind,
        member=name, lineage=lineage(own.card),
    )  # fmt: skip
    return written
