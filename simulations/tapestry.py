"""The consortium report ("Tapestry"): what each member gets out of training together.

After a federated run on a language task (charlm: each member holds the text of a few languages)
this module trains the comparisons and writes `report.json`, `report.md` and `tapestry.png`:
per-language held-out bits per character (bpc) of

- the **shared base**: the federation's final model (every member received it);
- each member's **sovereign** model: the base fine-tuned on the member's own data for
  `[report] sovereign_steps` steps (participant/sovereign.py, the same code a deployed member runs);
- each member **alone**: the same model trained only on that member's data, from the same
  initialisation, with the same optimizer and the same local budget the member spent in the
  federation (rounds x local steps), no early stopping;
- a **centralized** model on the members' pooled text (the union of their data; a language nobody
  holds is not in it), same initialisation, optimizer and budget — rounds x local steps, the
  definition of simulations/baseline.py.

The two questions a consortium asks are answered as computed facts: does the shared base beat
every member-alone model on the other members' languages, and is its average bpc (unweighted mean
over the languages the members hold) within 10 % of the centralized model's. The shared base's
quality per round comes from the federation's own evaluation (each member scores the model it
received on its held-out text; metrics.jsonl), converted exactly to pooled bpc, and
`python -m simulations.tapestry compare RUN RUN` turns two runs (e.g. FedAvg and DiLoCo) into a
"rounds to reach the same quality" table.

Baselines and sovereign builds are member-local or offline compute: they run here, after the
federation, in a few worker processes (one CPU thread each), never inside the secure rounds.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.plan import Plan

from .scenario import Scenario

REPORT_JSON, REPORT_MD, PLOT = "report.json", "report.md", "tapestry.png"
TARGET_RATIO = 1.10  # "within 10 % of the centralized model"
BASE, CENTRAL, INITIAL = "shared base", "centralized", "initial model"


# ---------------------------------------------------------------- jobs (run in worker processes)
@dataclass(frozen=True)
class Job:
    """One model to train (or fine-tune) and score on every language's held-out text."""

    kind: str  # "initial" | "base" | "centralized" | "alone" | "sovereign"
    plan_json: str
    member: str = ""  # for alone / sovereign
    member_index: int = -1  # 0-based partition id
    steps: int = 0
    epochs: int = 0
    lr: float = 0.0
    source: str = ""  # base: the run's model file; sovereign: the member's model folder
    save_to: str = ""  # where to write the model (baselines), "" = do not
    languages: tuple[str, ...] = ()  # the held-out languages to score; () = every language

    @property
    def label(self) -> str:
        return {"initial": INITIAL, "base": BASE, "centralized": CENTRAL}.get(self.kind, f"{self.kind}:{self.member}")


def _member_data(plan: Plan, index: int):
    from participant.local_data import simulated

    return simulated(plan.task, index, plan.participants).train


def _pooled_data(plan: Plan):
    """The union of the members' training data (what a centralized trainer would be handed)."""
    import tasks

    pool = tasks.load_pool(plan.task.ref, seed=plan.task.seed)
    labels = tasks.resolve_groups(plan.task.ref, plan.task.group_labels())
    held = sorted({label for group in labels for label in group})
    return pool.subset(np.flatnonzero(np.isin(pool.y, held)))


