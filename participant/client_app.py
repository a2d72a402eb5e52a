"""The ClientApp a participant runs: Flower delivers the coordinator's messages here.

Every message carries the plan and its hash. The member checks it against the plan in its own
kit and its own policy BEFORE doing anything else; a refusal goes back as a `refusal` record.

Where things come from:
- deployment (node_config has `kit`): the member's kit directory, its `data-path`, its `device`;
- simulation (node_config has `partition-id`): the throwaway kits the simulation provisioned
  (their directory travels in the message config, which only a simulated node honours) and
  this partition of the scenario's dataset.

What a member keeps (the N+1 outcome, participant/models.py): after every training trip the shared
base it received and its local model, each as safetensors + a model card with the lineage of bases;
in deployment under `<state-dir>/models/`, in a simulation where the harness asks (`sim-models`).
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

import tasks
from fedloom import records as rec
from fedloom import triplog
from fedloom.kits import LEDGER_PUB_FILE, POLICY_FILE, ROSTER_FILE, MemberKit, load_member_kit, roster_from_json
from fedloom.plan import Plan
from fedloom.policy import Policy, PolicyRefusal
from fedloom.session import protocol_params
from protocol.errors import ProtocolError, Rule
from protocol.local import garble_share_bundle
from protocol.messages import ShareBundle, decode

from . import replay
from .device import configure_cpu_threads, resolve_device
from .local_data import LocalData, from_path, simulated
from .models import ModelKeeper
from .secure import Masked, answer, load_participant, save_participant
from .trainer import LocalTrainer

log = logging.getLogger("fedloom.participant")
app = ClientApp()


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
    def member_name(self) -> str:
        return self.kit.member.name if self.kit else f"member-{self.member}"


def view_of(msg: Message, context: Context) -> NodeView:
    cfg = msg.content[rec.CONFIG]
    plan = _plan(str(cfg[rec.PLAN]), str(cfg[rec.PLAN_HASH]))
    nc = context.node_config
    if "kit" in nc:  # deployment: trust only what is on this machine
        kit = _kit(str(nc["kit"]))
        policy = Policy.load(nc.get("policy") or Path(str(nc["kit"])) / POLICY_FILE)
        data = from_path(kit.plan.task.name, str(nc["data-path"]))
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
    view = NodeView(plan, int(cfg[rec.ROUND]), kit, policy, pid + 1, simulated(plan.task, pid, n), True, device)
    models = str(cfg.get(rec.SIM_MODELS, ""))  # honoured by simulated nodes only (like SIM_VERIFY)
    view.models_dir = Path(models) / view.member_name if models else None
    return view


_trainers: dict[tuple[str, int], LocalTrainer] = {}


@lru_cache(maxsize=8)
def _vector_length(task_name: str) -> int:
    """The model's parameter count, for protocol-only trips: those never train, and in a simulation
    a process serves many participants, so building each one's trainer just to count would cost
    more than the trip's cryptography."""
    return tasks.num_parameters(tasks.get_task(task_name).build_model())


def trainer_for(view: NodeView) -> LocalTrainer:
    key = (view.plan.hash, view.member)
    if key not in _trainers:
        device = resolve_device(view.device_spec)
        configure_cpu_threads(device, 1 if view.simulation else 0)
        _trainers.clear()  # one model per process: a new plan replaces the old one
        _trainers[key] = LocalTrainer(view.plan, view.data, device)
    return _trainers[key]


def _check_policy(view: NodeView, msg: Message) -> None:
    agreed = view.kit.plan if view.kit else view.plan
    view.policy.check(view.plan, agreed, view.round, secure=view.plan.secure.enabled)
    _sync_ledger(view, msg)


