"""What a member's node knows when a message arrives (`NodeView`), and where it comes from.

- deployment (node_config has `kit`): the member's kit directory, its `data-path`, its `device`;
- simulation (node_config has `partition-id`): the throwaway kits the simulation provisioned
  (their directory travels in the message config, which only a simulated node honours) and
  this partition of the scenario's dataset.
Also the member's trainer (one model per process) and whether its data sizes may leave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

import tasks
from fedloom import records as rec
from fedloom.kits import POLICY_FILE, ROSTER_FILE, MemberKit, load_member_kit, roster_from_json
from fedloom.plan import Plan
from fedloom.policy import Policy

from .device import configure_cpu_threads, resolve_device
from .local_data import LocalData, from_path, simulated
from .trainer import LocalTrainer


@lru_cache(maxsize=4)
def _plan(text: str, digest: str) -> Plan:
    plan = Plan.from_json(text)
    if plan.hash != digest:
        raise ValueError("the plan does not match its hash")
    return plan


@lru_cache(maxsize=16)
def _kit(path: str) -> MemberKit:
    return load_member_kit(path)


@lru_cache(maxsize=16)
def _sim_kit_dir(kits: str, member: int) -> Path:
    """A simulated member's kit directory: named after the member (e.g. kits/morocco), found via
    the throwaway federation's roster; `member-<id>` when there is no roster."""
    roster_file = Path(kits) / ROSTER_FILE
    if roster_file.exists():
        roster = roster_from_json(roster_file.read_text())
        if member in roster:
            return Path(kits) / roster.get(member).name
    return Path(kits) / f"member-{member}"


@dataclass
class NodeView:
    """Everything this node knows when a message arrives."""

    plan: Plan
    round: int
    kit: MemberKit | None
    policy: Policy
    member: int
    data: LocalData
    simulation: bool
    device_spec: str
    state_dir: Path | None = None  # deployment: where this member keeps protocol state and its ledger copy
    kit_dir: Path | None = None
    ledger_head: int | None = None  # entries in this member's own copy of the ledger
    ledger: Any = None  # deployment: this member's verified LedgerCopy (received models are checked against it)
    models_dir: Path | None = None  # where this member keeps its N+1 models (None: nowhere)

    @property
    def node_dir(self) -> Path | None:
        """Where this member keeps files between rounds on its own node: a deployed member's state
        dir, a simulated member's kit directory (in the run's throwaway workspace); None: nowhere."""
        return self.kit_dir if self.simulation else self.state_dir

    @property
    def member_name(self) -> str:
        return self.kit.member.name if self.kit else f"member-{self.member}"


def view_of(msg: Message, context: Context) -> NodeView:
    cfg = msg.content[rec.CONFIG]
    plan = _plan(str(cfg[rec.PLAN]), str(cfg[rec.PLAN_HASH]))
    nc = context.node_config
    if "kit" in nc:  # deployment: trust only what is on this machine
        kit = _kit(str(nc["kit"]))
        policy = Policy.load(nc.get("policy") or Path(str(nc["kit"])) / POLICY_FILE)
        data = from_path(kit.plan.task.ref, str(nc["data-path"]))
        state = Path(str(nc["state-dir"])) if nc.get("state-dir") else None
        return NodeView(
            plan,
            int(cfg[rec.ROUND]),
            kit,
            policy,
            kit.member.id,
            data,
            False,
            str(nc.get("device", "auto")),
            state,
            Path(str(nc["kit"])),
            models_dir=state / "models" if state else None,
        )
    pid, n = int(nc["partition-id"]), int(nc["num-partitions"])
    kits = str(cfg.get(rec.SIM_KITS, ""))
    kit_dir = _sim_kit_dir(kits, pid + 1) if kits else None
    kit = _kit(str(kit_dir)) if kit_dir else None
    policy = Policy.load(kit_dir / POLICY_FILE) if kit_dir else Policy(require_secure_aggregation=False)
    device = str(context.run_config.get("device", "auto"))
    view = NodeView(
        plan, int(cfg[rec.ROUND]), kit, policy, pid + 1, simulated(plan.task, pid, n), True, device, kit_dir=kit_dir
    )
    models = str(cfg.get(rec.SIM_MODELS, ""))  # honoured by simulated nodes only (like SIM_VERIFY)
    view.models_dir = Path(models) / view.member_name if models else None
    return view


_trainers: dict[tuple[str, int], LocalTrainer] = {}


@lru_cache(maxsize=8)
def vector_length(task_name: str) -> int:
    """The model's parameter count, for protocol-only trips: those never train, and in a simulation
    a process serves many participants, so building each one's trainer just to count would cost
    more than the trip's cryptography."""
    task = tasks.get_task(task_name)
    count = getattr(task, "vector_length", None)  # a large model's task counts without a second copy
    return int(count()) if callable(count) else tasks.num_parameters(task.build_model())


def trainer_for(view: NodeView) -> LocalTrainer:
    key = (view.plan.hash, view.member)
    if key not in _trainers:
        device = resolve_device(view.device_spec)
        configure_cpu_threads(device, 1 if view.simulation else 0)
        _trainers.clear()  # one model per process: a new plan replaces the old one
        _trainers[key] = LocalTrainer(view.plan, view.data, device)
    return _trainers[key]


def sizes_are_public(plan: Plan) -> bool:
    """Whether this member's data sizes may leave it in clear: in plaintext mode (FedAvg weights the
    updates the coordinator sees anyway) or when the plan makes weights public by declared example
    counts. Under secure aggregation with private weights, nothing about a member's data size does."""
    c = plan.contribution
    return not plan.secure.enabled or (c.enabled and c.weighting == "examples")
