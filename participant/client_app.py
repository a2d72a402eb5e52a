"""The ClientApp a participant runs: Flower delivers the coordinator's messages here.

Every message carries the plan and its hash. The member checks it against the plan in its own
kit and its own policy BEFORE doing anything else; a refusal goes back as a `refusal` record.

This module holds the Flower handlers only; the rest of a member's node is next to it:
- participant/node.py: what the node knows (`NodeView`: plan, kit, policy, data; deployment or
  simulation) and its trainer;
- participant/ledger_check.py: the member's own ledger copy, and the check of a received model;
- participant/member_models.py: the N+1 models kept after each trip (participant/models.py: files);
- participant/inner_state.py: the inner optimizer's state kept between rounds;
- participant/secure.py: the protocol's participant; participant/replay.py: repeated requests;
- participant/sim_taps.py: simulation-only taps (a garbage dealer, the harness's verification).
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from fedloom import records as rec
from fedloom import triplog
from fedloom.kits import MemberKit
from fedloom.malloc import return_big_buffers
from fedloom.policy import PolicyRefusal
from fedloom.raystore import release_store_pages
from fedloom.session import protocol_params
from protocol.errors import ProtocolError, Rule

from . import replay
from .inner_state import load_inner_state, save_inner_state
from .ledger_check import received_model, sync_ledger
from .member_models import keep_final_base, keep_models
from .node import NodeView, sizes_are_public, trainer_for, vector_length, view_of
from .secure import Masked, answer, load_participant, save_participant
from .sim_taps import deal_garbage, record_for_verification
from .trainer import LocalTrainer

log = logging.getLogger("fedloom.participant")


def _store_pages_go_first(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """In a simulation's Ray actor: the object-store pages of the last reply this actor wrote (and of
    the messages it read) leave its resident set before the next message is handled (fedloom.raystore;
    nothing happens outside Ray)."""
    release_store_pages()
    return call_next(msg, context)


app = ClientApp(mods=[_store_pages_go_first])
return_big_buffers()  # in every process that loads the ClientApp: its d-long buffers go back to the OS when dropped


def _check_policy(view: NodeView, msg: Message) -> None:
    agreed = view.kit.plan if view.kit else view.plan
    view.policy.check(view.plan, agreed, view.round, secure=view.plan.secure.enabled)
    sync_ledger(view, msg)


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
        received = received_model(view, msg, view.round - 1)
    except PolicyRefusal as refusal:
        return _refuse(msg, view, refusal)
    trainer, vector, ev = _eval(view, received)
    out = RecordDict({rec.EVAL: ev, rec.WHO: _who(view)})
    fit: dict = {}

    def train_once() -> tuple[np.ndarray, int]:
        inner = load_inner_state(context, view.plan, view.node_dir)
        triplog.note("train_start")
        result = trainer.train(vector, view.round, view.member, inner)
        triplog.note("train_end")
        save_inner_state(context, view.plan, inner, view.node_dir)
        keep_models(view, trainer, vector)
        fit.update(examples=result.num_examples, loss=result.train_loss)
        if view.plan.contribution.enabled:  # score the local model on the plan's public probe set
            fit["probe"] = trainer.probe_loss()
        record_for_verification(msg, view, vector, result.update, result.num_examples)
        return result.update, result.num_examples

    clipped = 0
    if not view.plan.secure.enabled:
        update, _ = train_once()
        out[rec.UPDATE] = rec.vector_record(update)
    else:
        replies, masked = _answer_protocol(msg, context, view, train_once, fit, rec.model_digest(vector))
        # whole in a simulation: Ray carries it out of band and the coordinator reads it in place
        out[rec.PROTOCOL] = rec.protocol_record(replies, whole=view.simulation)
        del replies  # the record holds the bytes now (the masked input is 4d of them)
        clipped = masked.clipped if masked is not None else 0
        if not fit and view.plan.contribution.enabled:
            # left out of this round (e.g. by the quality floor): train anyway, upload nothing, and
            # report the new probe score so this member can qualify again
            train_once()
    if fit:
        examples = fit["examples"] if sizes_are_public(view.plan) else 1  # as in _eval: private sizes stay home
        out[rec.FIT] = rec.FitReport(examples, fit["loss"], clipped, fit.get("probe")).to_metrics()
    return Message(out, reply_to=msg)


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
    d = vector_length(view.plan.task.ref)
    params = protocol_params(view.plan, d, len(kit.roster))
    participant = load_participant(
        context, kit, params, view.policy.min_cohort, state_dir, max_model_uses=view.policy.max_model_uses
    )
    replies, masked = answer(participant, requests, view.round, train_once, model_digest)
    save_participant(context, participant, state_dir)
    replies = deal_garbage(msg.content[rec.CONFIG], view, replies)
    if state_dir is not None:
        replay.save(state_dir, replay.KeptReply(digest, replies, masked.as_dict() if masked else {}, dict(fit)))
    return replies, masked


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the final global model on this participant's held-out data."""
    view = view_of(msg, context)
    try:
        sync_ledger(view, msg)
        received = received_model(view, msg, view.round)
    except PolicyRefusal as refusal:
        return _refuse(msg, view, refusal)
    trainer, vector, ev = _eval(view, received)
    keep_final_base(view, trainer, vector)
    return Message(RecordDict({rec.EVAL: ev, rec.WHO: _who(view)}), reply_to=msg)