def run_job(job: Job) -> dict[str, Any]:
    """Train/load one model and score it: {label, bpc: {language: bits per char}, seconds, sha256}."""
    import torch

    import tasks
    from participant.models import named_tensors, vector_hash
    from participant.sovereign import SovereignSpec, build_from_directory
    from participant.trainer import train_config

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    plan = Plan.from_json(job.plan_json)
    task = tasks.get_task(plan.task.ref)
    device = torch.device("cpu")
    if job.kind == "initial":
        from coordinator.driver import initial_model

        vector = initial_model(plan)
    elif job.kind == "base":
        from safetensors.numpy import load_file

        vector = load_file(job.source)["vector"]
    elif job.kind == "sovereign":
        spec = SovereignSpec.from_plan(plan, job.steps, job.lr)
        vector, _ = build_from_directory(Path(job.source), task, _member_data(plan, job.member_index), spec)
    else:
        data = _pooled_data(plan) if job.kind == "centralized" else _member_data(plan, job.member_index)
        torch.manual_seed(plan.seed)  # the federation's initial model (coordinator.driver.initial_model)
        model = task.build_model()
        cfg = train_config(plan, plan.seed, epochs=max(1, job.epochs), steps=job.steps)
        task.train(model, data, cfg, device)
        vector = tasks.model_to_vector(model)
    model = task.build_model()
    tasks.vector_to_model(model, vector)
    test = tasks.load_test(plan.task.ref, seed=plan.task.seed)
    if job.languages:
        test = test.subset(np.flatnonzero(np.isin(test.y, [task.label_index(c) for c in job.languages])))
    bpc = task.bits_per_char(model, test, device)
    if job.save_to:
        from safetensors.numpy import save_file

        Path(job.save_to).parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": job.kind, "task": plan.task.name, "plan_hash": plan.hash, "member": job.member}
        meta |= {"steps": str(job.steps), "sha256": vector_hash(vector)}
        save_file(named_tensors(model, vector), job.save_to, metadata=meta)
    return {
        "label": job.label,
        "kind": job.kind,
        "member": job.member,
        "bpc": bpc,
        "seconds": round(time.perf_counter() - t0, 2),
        "sha256": vector_hash(vector),
        **({"steps": job.steps} if job.kind not in ("initial", "base") else {}),
    }