def _sync_ledger(view: NodeView, msg: Message) -> None:
    """Deployment: verify and keep the coordinator's ledger entries; a rewritten history (a fork)
    is evidence the coordinator lied, and this member stops taking part."""
    if view.state_dir is None or view.kit_dir is None or not (view.kit_dir / LEDGER_PUB_FILE).exists():
        return
    from fedloom.ledger import LedgerCopy, LedgerError, LedgerGap, LedgerTruncated, read_public_key

    copy = LedgerCopy(view.state_dir / "ledger.jsonl", read_public_key(view.kit_dir / LEDGER_PUB_FILE))
    lines = [x for x in str(msg.content[rec.CONFIG].get(rec.LEDGER, "")).split("\n") if x]
    try:
        if lines:
            copy.extend(lines)
            copy.check_head(lines[-1])  # the coordinator's newest entry: never behind what this member holds
    except LedgerGap:
        pass  # entries we have not seen yet will come again from our head
    except LedgerTruncated as exc:
        raise PolicyRefusal("ledger.truncated", str(exc)) from exc
    except LedgerError as exc:
        raise PolicyRefusal("ledger.fork", f"the coordinator's ledger contradicts this member's copy: {exc}") from exc
    view.ledger_head = copy.next_index
    view.ledger = copy


def _received_model(view: NodeView, msg: Message, after_round: int) -> np.ndarray:
    """The model in the message, once this member's signed ledger says it is the model after `after_round`
    (deployment with a ledger copy; PolicyRefusal otherwise): nothing is trained, evaluated or kept before."""
    vector = rec.read_vector(msg.content, rec.MODEL)
    if view.ledger is not None:
        from .ledger_check import check_received_model

        check_received_model(view.ledger, vector, after_round)
    return vector


def sizes_are_public(plan: Plan) -> bool:
    """Whether this member's data sizes may leave it in clear: in plaintext mode (FedAvg weights the
    updates the coordinator sees anyway) or when the plan makes weights public by declared example
    counts. Under secure aggregation with private weights, nothing about a member's data size does."""
    c = plan.contribution
    return not plan.secure.enabled or (c.enabled and c.weighting == "examples")


def _who(view: NodeView) -> ConfigRecord:
    """Who replies, and what it declares publicly (its number of training examples, only when the
    plan makes it public)."""
    examples = len(view.data.train) if sizes_are_public(view.plan) else None
    return rec.Who(view.member, examples, view.ledger_head).to_record()


def _refuse(msg: Message, view: NodeView, refusal: PolicyRefusal) -> Message:
    log.warning("member %d refuses round %d by its policy: %s", view.member, view.round, refusal)
    content = RecordDict(
        {
            rec.REFUSAL: rec.RefusalReport(view.member, view.round, refusal.rule, refusal.detail).to_record(),
            rec.WHO: _who(view),
        }
    )
    return Message(content, reply_to=msg)


def _eval(view: NodeView, vector: np.ndarray) -> tuple[LocalTrainer, np.ndarray, ConfigRecord]:
    trainer = trainer_for(view)
    ev = trainer.evaluate(vector)
    # private sizes: the evaluation counts as one member's, whatever the size of its test set
    examples = ev.num_examples if sizes_are_public(view.plan) else 1
    return trainer, vector, rec.EvalReport(ev.loss, ev.accuracy, examples).to_record()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A training trip: evaluate the received model, train on it, and return the update — in
    plaintext, or (secure aggregation) masked inside the protocol's MaskedInput."""
    view = view_of(msg, context)
    try:
        _check_policy(view, msg)
        received = _received_model(view, msg, view.round - 1)
    except PolicyRefusal as refusal:
        return _refuse(msg, view, refusal)
    trainer, vector, ev = _eval(view, received)
    out = RecordDict({rec.EVAL: ev, rec.WHO: _who(view)})
    fit: dict = {}

    def train_once() -> tuple[np.ndarray, int]:
        inner = _load_inner_state(context, view.plan)
        triplog.note("train_start")
        result = trainer.train(vector, view.round, view.member, inner)
        triplog.note("train_end")
        _save_inner_state(context, view.plan, inner)
        _keep_models(view, trainer, vector)
        fit.update(examples=result.num_examples, loss=result.train_loss)
        if view.plan.contribution.enabled:  # score the local model on the plan's public probe set
            fit["probe"] = trainer.probe_loss()
        _maybe_record_for_verification(msg, view, vector, result.update, result.num_examples)
        return result.update, result.num_examples

    clipped = 0
    if not view.plan.secure.enabled:
        update, _ = train_once()
        out[rec.UPDATE] = rec.vector_record(update)
    else:
        replies, masked = _answer_protocol(msg, context, view, train_once, fit, rec.model_digest(vector))
        out[rec.PROTOCOL] = rec.protocol_record(replies)
        clipped = masked.clipped if masked is not None else 0
        if not fit and view.plan.contribution.enabled:
            # left out of this round (e.g. by the quality floor): train anyway, upload nothing, and
            # report the new probe score so this member can qualify again
            train_once()
    if fit:
        examples = fit["examples"] if sizes_are_public(view.plan) else 1  # as in _eval: private sizes stay home
        out[rec.FIT] = rec.FitReport(examples, fit["loss"], clipped, fit.get("probe")).to_metrics()
    return Message(out, reply_to=msg)


