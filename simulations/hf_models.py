"""The N+1 models of a run on a Hugging Face LM task, as HF model directories the ecosystem loads.

After a simulation on an hflm task (tasks/hflm.py) this writes

    <out>/hf/shared-base/   the federation's final model (model.safetensors of the run)
    <out>/hf/<member>/      each member's own model: its sovereign build if it made one, else its
                            local model after the last training trip (members/<member>/)

each with config, safetensors weights, the base's tokenizer and a model card (tasks/hf_export.py)
stating the base and its pinned SHA-256, the rounds, the SHA-256 of the exported parameter vector
(participant.models.vector_hash: for the shared base the ledger's ``model_hash``), the lineage a
member kept in its base.json card, the members, whether secure aggregation was on, the languages
and, when the run has a report, the model's held-out bits per character from it. LoRA adapters are
merged into a copy of the base's weights (HFCausalLMTask.transformers_model), so the export is a
plain LlamaForCausalLM (or whatever the base is) that vLLM or SGLang can serve.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.plan import Plan
from participant.hf_export import SHARED, card_facts, hf_task, lineage, write_hf_dir

from .scenario import Scenario

HF_DIR = "hf"


def is_hf_task(plan: Plan) -> bool:
    """Whether the plan's task can export HF model directories (the hflm tasks)."""
    return hf_task(plan.task.ref) is not None


def export_run(
    scenario: Scenario, out_dir: Path, summary: dict[str, Any], note: Callable[[str], None] | None = None
) -> dict[str, str]:
    """Write ``<out>/hf/shared-base`` and ``<out>/hf/<member>`` for every member that kept a model;
    returns ``{name: directory}`` for summary.json."""
    import torch
    from safetensors.numpy import load_file

    import tasks
    from participant.models import LOCAL, SOVEREIGN, read_card, read_model

    torch.set_num_threads(1)
    plan = scenario.plan
    task = tasks.get_task(plan.task.ref)
    report = _report(out_dir)
    names, groups = scenario.member_names(), [list(g) for g in plan.task.group_labels()]
    facts = card_facts(task, plan, tuple(names), bool(summary.get("secure_aggregation")))
    written: dict[str, str] = {}
    final = load_file(str(out_dir / "model.safetensors"))["vector"]
    held = sorted({c for g in groups for c in g})
    shared_lineage = next((lineage(c) for n in names if (c := read_card(out_dir / "members" / n, "base"))), ())
    written[SHARED] = write_hf_dir(
        task, final, out_dir / HF_DIR / SHARED, facts, title=f"{scenario.name}: shared base", kind="shared base",
        languages=tuple(held), lineage=shared_lineage, metrics=_metrics(report, "base", "", held),
    )  # fmt: skip
    for name, langs in zip(names, groups, strict=True):
        folder = out_dir / "members" / name
        kind = next((k for k in (SOVEREIGN, LOCAL) if (folder / f"{k}.safetensors").is_file()), None)
        if kind is None:
            if note:
                note(f"hf export: {name} kept no model (dropped out?): not exported")
            continue
        saved = read_model(folder, kind, task.build_model())
        written[name] = write_hf_dir(
            task, saved.vector, out_dir / HF_DIR / name, facts, title=f"{scenario.name}: {name}'s {kind} model",
            kind=kind, member=name, languages=tuple(langs), lineage=lineage(saved.card),
            metrics=_metrics(report, kind, name, langs),
        )  # fmt: skip
    if note:
        note(f"hf export: {len(written)} model directories under {out_dir / HF_DIR}")
    return written


def _report(out_dir: Path) -> dict[str, Any] | None:
    from .tapestry import REPORT_JSON

    path = out_dir / REPORT_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def _metrics(report: dict[str, Any] | None, kind: str, member: str, languages: list[str]) -> dict[str, float]:
    """The model's held-out bpc on ``languages`` (and their mean) from the run's report, if it has that row."""
    if report is None:
        return {}
    row = next((r for r in report["models"] if r["kind"] == kind and r["member"] == member), None)
    if row is None:
        return {}
    out = {f"bpc {c} (held-out)": float(row["bpc"][c]) for c in languages if c in row["bpc"]}
    if out:
        out["bpc mean over these languages"] = float(np.mean(list(out.values())))
    return out