def run_jobs(jobs: list[Job], workers: int, note: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every job, in `workers` spawned processes (the longest first); results in `jobs` order."""
    if workers <= 1:
        return [run_job(j) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -(jobs[i].steps or 0))
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that ran Ray and torch
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_job, jobs[i]): i for i in order}
        for done, fut in enumerate(as_completed(futures), 1):
            i = futures[fut]
            results[i] = fut.result()
            if note:
                note(f"report: {results[i]['label']} done ({done}/{len(jobs)})")
    return [r for r in results if r is not None]


# ---------------------------------------------------------------- the report
def budget(plan: Plan) -> dict[str, Any]:
    """The local budget each member spent in the federation: every baseline gets the same."""
    t = plan.training
    if t.steps:
        return {"steps": plan.rounds * t.steps, "epochs": 0, "unit": "steps"}
    return {"steps": 0, "epochs": plan.rounds * t.epochs, "unit": "epochs"}


def unit_counts(plan: Plan) -> dict[str, tuple[int, int]]:
    """Per language: (scored units, characters) of its held-out windows, from the task's own
    ``scored_units`` (units: bytes for charlm, tokens for the hflm tasks): what converts the
    federation's loss (nats per scored unit) to bits per character."""
    import tasks

    task = tasks.get_task(plan.task.ref)
    return task.scored_units(tasks.load_test(plan.task.ref, seed=plan.task.seed))


def pooled(bpc: dict[str, float], languages: list[str], counts: dict[str, tuple[int, int]]) -> float:
    """Bits per character over `languages` together (each weighted by its characters)."""
    chars = sum(counts[c][1] for c in languages)
    return sum(bpc[c] * counts[c][1] for c in languages) / chars


def base_curve(out_dir: Path, plan: Plan, held: list[str], counts: dict[str, tuple[int, int]]) -> list[dict]:
    """Pooled bpc of the shared base after each round, from the federation's own evaluation.

    Row r of metrics.jsonl holds the members' evaluation of the model after round r, as nats per
    scored unit (byte or token) over their held-out text; with every member answering that is exactly
    the pooled nats/unit over the held languages, so bpc = loss x units / chars / ln 2. Rows where not every
    member answered are left out (the conversion would not be exact).
    """
    from coordinator.outputs import METRICS, read_jsonl

    units = sum(counts[c][0] for c in held)
    chars = sum(counts[c][1] for c in held)
    curve = []
    for row in read_jsonl(out_dir / METRICS):
        if row.get("eval_loss") is None or row.get("eval_participants", 0) < plan.participants:
            continue
        curve.append(
            {"round": int(row["round"]), "pooled_bpc": round(row["eval_loss"] * units / chars / math.log(2), 4)}
        )
    return curve


def rounds_to(curve: list[dict], target: float) -> int | None:
    """The first round after which the shared base's pooled bpc is at or below `target`."""
    return next((p["round"] for p in curve if p["pooled_bpc"] <= target), None)


def build_report(
    scenario: Scenario, out_dir: Path, summary: dict[str, Any], note: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train the baselines and sovereign models, score everything, write the report; returns a
    short summary (paths and the two checks) for summary.json."""
    from tasks.charlm import LANGUAGES

    t0 = time.perf_counter()
    plan, spec = scenario.plan, scenario.report
    names, countries = scenario.member_names(), scenario.member_countries()
    groups = [list(g) for g in plan.task.group_labels()]
    held = [c for c in LANGUAGES if any(c in g for g in groups)]
    unheld = [c for c in LANGUAGES if c not in held] if spec.unheld else []
    scored = () if spec.unheld else tuple(held)
    b = budget(plan)
    members_dir = out_dir / "members"
    pj = plan.canonical_json()
    jobs = [Job("initial", pj), Job("base", pj, source=str(out_dir / "model.safetensors"))]
    if spec.centralized:
        jobs.append(Job("centralized", pj, steps=b["steps"], epochs=b["epochs"], save_to=_bl(out_dir, "centralized")))
    if spec.alone:
        for i, name in enumerate(names):
            jobs.append(Job("alone", pj, name, i, b["steps"], b["epochs"], save_to=_bl(out_dir, f"alone-{name}")))
    if spec.sovereign_steps:
        for i, name in enumerate(names):
            folder = members_dir / name
            if (folder / "base.safetensors").exists():
                jobs.append(
                    Job("sovereign", pj, name, i, spec.sovereign_steps, lr=spec.sovereign_lr, source=str(folder))
                )
            elif note:
                note(f"report: {name} kept no final base (dropped out?): no sovereign build")
    jobs = [replace(j, languages=scored) for j in jobs]
    workers = spec.workers or os.cpu_count() or 1
    results = run_jobs(jobs, min(workers, len(jobs)), note)
    counts = unit_counts(plan)
    rows = []
    for r in results:
        bpc = {c: round(float(r["bpc"][c]), 4) for c in LANGUAGES if c in r["bpc"]}
        rows.append(
            {
                **{k: r[k] for k in ("label", "kind", "member", "seconds", "sha256")},
                **({"steps": r["steps"]} if "steps" in r else {}),
                "bpc": bpc,
                "mean_held": round(float(np.mean([bpc[c] for c in held])), 4),
                "pooled_held": round(pooled(bpc, held, counts), 4),
            }
        )
    by_label = {r["label"]: r for r in rows}
    curve = base_curve(out_dir, plan, held, counts)
    members = [
        {
            "name": n,
            "country": c,
            "languages": g,
            "examples": len(_member_data(plan, i)),
            "final_base_matches": _final_base_matches(members_dir / n, by_label[BASE]["sha256"]),
        }
        for i, (n, c, g) in enumerate(zip(names, countries, groups, strict=True))
    ]
    report = {
        "scenario": scenario.name,
        "task": plan.task.name,
        "strategy": {"name": plan.strategy.name, "server_lr": plan.strategy.server_lr},
        "plan_hash": plan.hash,
        "secure_aggregation": summary.get("secure_aggregation"),
        "rounds": plan.rounds,
        "budget": {
            **b,
            "local_steps_per_round": plan.training.steps,
            "optimizer": plan.training.optimizer,
            "lr": plan.training.lr,
            "keep_optimizer_state": plan.training.keep_optimizer_state,
            "sovereign_steps": spec.sovereign_steps,
            "sovereign_lr": spec.sovereign_lr or plan.training.lr,
            "definition": (
                "each member-alone model and the centralized model get the local budget one member spent in the "
                "federation (rounds x local steps), the same initial model, optimizer and learning rate; no early "
                "stopping; the centralized model trains on the union of the members' training text"
            ),
        },
        "members": members,
        "languages": [c for c in LANGUAGES if c in held or c in unheld],
        "held_languages": held,
        "unheld_languages": unheld,
        "models": rows,
        "curve": curve,
        "federation_wall_seconds": summary.get("wall_seconds"),
    }
    report["checks"] = checks(report)
    report["report_seconds"] = round(time.perf_counter() - t0, 1)
    from coordinator.outputs import write_json

    write_json(out_dir / REPORT_JSON, report)
    (out_dir / REPORT_MD).write_text(markdown(report))
    plot(report, out_dir / PLOT)
    return {
        "report": str(out_dir / REPORT_MD),
        "plot": str(out_dir / PLOT),
        "checks": {k: {"pass": v["pass"], "summary": v["summary"]} for k, v in report["checks"].items()},
    }


def _bl(out_dir: Path, name: str) -> str:
    return str(out_dir / "baselines" / f"{name}.safetensors")


def _final_base_matches(folder: Path, sha256: str) -> bool | None:
    card = folder / "base.json"
    if not card.exists():
        return None
    return json.loads(card.read_text()).get("sha256") == sha256


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's two done-criteria, as facts with their numbers."""
    rows = {r["label"]: r for r in report["models"]}
    base = rows[BASE]
    out: dict[str, dict[str, Any]] = {}
    if INITIAL in rows:
        out["base_improves_every_members_languages"] = _improves(report, rows[INITIAL], base)
    alone = [r for r in report["models"] if r["kind"] == "alone"]
    if alone:
        langs_of = {m["name"]: set(m["languages"]) for m in report["members"]}
        cells = []
        for r in alone:
            others = [c for m, ls in langs_of.items() if m != r["member"] for c in sorted(ls)]
            cells += [(r["member"], c, r["bpc"][c] - base["bpc"][c]) for c in others]
        worst = min(cells, key=lambda t: t[2])
        ok = all(margin > 0 for _, _, margin in cells)
        out["base_beats_alone_on_other_languages"] = {
            "pass": ok,
            "cells": len(cells),
            "cells_won": sum(1 for *_, m in cells if m > 0),
            "smallest_margin": {"member": worst[0], "language": worst[1], "bpc_alone_minus_base": round(worst[2], 4)},
            "summary": f"{sum(1 for *_, m in cells if m > 0)}/{len(cells)} member-alone x other-language cells won by "
            f"the base; smallest margin {worst[2]:+.3f} bpc ({worst[0]} alone on {worst[1]})",
        }
    if CENTRAL in rows:
        ratio = base["mean_held"] / rows[CENTRAL]["mean_held"]
        out["base_within_10pct_of_centralized"] = {
            "pass": ratio <= TARGET_RATIO,
            "base_mean_bpc": base["mean_held"],
            "centralized_mean_bpc": rows[CENTRAL]["mean_held"],
            "ratio": round(ratio, 4),
            "pooled_ratio": round(base["pooled_held"] / rows[CENTRAL]["pooled_held"], 4),
            "summary": f"mean bpc over the members' languages: base {base['mean_held']:.3f} vs centralized "
            f"{rows[CENTRAL]['mean_held']:.3f} = x{ratio:.3f} (limit x{TARGET_RATIO:.2f})",
        }
    return out


def _improves(report: dict[str, Any], initial: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Every member's own languages: lower bpc with the shared base than with the initial model
    (for a pretrained base in LoRA mode, the initial model IS the pretrained base: adapters start at 0)."""
    cells = [(m["name"], c, initial["bpc"][c] - base["bpc"][c]) for m in report["members"] for c in m["languages"]]
    worst = min(cells, key=lambda t: t[2])
    won = sum(1 for *_, gain in cells if gain > 0)
    return {
        "pass": won == len(cells),
        "cells": len(cells),
        "cells_won": won,
        "smallest_gain": {"member": worst[0], "language": worst[1], "bpc_initial_minus_base": round(worst[2], 4)},
        "summary": f"{won}/{len(cells)} member x own-language cells improved over the initial model; smallest gain "
        f"{worst[2]:+.3f} bpc ({worst[0]} on {worst[1]})",
    }


# ---------------------------------------------------------------- markdown and plot
def _order(report: dict[str, Any]) -> list[dict[str, Any]]:
    rank = {"initial": 0, "base": 1, "centralized": 2, "sovereign": 3, "alone": 4}
    names = [m["name"] for m in report["members"]]
    return sorted(
        report["models"], key=lambda r: (rank[r["kind"]], names.index(r["member"]) if r["member"] in names else -1)
    )


def markdown(report: dict[str, Any]) -> str:
    langs = report["held_languages"] + report["unheld_languages"]
    own = {m["name"]: set(m["languages"]) for m in report["members"]}
    b = report["budget"]
    lines = [
        f"# Tapestry report: {report['scenario']}",
        "",
        f"Task `{report['task']}`, {len(report['members'])} members, {report['rounds']} rounds, outer optimizer "
        f"`{report['strategy']['name']}` (server lr {report['strategy']['server_lr']}), secure aggregation "
        f"{'on' if report['secure_aggregation'] else 'OFF'}; plan `{report['plan_hash'][:16]}`.",
        "",
        "| member | country | languages | training windows | kept the final base |",
        "|---|---|---|---:|---|",
    ]
    for m in report["members"]:
        kept = {True: "yes (hash matches)", False: "MISMATCH", None: "no"}[m["final_base_matches"]]
        lines.append(f"| {m['name']} | {m['country']} | {', '.join(m['languages'])} | {m['examples']} | {kept} |")
    lines += [
        "",
        f"Budget: {b['steps'] or b['epochs']} local {b['unit']} per member ({report['rounds']} rounds x "
        f"{b['local_steps_per_round']} steps, {b['optimizer']} lr {b['lr']}); {b['definition']}. Sovereign builds: "
        f"{b['sovereign_steps']} steps at lr {b['sovereign_lr']} from the final base.",
        "",
        "## Held-out bits per character (lower is better; **bold** = the member's own languages)",
        "",
        "| model | " + " | ".join(langs) + " | mean (held) | pooled (held) |",
        "|---|" + "---:|" * (len(langs) + 2),
    ]
    for r in _order(report):
        cells = []
        for c in langs:
            v = f"{r['bpc'][c]:.2f}"
            cells.append(f"**{v}**" if r["member"] and c in own.get(r["member"], ()) else v)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['mean_held']:.3f} | {r['pooled_held']:.3f} |")
    if report["unheld_languages"]:
        lines += ["", f"Languages no member holds: {', '.join(report['unheld_languages'])} (not in any average)."]
    lines += ["", "## Checks", ""]
    for name, c in report["checks"].items():
        lines.append(f"- {'PASS' if c['pass'] else 'FAIL'} `{name}`: {c['summary']}")
    sov = [r for r in report["models"] if r["kind"] == "sovereign"]
    if sov:
        base = next(r for r in report["models"] if r["kind"] == "base")
        lines += ["", "## Sovereign builds on their own languages", ""]
        lines += ["| member | base (own, mean) | sovereign (own, mean) | alone (own, mean) |", "|---|---:|---:|---:|"]
        alone = {r["member"]: r for r in report["models"] if r["kind"] == "alone"}
        for r in sov:
            mine = sorted(own[r["member"]])

            def avg(row: dict[str, Any], ls: list[str] = mine) -> str:
                return f"{np.mean([row['bpc'][c] for c in ls]):.3f}"

            a = avg(alone[r["member"]]) if r["member"] in alone else "-"
            lines.append(f"| {r['member']} | {avg(base)} | {avg(r)} | {a} |")
    if report["curve"]:
        every = max(1, math.ceil(len(report["curve"]) / 13))
        c = [p for i, p in enumerate(report["curve"]) if i % every == 0 or i == len(report["curve"]) - 1]
        lines += [
            "",
            "## Shared base per round (pooled bpc over the members' held-out text, from federated evaluation)",
            "",
            "| round | " + " | ".join(str(p["round"]) for p in c) + " |",
            "|---|" + "---:|" * len(c),
            "| bpc | " + " | ".join(f"{p['pooled_bpc']:.3f}" for p in c) + " |",
        ]
        central = next((r for r in report["models"] if r["kind"] == "centralized"), None)
        if central:
            target = central["pooled_held"] * TARGET_RATIO
            reached = rounds_to(report["curve"], target)
            lines += [
                "",
                f"Centralized model: {central['pooled_held']:.3f} pooled bpc; the shared base is within 10 % of it "
                f"(<= {target:.3f}) " + (f"from round {reached} on." if reached is not None else "in no round."),
            ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """Heat map (rows = models, columns = languages, own languages outlined) and the base's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    langs = report["held_languages"] + report["unheld_languages"]
    rows = _order(report)
    own = {m["name"]: set(m["languages"]) for m in report["members"]}
    values = np.array([[r["bpc"][c] for c in langs] for r in rows])
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(15, 0.45 * len(rows) + 2.5), gridspec_kw={"width_ratios": [3.2, 1]}, constrained_layout=True
    )
    # a log scale: the interesting differences are among the good cells (3-5 bpc), not the 30s
    vmin, vmax = float(values.min()), max(float(np.percentile(values, 90)), float(values.min()) * 1.5)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    im = ax.imshow(values, cmap="viridis_r", norm=norm, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(langs):
            v = values[i, j]
            dark = norm(min(v, vmax)) > 0.6
            ax.text(
                j,
                i,
                f"{v:.2f}" if v < 10 else f"{v:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "k",
            )
            if r["member"] and c in own.get(r["member"], ()):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.6))
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    if report["unheld_languages"]:
        ax.axvline(len(report["held_languages"]) - 0.5, color="k", lw=1)
    ax.set_title("held-out bits per character (red box: the member's own languages; right of the line: nobody's)")
    bar = fig.colorbar(im, ax=ax, shrink=0.8, label="bpc (lower is better, log scale)")
    ticks = [t for t in (2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 15, 20, 30, 40) if vmin <= t <= vmax]
    bar.ax.minorticks_off()
    bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    curve = report["curve"]
    if curve:
        ax2.plot([p["round"] for p in curve], [p["pooled_bpc"] for p in curve], marker="o", ms=3, label="shared base")
    central = next((r for r in report["models"] if r["kind"] == "centralized"), None)
    if central:
        ax2.axhline(central["pooled_held"], color="grey", ls=":", label="centralized")
        ax2.axhline(central["pooled_held"] * TARGET_RATIO, color="grey", ls="--", lw=0.8, label="centralized x 1.1")
    ax2.set(xlabel="round", ylabel="pooled bpc (members' languages)", title="shared base per round")
    if curve:
        ax2.set_ylim(top=min(max(p["pooled_bpc"] for p in curve), 2 * curve[-1]["pooled_bpc"]) + 0.1)
    ax2.grid(alpha=0.3)
    ax2.legend()
    secure = "secure aggregation" if report["secure_aggregation"] else "PLAINTEXT aggregation"
    fig.suptitle(f"{report['scenario']}: {report['strategy']['name']}, {report['rounds']} rounds, {secure}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- FedAvg vs DiLoCo
def compare(run_dirs: list[Path]) -> str:
    """A markdown table: rounds each run needs to reach the same quality (from their report.json)."""
    reports = [json.loads((Path(d) / REPORT_JSON).read_text()) for d in run_dirs]
    finals = [r["curve"][-1]["pooled_bpc"] for r in reports if r["curve"]]
    common = max(finals)
    central = [next((m["pooled_held"] for m in r["models"] if m["kind"] == "centralized"), None) for r in reports]
    central_ref = min(c for c in central if c is not None) if any(c is not None for c in central) else None
    targets = [("the worse final value", common)]
    if central_ref is not None:
        targets.append(("centralized x 1.1", central_ref * TARGET_RATIO))
    head = "| run | outer optimizer | local steps x rounds | final pooled bpc | " + " | ".join(
        f"rounds to <= {t:.3f} ({name})" for name, t in targets
    )
    lines = [head + " | federation s |", "|---|---|---|---:|" + "---:|" * len(targets) + "---:|"]
    for d, r in zip(run_dirs, reports, strict=True):
        s, b = r["strategy"], r["budget"]
        reach = [rounds_to(r["curve"], t) for _, t in targets]
        lines.append(
            f"| {Path(d).name} | {s['name']} (lr {s['server_lr']}) | {b['local_steps_per_round']} x {r['rounds']} | "
            f"{r['curve'][-1]['pooled_bpc']:.3f} | "
            + " | ".join("not reached" if x is None else str(x) for x in reach)
            + f" | {r.get('federation_wall_seconds', '-')} |"
        )
    note = "Pooled bpc of the shared base over the members' held-out text after each round (federated evaluation)."
    if central_ref is not None:
        note += f" Centralized model (same budget): {central_ref:.3f}."
    return "\n".join(lines) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "compare":
        print("usage: python -m simulations.tapestry compare RUN_DIR RUN_DIR [...]", file=sys.stderr)
        return 2
    print(compare([Path(a) for a in argv[1:]]), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