INNER_STATE_KEY = "fedloom.inner-optimizer"


def _load_inner_state(context: Context, plan: Plan) -> dict | None:
    """The inner optimizer's state this member kept from its previous round (plan
    `training.keep_optimizer_state`), in `context.state`, which never leaves the member's node.
    An empty dict (first round, or another plan) starts a fresh optimizer; None: not kept."""
    if not plan.training.keep_optimizer_state:
        return None
    if INNER_STATE_KEY not in context.state:
        return {}
    stored = context.state[INNER_STATE_KEY]
    if str(stored[rec.PLAN_HASH]) != plan.hash:
        return {}
    return torch.load(io.BytesIO(stored["state"]), map_location="cpu", weights_only=True)


def _save_inner_state(context: Context, plan: Plan, state: dict | None) -> None:
    if state is None or not state:
        return
    buf = io.BytesIO()
    torch.save(state, buf)
    context.state[INNER_STATE_KEY] = ConfigRecord({rec.PLAN_HASH: plan.hash, "state": buf.getvalue()})


def _keep_models(view: NodeView, trainer: LocalTrainer, base: np.ndarray) -> None:
    """N+1: keep the shared base received this round and the local model trained from it."""
    if view.models_dir is None:
        return
    try:
        keeper = ModelKeeper(view.models_dir, view.plan.task.name, view.plan.hash, view.member_name, trainer.model)
        lineage = keeper.keep_base(base, view.round - 1)
        t = view.plan.training
        training = {"steps": t.steps, "epochs": t.epochs, "optimizer": t.optimizer, "lr": t.lr}
        local = tasks.model_to_vector(trainer.model)  # the trainer's model is the local one right after training
        keeper.keep_local(local, view.round, lineage, training | {"examples": len(view.data.train)})
    except OSError as exc:  # the member's disk, not the round: train on, say so loudly
        log.error("member %d could not keep its models in %s: %s", view.member, view.models_dir, exc)


def _keep_final_base(view: NodeView, trainer: LocalTrainer, base: np.ndarray) -> None:
    """The evaluate trip carries the final shared base (after the last round): keep it too."""
    if view.models_dir is None:
        return
    try:
        ModelKeeper(view.models_dir, view.plan.task.name, view.plan.hash, view.member_name, trainer.model).keep_base(
            base, view.round
        )
    except OSError as exc:
        log.error("member %d could not keep the final base in %s: %s", view.member, view.models_dir, exc)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    """A protocol-only trip (sharing keys, signing survivors, unmasking): no training."""
    view = view_of(msg, context)
    try:
        _check_policy(view, msg)
    except PolicyRefusal as refusal:
        return _refuse(msg, view, refusal)
    replies, _ = _answer_protocol(msg, context, view, _no_training, {})
    return Message(RecordDict({rec.PROTOCOL: rec.protocol_record(replies), rec.WHO: _who(view)}), reply_to=msg)


def _no_training() -> tuple[np.ndarray, int]:
    raise ProtocolError(Rule.OUT_OF_ORDER, "a mask request must come with the model, on a training trip")


