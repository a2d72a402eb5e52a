"""Simulation-only machinery at the adapter boundary: throwaway kits, faults, verification.

Nothing here changes the protocol or the apps: faults drop messages the real coordinator would
send or receive, verification reads the true updates simulated participants leave in a private
directory, to check the secure sum against the plaintext one, and an adversary (see
simulations.adversary) rewrites, replays and adds messages at the same boundary.

Never import participant.client_app here (or from anything imported here): under `flwr run` the
ServerApp (console/server_app.py) imports this module on one thread while Flower loads the ClientApp
on another, and Flower takes a half-initialised participant.client_app from sys.modules and fails
(issue 17). Shared names such as POLICY_FILE live in fedloom/; tests/test_import_race.py keeps it
that way.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.driver import RunSettings
from coordinator.results import RoundResult
from coordinator.secure import RunHooks
from fedloom import records as rec
from fedloom.kits import POLICY_FILE, provision_members
from fedloom.policy import Policy
from protocol.params import ProtocolParams
from protocol.roster import Roster
from protocol.stages import Stage

from .adversary import Adversary
from .scenario import Scenario


@dataclass
class Workspace:
    """Private temporary directories for one simulated run (keys never outlive it)."""

    root: Path
    kits: Path
    verify: Path
    roster: Roster
    exactness: dict[int, float] = field(default_factory=dict)
    models: Path | None = None  # where simulated members keep their N+1 models (<out>/members)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def prepare(scenario: Scenario, out_dir: Path | None = None) -> Workspace:
    """Throwaway kits (named as the scenario's [[members]]); with `out_dir` and a scenario that
    keeps models, members write theirs under <out_dir>/members/<name>/."""
    root = Path(tempfile.mkdtemp(prefix="fedloom-sim-"))
    kits, verify = root / "kits", root / "verify"
    verify.mkdir()
    plan = scenario.plan
    roster = provision_members(plan, kits, scenario.member_names(), scenario.member_countries())
    default_policy = Policy(require_secure_aggregation=plan.secure.enabled, min_cohort=plan.secure.min_cohort)
    for m in roster:
        policy = scenario.policies.get(m.id, default_policy)
        (kits / m.name / POLICY_FILE).write_text(policy.to_toml())
    models = Path(out_dir) / "members" if out_dir is not None and scenario.keep_models else None
    return Workspace(root, kits, verify, roster, models=models)


def run_settings(scenario: Scenario, ws: Workspace, out_dir: Path, node_wait: float, **extra: Any) -> RunSettings:
    """The coordinator's settings for a simulated run of `scenario` in workspace `ws` (one place for
    `fedloom simulate` and the run-config path of `flwr run`)."""
    return RunSettings(
        plan=scenario.plan,
        out_dir=out_dir,
        scenario=scenario.name,
        node_wait=node_wait,
        roster=ws.roster,
        hooks=hooks_for(scenario, ws),
        **extra,
    )


@dataclass
class SimHooks(RunHooks):
    """RunHooks plus what only a simulation reports: `report()` adds keys to summary.json."""

    report: Callable[[], dict] | None = None


def hooks_for(scenario: Scenario, ws: Workspace) -> RunHooks:
    faults = scenario.faults
    adversary = Adversary.for_scenario(scenario, ws.roster, ws.verify) if scenario.adversary else None
    truth = scenario.verify or adversary is not None  # an adversary is judged against the true updates

    def drop(round_: int, stage: Stage, member: int) -> bool:
        return faults.drops(round_, stage, member)

    def after_round(round_: int, proto, agg, result: RoundResult) -> None:
        if truth:
            weights = (result.contribution or {}).get("weights")
            result.exactness = _exactness(ws, round_, agg.survivors, result.mean_update, proto.params, weights)
            ws.exactness[round_] = result.exactness
        if adversary is not None:  # before the true updates of the round are deleted
            adversary.after_round(round_, proto, agg, result)
        for f in ws.verify.glob(f"r{round_}-m*.npz"):
            f.unlink()

    extra = {rec.SIM_KITS: str(ws.kits)}
    if ws.models is not None:
        ws.models.mkdir(parents=True, exist_ok=True)
        extra[rec.SIM_MODELS] = str(ws.models)
    if truth:
        extra[rec.SIM_VERIFY] = str(ws.verify)
    if adversary is not None:
        extra.update(adversary.extra_config)
    hooks = SimHooks(drop=drop, extra_config=extra, after_round=after_round)
    if adversary is not None:
        hooks.tamper, hooks.observe, hooks.inject = adversary.tamper, adversary.observe, adversary.inject
        hooks.report = lambda: {"adversary": adversary.report()}
    return hooks


def _exactness(
    ws: Workspace,
    round_: int,
    survivors,
    mean_update: np.ndarray,
    params: ProtocolParams,
    weights: dict[int, int] | None = None,
) -> float | None:
    """max |secure mean - plaintext mean| over coordinates, from the true updates (out of band).

    The plaintext mean is of what the round aggregated: each update clipped to `params.clip` (as the
    member's quantizer did) and weighted as in the sum: the public contribution weights when a policy
    set them, else the example count capped at `params.max_weight`."""
    # in place, one member at a time: at 1.35e8 parameters each float64 temporary is 1.08 GB, and the
    # expression form held four of them besides the sum (the simulation process's peak, 6 GB)
    total, weight = None, 0
    for m in survivors:
        path = ws.verify / f"r{round_}-m{m}.npz"
        if not path.exists():
            return None
        with np.load(path) as f:
            w = int(weights[m]) if weights and m in weights else params.fedavg_weight(f["examples"])
            x = f["update"].astype(np.float64)
        np.clip(x, -params.clip, params.clip, out=x)
        x *= w
        if total is None:
            total = x
        else:
            total += x
        del x
        weight += w
    if total is None or weight == 0:
        return None
    total /= weight
    total -= mean_update
    return float(np.max(np.abs(total, out=total)))
