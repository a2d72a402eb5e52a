"""The round loop: train -> aggregate (plain or secure) -> outer optimizer -> record.

The aggregation backend is swappable (PlainRounds, SecureRounds: a `RoundBackend`); the loop does not
care which, it only sees a RoundResult with the mean update. Federated evaluation of the model sent
in round r rides on round r's trip, so the metrics row of round r-1 is completed by round r. The run
ends with a `RunSummary` (summary.json).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from flwr.serverapp import Grid

import tasks
from fedloom.plan import Plan
from protocol.roster import Roster

from . import checkpoint, outputs, provenance
from .backend import RoundBackend
from .checkpoint import model_hash
from .journal import FOREIGN_HISTORY_RULES, Journal
from .ledger_feed import LedgerFeed
from .optimizers import OuterOptimizer, make_optimizer
from .plain import PlainRounds
from .results import EvalSummary, RoundResult
from .secure import RunHooks, SecureRounds
from .stop import STOP, RunInterrupted, signal_name
from .summary import Interruption, RunRefused, RunSummary
from .transport import wait_for_nodes

log = logging.getLogger("fedloom.coordinator")


class RunObserver(Protocol):
    def started(self, plan: Plan, nodes: int) -> None: ...
    def round_done(self, row: dict[str, Any]) -> None: ...
    def finished(self, summary: RunSummary) -> None: ...


class LogObserver:
    """Progress as log lines (what `flwr run` shows)."""

    def started(self, plan: Plan, nodes: int) -> None:
        log.info("fedloom: %d rounds, %d participants connected, plan %s", plan.rounds, nodes, plan.hash[:12])

    def round_done(self, row: dict[str, Any]) -> None:
        log.info("round %s done in %.1f s: train loss %s", row["round"], row["wall_seconds"], row.get("train_loss"))

    def finished(self, summary: RunSummary) -> None:
        log.info("fedloom: final accuracy %s, outputs in %s", summary.final.accuracy, summary.out_dir)


@dataclass
class RunSettings:
    plan: Plan
    out_dir: Path
    scenario: str = "custom"
    node_wait: float = 300.0
    observer: RunObserver = field(default_factory=LogObserver)
    roster: Roster | None = None  # the federation's members (required for secure aggregation)
    hooks: RunHooks = field(default_factory=RunHooks)
    state_dir: Path | None = None  # deployment: checkpoints (resume) live here
    ledger: Any = None  # deployment: a fedloom.ledger.LedgerWriter recording every round
    cleanup: Any = None  # called when the run ends (e.g. to delete a throwaway federation's keys)
    # round 0's vector where the caller built it already (deployment: to pin its hash in a new ledger);
    # the run takes it over (`_starting_point`), so it is built once and not held here past round 1
    initial: np.ndarray | None = None


def initial_model(plan: Plan) -> np.ndarray:
    """The federation's round-0 vector, from the plan's seed (`Task.initial_model`: in LoRA mode the
    adapters alone, without loading the base's weights)."""
    torch.manual_seed(plan.seed)
    return tasks.model_to_vector(tasks.get_task(plan.task.ref).initial_model())


@dataclass
class _Progress:
    """What a run has produced so far: enough to write partial outputs when it is interrupted."""

    t_start: float
    model: np.ndarray | None = None
    connected: int = 0
    secure: bool = False
    done_before: int = 0  # rounds completed before a resume
    first: int = 1  # the first round this process runs
    history: list[RoundResult] = field(default_factory=list)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # rows still waiting for their evaluation
    journal: Journal = field(default_factory=lambda: Journal(None, 0))


class ForeignHistory(RuntimeError):
    """Members refuse a round because they hold a history this state directory does not."""


def foreign_history(res: RoundResult, names: dict[int, str]) -> str | None:
    """The operator's one line when a round got nothing because members already ran with another
    state directory (a lost, fresh or restored-from-old-backup one); None otherwise.

    Members count the protocol rounds they answered (`round.replay`) and keep their own ledger copy
    (`ledger.fork`, `ledger.truncated`): a coordinator that forgot its history is refused every round,
    so going on would only waste them all."""
    if res.completed:
        return None
    hits = [r for r in res.refusals if r["rule"] in FOREIGN_HISTORY_RULES]
    if not hits:
        return None
    who = ", ".join(sorted({names.get(r["member"], f"member {r['member']}") for r in hits}))
    rules = ", ".join(sorted({f"[{r['rule']}]" for r in hits}))
    return (
        f"round {res.round}: members already ran with another coordinator state directory ({rules} from {who}); "
        "stopping. Restore the original --state-dir, or re-provision the federation, or have every member start "
        "a new ledger epoch deliberately (see README, 'A lost coordinator state directory')"
    )


def run_federation(grid: Grid, settings: RunSettings) -> RunSummary | RunRefused:
    """Run the plan's rounds; returns summary.json's content (or why the members refused to go on).

    A stop request (coordinator.stop, set by `fedloom simulate`'s signal handler) ends the run at the
    next poll: the rounds completed so far, the last model and a summary marked "interrupted" are
    written, and the summary is returned like a finished run's."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    names = {m.id: m.name for m in settings.roster} if settings.roster is not None else {}
    journal = Journal(settings.state_dir, settings.plan.rounds, names)
    progress = _Progress(t_start=time.perf_counter(), journal=journal)
    try:
        summary = _run_rounds(grid, settings, progress)
    except RunInterrupted as stop:
        log.warning("run %s after %d round(s): writing partial outputs", stop, len(progress.history))
        summary = _write_interrupted(settings, progress, stop.signum)
        STOP.handled.set()
    except ForeignHistory as refused:
        journal.refused_to_go_on(str(refused))
        return RunRefused(str(refused), str(settings.out_dir))
    journal.finished(summary)
    settings.observer.finished(summary)
    return summary


def _run_rounds(grid: Grid, settings: RunSettings, progress: _Progress) -> RunSummary:
    plan, out = settings.plan, settings.out_dir
    ckpt, signed, model = _starting_point(settings)
    first, epoch = (ckpt.round + 1, ckpt.epoch + 1) if ckpt else (1, 0)
    progress.first = first
    _begin(settings, ckpt, signed, first, epoch)
    minimum = plan.secure.min_cohort if plan.secure.enabled else 1
    progress.model = model
    nodes = wait_for_nodes(grid, plan.participants, settings.node_wait, minimum=minimum)
    progress.connected = len(nodes)
    journal = progress.journal
    journal.started(len(nodes), first, plan.secure.enabled, out)
    settings.observer.started(plan, len(nodes))
    rounds: RoundBackend = _aggregation(grid, settings, nodes, model.size, epoch, journal)
    progress.secure = rounds.secure
    optimizer = make_optimizer(plan.strategy)
    if ckpt:
        optimizer.load_state_dict(ckpt.optimizer)
    done_before = progress.done_before = ckpt.rounds_completed if ckpt else 0
    rows = progress.rows
    rows[first - 1] = _pending_row(out, first - 1)
    written = {int(r["round"]) for r in outputs.read_jsonl(out / outputs.METRICS)}
    history = progress.history

    def complete(r: int, ev: EvalSummary | None) -> None:
        row = rows.pop(r)
        row.update(
            eval_loss=ev.loss if ev else None,
            eval_accuracy=ev.accuracy if ev else None,
            eval_participants=ev.participants if ev else 0,
        )
        if r not in written:  # a resumed run completes the row the crash left pending, repeats none
            outputs.append_jsonl(out / outputs.METRICS, row)
            written.add(r)
        settings.observer.round_done(row)

    for r in range(first, plan.rounds + 1):
        STOP.check()
        t0 = time.perf_counter()
        res = rounds.train_round(r, model)
        # only the first round a coordinator with a state directory runs can reveal that it lost its
        # history; refusals of a later round (a bug, or a coordinator replaying) just skip that round
        if r == first and settings.state_dir is not None and (stale := foreign_history(res, journal.names)):
            raise ForeignHistory(stale)
        if res.mean_update is not None:
            model = optimizer.step(model, res.mean_update.astype(np.float32, copy=False))
            res.release_update()
        else:
            log.warning("round %d skipped: %s", r, res.skipped)
        progress.model = model
        history.append(res)
        rows[r] = _row(res, time.perf_counter() - t0, rounds.secure)
        complete(r - 1, res.incoming_eval)
        completed = done_before + sum(1 for h in history if h.completed)
        _record_round(settings, journal, r, res, rows[r], model, optimizer, epoch, completed)
    final = rounds.evaluate(plan.rounds, model)
    complete(plan.rounds, final)
    outputs.save_model(out / outputs.MODEL, model, {"plan_hash": plan.hash, "round": str(plan.rounds)})
    summary = _summary(settings, progress, final, journal.wall_seconds())
    if ckpt:
        summary.add_rounds_before(outputs.read_jsonl(out / outputs.METRICS), first)
    (out / PENDING_ROW).unlink(missing_ok=True)
    outputs.write_json(out / outputs.SUMMARY, summary.to_json())
    outputs.plot_run(out)
    return summary


def _begin(
    settings: RunSettings, ckpt: checkpoint.Checkpoint | None, signed: dict[int, str | None], first: int, epoch: int
) -> None:
    """Set the output directory up for a fresh start or a resume, and tell the ledger about a resume."""
    out = settings.out_dir
    provenance.keep_plan(out, settings.plan)
    if ckpt is None:
        (out / outputs.METRICS).unlink(missing_ok=True)
    else:
        log.info("resuming after round %d (restart %d)", ckpt.round, epoch)
    if settings.ledger is not None and (ckpt is not None or max(signed, default=0) > 0):
        # also when the ledger got round 1's entry but the crash came before its checkpoint: round 1 is redone
        settings.ledger.append("resume", {"from_round": first, "reason": "coordinator restarted"})


def _aggregation(
    grid: Grid, settings: RunSettings, nodes: list[int], size: int, epoch: int, journal: Journal
) -> RoundBackend:
    """The aggregation backend the plan asks for; the round loop only sees its RoundResults."""
    plan = settings.plan
    feed = LedgerFeed(settings.ledger.path) if settings.ledger is not None else None
    if plan.secure.enabled:
        if settings.roster is None:
            raise ValueError("secure aggregation needs the federation's roster")
        return SecureRounds(
            grid, plan, nodes, settings.roster, size, settings.hooks, restart=epoch, ledger=feed, journal=journal
        )
    log.warning("secure aggregation is OFF: the coordinator sees every participant's update")
    return PlainRounds(grid, plan, nodes, settings.hooks, ledger=feed, journal=journal)


def _record_round(
    settings: RunSettings,
    journal: Journal,
    r: int,
    res: RoundResult,
    row: dict[str, Any],
    model: np.ndarray,
    optimizer: OuterOptimizer,
    epoch: int,
    completed: int,
) -> None:
    """Keep a finished round across a crash: pending row, journal, ledger entry, then (last) the checkpoint."""
    plan = settings.plan
    if settings.state_dir:  # round r's evaluation comes with the next round: keep the row across a crash
        outputs.write_json(settings.out_dir / PENDING_ROW, row)
    journal.round_done(row, completed, res.incoming_eval.accuracy if res.incoming_eval else None)
    if settings.ledger is not None:  # before the checkpoint: a checkpoint is only resumed if the ledger signs it
        settings.ledger.append("round", _ledger_entry(plan, res, model, row))
    if settings.state_dir:
        checkpoint.save(settings.state_dir, plan.hash, r, epoch, model, optimizer.state_dict(), completed)


_NO_EVAL = {"eval_loss": None, "eval_accuracy": None, "eval_participants": 0}


def _write_interrupted(settings: RunSettings, progress: _Progress, signum: int) -> RunSummary:
    """Partial outputs of a stopped run: metrics.jsonl (the rounds that finished; a round whose
    evaluation never came is written without one), the last model, summary.json marked
    "interrupted", the plot. A deployment keeps its pending row for the resume instead."""
    out = settings.out_dir
    last = progress.history[-1].round if progress.history else progress.first - 1
    (out / outputs.METRICS).touch()  # stopped in round 1: an empty file, not a missing one
    if settings.state_dir is None:
        for r in sorted(progress.rows):
            if 1 <= r <= last:
                outputs.append_jsonl(out / outputs.METRICS, progress.rows[r] | _NO_EVAL)
    if progress.model is not None:
        meta = {"plan_hash": settings.plan.hash, "round": str(last), "interrupted": "true"}
        outputs.save_model(out / outputs.MODEL, progress.model, meta)
    summary = _summary(settings, progress, None, progress.journal.wall_seconds())
    last_evaluated = _last_evaluated(outputs.read_jsonl(out / outputs.METRICS))
    summary.interruption = Interruption(signal_name(signum), last, last_evaluated)
    outputs.write_json(out / outputs.SUMMARY, summary.to_json())
    outputs.plot_run(out)
    return summary


def _last_evaluated(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest round whose model was evaluated (the last model's evaluation never came)."""
    done = [r for r in rows if r.get("eval_accuracy") is not None]
    if not done:
        return None
    row = max(done, key=lambda r: int(r["round"]))
    return {"round": row["round"], "accuracy": row["eval_accuracy"], "loss": row.get("eval_loss")}


PENDING_ROW = "metrics.pending.json"


def _pending_row(out: Path, r: int) -> dict[str, Any]:
    """Round r's metrics row as far as it got before a crash (its training part is written when
    the round ends, its evaluation only arrives with the next round's first trip)."""
    path = out / PENDING_ROW
    if r > 0 and path.exists():
        row = json.loads(path.read_text())
        if row.get("round") == r:
            return row
    return {"round": r, "wall_seconds": 0.0}


def _starting_point(settings: RunSettings) -> tuple[checkpoint.Checkpoint | None, dict[int, str | None], np.ndarray]:
    """The checkpoint to resume from (None: a fresh start), the ledger's signed models, and the model the
    first round starts from: the checkpoint's, or the initial model, built at most once per start.

    With a ledger (deployment) the checkpoint must be the model the signed ledger records for its round, and a
    fresh start must be the initial model the genesis pins: `checkpoint.attest`."""
    plan, state, ledger = settings.plan, settings.state_dir, settings.ledger
    initial, settings.initial = settings.initial, None
    if state is None:
        ckpt, signed = None, {}
    elif ledger is None:
        ckpt, signed = checkpoint.load(state, plan.hash), {}
    else:
        if initial is None and not (state / checkpoint.POINTER).exists():
            initial = initial_model(plan)
        ckpt, signed = checkpoint.load_attested(state, plan.hash, ledger.path, ledger.public_key, initial)
    if ckpt is not None:
        return ckpt, signed, ckpt.model
    return None, signed, initial if initial is not None else initial_model(plan)


def _ledger_entry(plan: Plan, res: RoundResult, model: np.ndarray, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": res.round,
        "plan_hash": plan.hash,
        "asked": res.asked,
        "aggregated": res.aggregated,
        "dropped": [{"member": d.get("member", d.get("node")), "stage": d["stage"]} for d in res.dropped],
        "refusals": res.refusals,
        "skipped": res.skipped,
        "model_hash": model_hash(model),
        "contribution": res.contribution,
        "metrics": {k: v for k, v in (("train_loss", res.train_loss),) if v is not None},
    }


def _row(res: RoundResult, wall: float, secure: bool) -> dict[str, Any]:
    return {
        "round": res.round,
        "wall_seconds": round(wall, 4),
        "train_loss": res.train_loss,
        "participants_asked": len(res.asked),
        "participants_replied": len(res.aggregated),
        "aggregated": res.aggregated,
        "secure_aggregation": secure,
        "skipped": res.skipped,
        "stage_seconds": {k: round(v, 4) for k, v in res.stage_seconds.items()},
        "dropped": res.dropped,
        "refusals": res.refusals,
        "resent": res.resent,
        "exactness": res.exactness,
        "clipped_coordinates": res.clipped,
        "weights_capped": res.weights_capped,
        "contribution": res.contribution,
    }


def _summary(settings: RunSettings, progress: _Progress, final: EvalSummary | None, wall: float) -> RunSummary:
    """The summary of the whole run so far: this process's rounds, those before a resume counted in."""
    summary = RunSummary.of_history(
        settings.plan,
        progress.history,
        scenario=settings.scenario,
        out_dir=settings.out_dir,
        final=final,
        connected=progress.connected,
        wall=wall,
        params=progress.model.size if progress.model is not None else 0,
        secure=progress.secure,
        started_at=progress.journal.started_at,
    )
    summary.rounds_completed += progress.done_before
    summary.add_report(_hook_report(settings.hooks))
    return summary


def _hook_report(hooks: RunHooks) -> dict[str, Any]:
    """Summary keys the run's hooks add: a simulation's hooks may carry `report() -> dict` (e.g.
    {"adversary": ...}, what a simulated attack achieved); the production hooks have none."""
    report = getattr(hooks, "report", None)
    return dict(report()) if callable(report) else {}