def _answer_protocol(
    msg: Message, context: Context, view: NodeView, train_once, fit: dict, model_digest: bytes | None = None
) -> tuple[list[bytes], Masked | None]:
    """The protocol replies to this message's requests (training, if masking is asked for, fills
    `fit`; `model_digest` is that of the model this message brought). In deployment a request the
    coordinator sent again gets the very same reply."""
    if view.kit is None:
        raise RuntimeError("secure aggregation needs this member's kit (identity key and roster)")
    if view.state_dir is None:
        return _answer_requests(msg, context, view, train_once, fit, None, model_digest)
    # one request at a time per member: a repeat running alongside its original must find the
    # kept reply, never answer a stage (mask!) a second time from the same protocol state
    with open(view.state_dir / ".protocol.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _answer_requests(msg, context, view, train_once, fit, view.state_dir, model_digest)


def _answer_requests(
    msg: Message,
    context: Context,
    view: NodeView,
    train_once,
    fit: dict,
    state_dir: Path | None,
    model_digest: bytes | None,
) -> tuple[list[bytes], Masked | None]:
    """Answer (or, for a repeat, send the kept reply again); `state_dir` None keeps nothing."""
    kit = cast(MemberKit, view.kit)
    requests = rec.read_protocol(msg.content)
    digest = replay.request_digest(msg.metadata.message_type, view.round, requests)
    if state_dir is not None and (kept := replay.load(state_dir, digest)) is not None:
        log.warning("member %d: round %d's request came again; sending the same reply", view.member, view.round)
        fit.update(kept.fit)
        return kept.replies, Masked.from_dict(kept.info)
    d = _vector_length(view.plan.task.name)
    params = protocol_params(view.plan, d, len(kit.roster))
    participant = load_participant(
        context, kit, params, view.policy.min_cohort, state_dir, max_model_uses=view.policy.max_model_uses
    )
    replies, masked = answer(participant, requests, view.round, train_once, model_digest)
    save_participant(context, participant, state_dir)
    replies = _maybe_deal_garbage(msg.content[rec.CONFIG], view, replies)
    if state_dir is not None:
        replay.save(state_dir, replay.KeptReply(digest, replies, masked.as_dict() if masked else {}, dict(fit)))
    return replies, masked


def _maybe_deal_garbage(config: ConfigRecord, view: NodeView, replies: list[bytes]) -> list[bytes]:
    """Simulation only: the member named by `sim-garbage-dealer = "<round>:<member>"` plays a
    malicious dealer in that round (garbage shares under valid signatures). A deployed node
    never reads the key, so no coordinator can make an honest member cheat."""
    spec = str(config.get(rec.SIM_GARBAGE_DEALER, ""))
    if not (view.simulation and spec and view.kit):
        return replies
    round_, member = (int(v) for v in spec.split(":"))
    if member != view.member:
        return replies
    out = []
    for raw in replies:
        reply = decode(raw)
        if isinstance(reply, ShareBundle) and rec.training_round(reply.round) == round_:
            raw = garble_share_bundle(reply, view.kit.identity, view.kit.context).encode()
        out.append(raw)
    return out


VERIFY_ENV = "FEDLOOM_VERIFY_DIR"


def _maybe_record_for_verification(
    msg: Message, view: NodeView, received: np.ndarray, update: np.ndarray, examples: int
) -> None:
    """Verification mode: hand the received model and the true update to a test harness so it can
    check the secure sum (the coordinator keeps only its last checkpoints).

    In a simulation the harness asks through the config; a deployed member only if it set
    FEDLOOM_VERIFY_DIR itself on its own machine (a coordinator's config is never enough)."""
    where = str(msg.content[rec.CONFIG].get(rec.SIM_VERIFY, "")) if view.simulation else os.environ.get(VERIFY_ENV, "")
    if where:
        path = Path(where) / f"r{view.round}-m{view.member}.npz"
        np.savez(path, received=received, update=update, examples=examples)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the final global model on this participant's held-out data."""
    view = view_of(msg, context)
    try:
        _sync_ledger(view, msg)
        received = _received_model(view, msg, view.round)
    except PolicyRefusal as refusal:
        return _refuse(msg, view, refusal)
    trainer, vector, ev = _eval(view, received)
    _keep_final_base(view, trainer, vector)
    return Message(RecordDict({rec.EVAL: ev, rec.WHO: _who(view)}), reply_to=msg)
