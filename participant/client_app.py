"""The ClientApp a participant runs: Flower delivers the coordinator's messages here.

Simulation (node_config has `partition-id`): the participant's data is its partition of the
scenario's dataset. Deployment (node_config has `data-path`): its own files. Either way it
trains on its own device (`device` in node_config or run_config, default auto).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedloom import records as rec
from fedloom.plan import Plan

from .device import configure_cpu_threads, resolve_device
from .local_data import LocalData, from_path, simulated
from .trainer import LocalTrainer

app = ClientApp()


@dataclass(frozen=True)
class NodeSetup:
    member: int
    data: LocalData
    simulation: bool


@lru_cache(maxsize=4)
def _plan(text: str, digest: str) -> Plan:
    plan = Plan.from_json(text)
    if plan.hash != digest:
        raise ValueError("plan does not match its hash")
    return plan


def node_setup(plan: Plan, context: Context) -> NodeSetup:
    nc = context.node_config
    if "data-path" in nc:
        return NodeSetup(int(nc.get("member-id", 0)), from_path(plan.task.name, str(nc["data-path"])), False)
    pid, n = int(nc["partition-id"]), int(nc["num-partitions"])
    return NodeSetup(pid + 1, simulated(plan.task, pid, n), True)


_trainers: dict[tuple[str, int], LocalTrainer] = {}


def trainer_for(plan: Plan, context: Context) -> tuple[LocalTrainer, NodeSetup]:
    setup = node_setup(plan, context)
    key = (plan.hash, setup.member)
    if key not in _trainers:
        spec = str(context.node_config.get("device", context.run_config.get("device", "auto")))
        device = resolve_device(spec)
        configure_cpu_threads(device, 1 if setup.simulation else 0)
        _trainers.clear()  # one model per process: a new plan replaces the old one
        _trainers[key] = LocalTrainer(plan, setup.data, device)
    return _trainers[key], setup


def plan_of(msg: Message) -> Plan:
    cfg = msg.content[rec.CONFIG]
    return _plan(str(cfg["plan"]), str(cfg["plan-hash"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A plaintext training trip: evaluate the received model, train on it, return the update."""
    plan = plan_of(msg)
    cfg = msg.content[rec.CONFIG]
    trainer, setup = trainer_for(plan, context)
    vector = rec.read_vector(msg.content, rec.MODEL)
    ev = trainer.evaluate(vector)
    result = trainer.train(vector, int(cfg["round"]), setup.member)
    return Message(
        RecordDict({
            rec.UPDATE: rec.vector_record(result.update),
            rec.FIT: rec.fit_metrics(result.num_examples, result.train_loss),
            rec.EVAL: rec.eval_record(ev.loss, ev.accuracy, ev.num_examples),
            "who": ConfigRecord({"member": setup.member}),
        }),
        reply_to=msg,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the final global model on this participant's held-out data."""
    plan = plan_of(msg)
    trainer, setup = trainer_for(plan, context)
    ev = trainer.evaluate(rec.read_vector(msg.content, rec.MODEL))
    return Message(
        RecordDict({
            rec.EVAL: rec.eval_record(ev.loss, ev.accuracy, ev.num_examples),
            "who": ConfigRecord({"member": setup.member}),
        }),
        reply_to=msg,
    )
