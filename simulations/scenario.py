"""Scenario files: a plan plus what only a simulation has (faults, adversaries, verification).

A scenario is a TOML file. Top-level keys and the [task], [training], [strategy], [secure]
tables make the plan (see fedloom.plan); the rest is the scenario's own:

    name = "..."; description = "..."
    [simulation]  verify = true, cpus_per_participant = 1, node_wait = 120, keep_models = false
    [[faults]]    rounds = [2], stage = "mask", members = [3]   (or fraction = 0.2)
    [[policies]]  members = [4], max_rounds = 1, min_cohort = 5, ...   (a member's own policy)
    [adversary]   kind = "overlap", round = 2, target = 1   (a misbehaving coordinator)
    [[members]]   name = "morocco", country = "MA"   (optional, one per participant, in order;
                  names the kits, the report's rows and the model folders; default member-1..n)
    [report]      sovereign_steps = 150, ...   (the per-language consortium report, see
                  simulations/tapestry.py; tasks with bits per character only;
                  unheld = false scores only the members' own languages)

Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom.errors import UserError
from fedloom.plan import Plan, dataclass_from_table
from protocol.stages import Stage

SCENARIO_DIR = Path(__file__).parent


@dataclass(frozen=True)
class SimulationSpec:
    verify: bool = True  # compute the plaintext aggregate out of band; record the difference
    cpus_per_participant: int = 1
    node_wait: float = 120.0  # seconds to wait for the virtual participants to come up
    keep_models: bool = False  # members keep their N+1 models under <out>/members/<name>/ ([report] implies it)


@dataclass(frozen=True)
class ReportSpec:
    """The consortium report (simulations/tapestry.py): what to train besides the federation."""

    enabled: bool = False  # true when the scenario has a [report] table
    alone: bool = True  # each member trained alone on its own data, same local budget
    centralized: bool = True  # one model on the members' pooled text, same budget
    sovereign_steps: int = 100  # each member's sovereign build: fine-tuning steps on its own data
    sovereign_lr: float = 0.0  # 0 = the plan's training.lr
    workers: int = 0  # processes for the baselines and sovereign builds; 0 = one per CPU
    unheld: bool = True  # also score the languages no member holds (false: only the members' own, cheaper)


@dataclass(frozen=True)
class Fault:
    """Members that vanish at `stage` of each round in `rounds` (and answer nothing more in it)."""

    rounds: tuple[int, ...]
    stage: Stage
    members: tuple[int, ...]


@dataclass(frozen=True)
class FaultPlan:
    faults: tuple[Fault, ...] = ()

    def drops(self, round_: int, stage: Stage, member: int) -> bool:
        return any(round_ in f.rounds and f.stage == stage and member in f.members for f in self.faults)


@dataclass(frozen=True)
class Scenario:
    name: str
    plan: Plan
    description: str = ""
    simulation: SimulationSpec = field(default_factory=SimulationSpec)
    faults: FaultPlan = field(default_factory=FaultPlan)
    policies: dict = field(default_factory=dict)  # member id -> fedloom.policy.Policy
    adversary: dict | None = None  # {"kind", "round", "target"}
    source: str = "built-in"
    members: tuple = ()  # fedloom.provision.MemberSpec per participant (name, country); () = default names
    report: ReportSpec = field(default_factory=ReportSpec)

    @property
    def verify(self) -> bool:
        return self.simulation.verify and self.plan.secure.enabled

    @property
    def keep_models(self) -> bool:
        return self.simulation.keep_models or self.report.enabled

    def member_names(self) -> list[str]:
        from fedloom.kits import member_names

        return [m.name for m in self.members] if self.members else member_names(self.plan.participants)

    def member_countries(self) -> list[str]:
        return [m.country for m in self.members] if self.members else [""] * self.plan.participants

    def with_plan(self, plan: Plan) -> Scenario:
        """The scenario with another plan (e.g. --rounds/--participants overrides), checked again."""
        from dataclasses import replace

        _check_members(self.members, plan)
        return replace(self, plan=plan)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(spec: str | Path | None = None) -> Scenario:
    """A scenario from a path, or a built-in name ('default' when empty)."""
    spec = str(spec) if spec else "default"
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"scenario file not found: {spec}")
        return parse_scenario(path.read_bytes(), source=str(path))
    builtin = SCENARIO_DIR / f"{spec}.toml"
    if not builtin.is_file():
        raise UserError(
            f"unknown scenario {spec!r}: not a file, and built-in scenarios are {', '.join(builtin_names())}"
        )
    return parse_scenario(builtin.read_bytes(), source=f"built-in:{spec}")


def parse_scenario(raw: bytes, source: str = "<string>") -> Scenario:
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"invalid TOML in {source}: {exc}") from exc
    name = data.pop("name", Path(source).stem)
    description = data.pop("description", "")
    sim = dataclass_from_table(SimulationSpec, data.pop("simulation", {}), "simulation")
    if sim.cpus_per_participant < 1:
        raise UserError("simulation.cpus_per_participant must be at least 1")
    if not isinstance(name, str) or not isinstance(description, str):
        raise UserError(f"{source}: name and description must be strings")
    faults, policies, adversary = data.pop("faults", []), data.pop("policies", []), data.pop("adversary", None)
    members = _member_specs(data.pop("members", None))
    report = _report(data.pop("report", None))
    if members and "participants" not in data:
        data["participants"] = len(members)  # named members say how many there are
    elif members and data["participants"] != len(members):
        raise UserError(
            f"the scenario names {len(members)} [[members]] but has {data['participants']!r} participants; "
            "give one [[members]] table per participant"
        )
    plan = with_probe_hash(Plan.from_dict(data))
    _check_members(members, plan)
    _check_report(report, plan)
    return Scenario(
        name=name,
        plan=plan,
        description=description,
        simulation=sim,
        source=source,
        faults=_faults(faults, plan),
        policies=_policies(policies, plan),
        adversary=_adversary(adversary, plan),
        members=members,
        report=report,
    )


def _member_specs(entries: Any) -> tuple:
    """[[members]] as fedloom.provision.MemberSpec (the federation file's rules: unique names that
    can name a kit directory, ISO 3166 country codes)."""
    if entries is None:
        return ()
    from fedloom.provision import _members

    return _members(entries)


def _check_members(members: tuple, plan: Plan) -> None:
    if members and len(members) != plan.participants:
        raise UserError(
            f"the scenario names {len(members)} [[members]] but has {plan.participants} participants; "
            "give one [[members]] table per participant"
        )


def _report(entry: Any) -> ReportSpec:
    if entry is None:
        return ReportSpec()
    if not isinstance(entry, dict):
        raise UserError("[report] must be a table")
    spec = dataclass_from_table(ReportSpec, {"enabled": True, **entry}, "report")
    if spec.sovereign_steps < 0:
        raise UserError(f"report.sovereign_steps must be >= 0 (got {spec.sovereign_steps})")
    if spec.sovereign_lr < 0 or spec.workers < 0:
        raise UserError("report.sovereign_lr and report.workers must be >= 0")
    return spec


def _check_report(report: ReportSpec, plan: Plan) -> None:
    if not report.enabled:
        return
    import tasks

    try:
        task = tasks.get_task(plan.task.ref)
    except tasks.UnknownTaskError as exc:
        raise UserError(str(exc)) from exc
    if not all(callable(getattr(task, hook, None)) for hook in ("bits_per_char", "scored_units")):
        raise UserError(
            f"[report] needs a task that reports bits per character (charlm, the hflm tasks); {plan.task.name} does not"
        )
    if plan.task.partition != "groups":
        raise UserError('[report] compares members by their languages: it needs task.partition = "groups"')


def _members(entry: dict, plan: Plan, where: str, seed_salt: int) -> tuple[int, ...]:
    members, fraction = entry.get("members"), entry.get("fraction")
    if (members is None) == (fraction is None):
        raise UserError(f"{where}: give exactly one of members = [...] or fraction = 0..1")
    if members is not None:
        if not isinstance(members, list) or not all(
            isinstance(m, int) and 1 <= m <= plan.participants for m in members
        ):
            raise UserError(f"{where}: members must be member ids in 1..{plan.participants}")
        return tuple(members)
    if not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise UserError(f"{where}: fraction must be in [0, 1]")
    import numpy as np  # which members drop is a scenario choice, not a secret

    k = round(fraction * plan.participants)
    rng = np.random.default_rng(plan.seed * 7919 + seed_salt)
    return tuple(sorted(int(m) for m in rng.choice(np.arange(1, plan.participants + 1), size=k, replace=False)))


def _faults(entries: list, plan: Plan) -> FaultPlan:
    if not isinstance(entries, list):
        raise UserError("faults must be an array of tables: [[faults]]")
    out = []
    for i, e in enumerate(entries):
        where = f"faults[{i}]"
        unknown = set(e) - {"round", "rounds", "stage", "members", "fraction"}
        if unknown:
            raise UserError(
                f"unknown key {sorted(unknown)[0]!r} in [[faults]]; known: fraction, members, round, rounds, stage"
            )
        rounds = e.get("rounds", [e["round"]] if "round" in e else None)
        if (
            not isinstance(rounds, list)
            or not rounds
            or not all(isinstance(r, int) and 1 <= r <= plan.rounds for r in rounds)
        ):
            raise UserError(f"{where}: rounds must list round numbers in 1..{plan.rounds}")
        try:
            stage = Stage.parse(e.get("stage"))
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from None
        out.append(Fault(tuple(rounds), stage, _members(e, plan, where, i)))
    return FaultPlan(tuple(out))


def _policies(entries: list, plan: Plan) -> dict:
    from fedloom.policy import Policy

    if not isinstance(entries, list):
        raise UserError("policies must be an array of tables: [[policies]]")
    out = {}
    for i, e in enumerate(entries):
        e = dict(e)
        members = _members({"members": e.pop("members", None)}, plan, f"policies[{i}]", 0)
        policy = Policy.from_dict(e, f"policies[{i}]")
        for m in members:
            out[m] = policy
    return out


ADVERSARIES = (
    "substitute-keys",
    "fake-member",
    "overlap",
    "double-request",
    "inconsistent-survivors",
    "replay",
    "garbage-shares",
)


def _adversary(entry: dict | None, plan: Plan) -> dict | None:
    if entry is None:
        return None
    if set(entry) - {"kind", "round", "target"}:
        raise UserError("unknown key in [adversary]; known: kind, round, target")
    kind, rnd, target = entry.get("kind"), entry.get("round", 1), entry.get("target", 1)
    if kind not in ADVERSARIES:
        raise UserError(f"adversary.kind must be one of {', '.join(ADVERSARIES)}")
    if not isinstance(rnd, int) or not 1 <= rnd <= plan.rounds:
        raise UserError(f"adversary.round must be in 1..{plan.rounds}")
    if not isinstance(target, int) or not 1 <= target <= plan.participants:
        raise UserError(f"adversary.target must be a member id in 1..{plan.participants}")
    if not plan.secure.enabled:
        raise UserError("an adversary scenario needs secure aggregation enabled")
    return {"kind": kind, "round": rnd, "target": target}


def with_probe_hash(plan: Plan) -> Plan:
    """Name the contribution policy's public probe set by hash in the plan (members check it)."""
    c = plan.contribution
    if not c.enabled or c.probe_hash:
        return plan
    from dataclasses import replace

    from tasks.probe import dataset_hash, probe_set

    try:
        digest = dataset_hash(probe_set(plan.task.ref, c.probe, plan.task.seed))
    except ValueError as exc:
        raise UserError(f"contribution.probe: {exc}") from exc
    return replace(plan, contribution=replace(c, probe_hash=digest))


def default_out_dir() -> str:
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
