"""Secure rounds over Flower: the protocol's stages, pipelined into three trips per round.

Steady state, for round r (each line is one Flower round trip to every member):

    T1 "train"  down: global model + MaskRequest_r + AdvertiseRequest_{r+1}
                up:   evaluation of the model, MaskedInput_r, KeyBundle_{r+1}
    T2 "secagg" down: SurvivorRequest_r + BundleSet_{r+1}
                up:   SurvivorSignature_r, ShareBundle_{r+1}
    T3 "secagg" down: UnmaskRequest_r + ShareDelivery_{r+1}
                up:   UnmaskResponse_r, ShareReceipt_{r+1}

Key agreement and share distribution for round r+1 ride on round r's trips; they do not depend on
anyone's input, so doing them early changes nothing about what is revealed. The first round (and
any round whose set-up failed) pays three set-up trips first. Plaintext needs one trip per round;
fewer than three is impossible here: the masked input, the signed survivor set, and the shares
released after seeing that set are three strictly ordered steps.

Every reply is decoded and handed to the protocol as it arrives; a malformed or rule-breaking
message marks its sender as faulty for that round and never stops the round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedloom import records as rec
from fedloom.plan import Plan
from fedloom.session import protocol_params, session_context
from protocol.coordinator import CoordinatorRound
from protocol.errors import ProtocolError
from protocol.messages import (
    KeyBundle,
    MaskedInput,
    Refusal,
    ShareBundle,
    ShareReceipt,
    SurvivorSignature,
    UnmaskResponse,
    decode,
)
from protocol.messages import (
    Message as ProtocolMessage,
)
from protocol.params import ProtocolParams
from protocol.roster import Roster
from protocol.stages import REPLY_STAGE, Stage

from .contribution import assign
from .journal import Journal
from .ledger_feed import LedgerFeed
from .results import EvalSummary, RoundResult
from .transport import told_exchange

log = logging.getLogger("fedloom.coordinator")


UNREADABLE = (KeyError, TypeError, ValueError, AttributeError)  # what reading a malformed record raises


@dataclass
class RunHooks:
    """Simulation-only hooks at the adapter boundary (the protocol code stays the production code).

    drop(round, stage, member): True if the member is gone from `stage` of `round` onwards.
    extra_config: added to every message's config (e.g. the simulated kits' directory).
    tamper(round, stage, member, message) -> message | None: an adversarial coordinator rewrites
        (or withholds) what it sends.
    observe(node, message): sees every decoded protocol message that arrives.
    inject(round, after_stage) -> {member: [message, ...]}: extra requests an adversarial
        coordinator sends in a trip of their own after the Stage.SIGN or Stage.UNMASK trip.
    after_round(round, coordinator, aggregate, result): the harness inspects a finished round.
    """

    drop: Callable[[int, Stage, int], bool] = lambda r, s, m: False
    extra_config: dict = field(default_factory=dict)
    tamper: Callable | None = None
    observe: Callable | None = None
    inject: Callable | None = None
    after_round: Callable | None = None


@dataclass
class _Session:
    """One round's coordinator state machine plus what the adapter tracks around it."""

    round: int
    proto: CoordinatorRound
    gone: set[int] = field(default_factory=set)  # members dropped (by the fault plan) this round
    dropped_log: list[dict] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    resent: list[dict] = field(default_factory=list)  # messages sent again to a node back from a lapse
    mask_request: ProtocolMessage | None = None  # C1, fixed when share receipts are in (model bound at T1)
    contribution: dict | None = None  # the contribution policy's decision for this round
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return not self.proto.aborted


class SecureRounds:
    secure = True

    def __init__(
        self,
        grid: Grid,
        plan: Plan,
        nodes: list[int],
        roster: Roster,
        vector_length: int,
        hooks: RunHooks | None = None,
        restart: int = 0,
        ledger: LedgerFeed | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.grid, self.plan, self.nodes, self.roster = grid, plan, nodes, roster
        self.params: ProtocolParams = protocol_params(plan, vector_length, len(roster))
        self.context = session_context(plan)
        self.hooks = hooks or RunHooks()
        self.member_of: dict[int, int] = {}  # node id -> member id (learned from signed bundles)
        self.current: _Session | None = None
        self.next: _Session | None = None
        self._fit: dict[int, rec.FitReport] = {}  # member -> its training report this round
        self._evals: list[tuple[float, float, int]] = []
        self._orphan_refusals: list[dict] = []
        self.declared: dict[int, int] = {}  # member -> declared training examples (public)
        self.scores: dict[int, float] = {}  # member -> latest probe loss of its local model (public)
        self.restart = restart  # protocol rounds stay fresh across coordinator restarts
        self._attempts: dict[int, int] = {}
        self.ledger = ledger
        self.journal = journal or Journal(None, plan.rounds)
        self.journal.member_of = self.member_of  # the same map: names appear as bundles authenticate nodes

    # ------------------------------------------------------------------ plumbing
    def _new_session(self, round_: int) -> _Session:
        """A fresh protocol session for a training round. Protocol round numbers are never reused:
        (restart epoch << 32) | (training round << 4) | attempt, so a set-up that failed can be
        retried and a restarted coordinator never repeats a number members have seen."""
        attempt = self._attempts.get(round_, 0)
        if attempt >= 16:
            raise RuntimeError(f"round {round_}: too many set-up attempts")
        self._attempts[round_] = attempt + 1
        pround = rec.protocol_round(round_, attempt, self.restart)
        return _Session(round_, CoordinatorRound(pround, self.roster, self.context, self.params, workers=2))

    def _node_of(self, member: int) -> int | None:
        for node, m in self.member_of.items():
            if m == member:
                return node
        return None

    def _gone(self, s: _Session, stage: Stage | None, member: int) -> bool:
        if member in s.gone:
            return True
        if stage is not None and self.hooks.drop(s.round, stage, member):
            s.gone.add(member)
            s.dropped_log.append({"member": member, "stage": stage})
            return True
        return False

    def _config(self, round_: int, node: int | None = None) -> ConfigRecord:
        extra = dict(self.hooks.extra_config)
        if self.ledger is not None and node is not None:
            extra.update(self.ledger.config_for(node))
        return rec.request_config(round_, self.plan.canonical_json(), self.plan.hash, extra)

    def _outgoing(self, s: _Session, stage: Stage, member: int, msg: ProtocolMessage) -> bytes | None:
        if self._gone(s, stage, member):
            return None
        if self.hooks.tamper is not None:
            msg = self.hooks.tamper(s.round, stage, member, msg)
            if msg is None:
                return None
        return msg.encode()

    def _trip(
        self, round_: int, kind: str, payload: dict[int, list[bytes]], with_model: np.ndarray | None, stage: str = ""
    ) -> None:
        """One round trip: node -> encoded protocol messages (plus the model on a training trip).
        `stage` names it on the operator's console. The model's record is built once and shared by
        every node's message (Flower serializes it into the record: one copy of 4d bytes, not n)."""
        model = _SharedModel(with_model) if with_model is not None else None

        def build(node: int) -> Message | None:
            if kind != "train" and not payload.get(node):
                return None
            cfg = self._config(round_, node if kind == "train" else None)
            content = RecordDict({rec.CONFIG: cfg, rec.PROTOCOL: rec.protocol_record(payload.get(node, []))})
            if model is not None:
                content[rec.MODEL] = model.record()
            mtype = MessageType.TRAIN if kind == "train" else rec.SECAGG_ACTION
            return Message(content, dst_node_id=node, message_type=mtype)

        asked = [n for n in self.nodes if kind == "train" or payload.get(n)]
        stage = stage or kind
        trip = told_exchange(
            self.grid,
            self.nodes,
            build,
            self._on_reply,
            self.plan,
            self.journal,
            round_,
            stage,
            asked,
            one_at_a_time=kind == "train",  # masked inputs: fold each in and free it before taking the next
            after_push=model.release if model is not None else None,
        )
        if trip.resent and (s := self._session(round_)) is not None:
            s.resent += [
                {"member": self.member_of.get(n), "node": n, "trip": kind, "times": k} for n, k in trip.resent.items()
            ]

    def _on_reply(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        try:
            self._take_reply(node, reply.content)
        except UNREADABLE as err:  # a member's records that are not what fedloom writes: its reply is left out
            log.warning("node %s sent a reply that cannot be read (%s: %s); ignored", node, type(err).__name__, err)

    def _take_reply(self, node: int, content: RecordDict) -> None:
        if rec.EVAL in content:
            e = rec.EvalReport.from_record(content[rec.EVAL])
            self._evals.append((e.loss, e.accuracy, e.examples))
        if rec.REFUSAL in content:
            r = rec.RefusalReport.from_record(content[rec.REFUSAL])
            self._refusal(r.round, r.member, r.rule, r.detail)
        who = rec.Who.of(content)
        claimed = who.member if who is not None else None
        if who is not None and who.examples is not None:
            self.declared[who.member] = who.examples
        if self.ledger is not None and who is not None:
            self.ledger.observe(node, who)
        # views into the reply (a masked input is not copied), none longer than a masked input can be
        for raw in rec.protocol_views(content, self.params.max_message_bytes):
            self._route(node, claimed, raw)
        if rec.FIT in content and claimed is not None:
            fit = rec.FitReport.from_metrics(content[rec.FIT])
            self._fit[claimed] = fit
            if fit.probe_loss is not None:
                self.scores[claimed] = fit.probe_loss

    def _sessions(self) -> list[_Session]:
        return [s for s in (self.current, self.next) if s is not None]

    def _session(self, round_: int) -> _Session | None:
        return next((s for s in self._sessions() if s.round == round_), None)

    def _session_of(self, protocol_round: int) -> _Session | None:
        return next((s for s in self._sessions() if s.proto.round == protocol_round), None)

    @staticmethod
    def _training_round(protocol_round: int) -> int:
        return rec.training_round(protocol_round)

    def _refusal(self, round_: int, member: int, rule: str, detail: str) -> None:
        entry = {"member": member, "round": round_, "rule": rule, "reason": detail}
        s = self._session(round_)
        target = s.refusals if s else self._orphan_refusals
        if entry not in target:
            target.append(entry)
            self.journal.refusal(round_, member, rule, detail)

    def _route(self, node: int, claimed: int | None, raw: bytes) -> None:
        try:
            msg = decode(raw)
        except ProtocolError as err:
            log.warning("node %s sent an undecodable message: %s", node, err)
            return
        if self.hooks.observe is not None:
            self.hooks.observe(node, msg)
        s = self._session_of(msg.round)
        if isinstance(msg, Refusal):
            self._refusal(self._training_round(msg.round), msg.member, msg.rule, msg.detail)
            return
        if s is None or not s.alive:
            return
        member = getattr(msg, "member", None)
        if member is not None and self.member_of.get(node, member) != member:
            log.warning("node %s sent a message as member %s but is member %s", node, member, self.member_of[node])
            return
        if member is not None and self._gone(s, REPLY_STAGE.get(type(msg)), member):
            return  # the fault plan says this member crashed before its reply got out
        self._deliver(s, node, member, msg)

    def _deliver(self, s: _Session, node: int, member: int | None, msg: ProtocolMessage) -> None:
        """Hand a routed reply to its session's CoordinatorRound; a reply it refuses is logged and left out."""
        try:
            if isinstance(msg, KeyBundle):
                s.proto.add_bundle(msg)
                self.member_of[node] = msg.member  # authenticated: the bundle is signed by that member
            elif isinstance(msg, ShareBundle):
                s.proto.add_shares(msg)
            elif isinstance(msg, ShareReceipt):
                s.proto.add_receipt(msg)
            elif isinstance(msg, MaskedInput):
                s.proto.add_masked(msg)
            elif isinstance(msg, SurvivorSignature):
                s.proto.add_signature(msg)
            elif isinstance(msg, UnmaskResponse):
                s.proto.add_unmask(msg)
        except ProtocolError as err:
            log.warning("round %d: rejected %s from member %s: %s", s.round, type(msg).__name__, member, err)

    def _close(self, s: _Session | None, step: Callable[[], object]) -> object | None:
        """Run a closing step of a session; an abort (too few members) is logged, not raised."""
        if s is None or not s.alive:
            return None
        try:
            return step()
        except ProtocolError as err:
            log.warning("round %d aborted: %s", s.round, err)
            return None

    # ------------------------------------------------------------------ set-up (3 trips)
    def _advertise_payload(self, s: _Session, payload: dict[int, list[bytes]]) -> None:
        req = s.proto.advertise_request()
        for node in self.nodes:
            member = self.member_of.get(node)  # unknown before a node's first signed bundle
            enc = self._outgoing(s, Stage.ADVERTISE, member, req) if member is not None else req.encode()
            if enc is not None:
                payload.setdefault(node, []).append(enc)

    def _close_mask_request(self, s: _Session | None) -> None:
        """Fix C1 (and, under a contribution policy, the public weights and floor exclusions)."""
        if s is None:
            return
        if not self.plan.contribution.enabled:
            s.mask_request = self._close(s, s.proto.mask_request)
            return
        c = self.plan.contribution
        a = assign(
            sorted(s.proto.ready()),
            self.declared,
            self.scores,
            floor=c.floor,
            cap=c.cap,
            weighting=c.weighting,
            max_weight=self.params.max_weight,
        )
        s.contribution = {
            "floor": c.floor,
            "cap": c.cap,
            "scores": dict(a.scores),
            "weights": dict(a.weights),
            "shares": {m: round(v, 6) for m, v in a.shares.items()},
            "excluded": dict(a.excluded),
        }
        if a.skipped:
            s.contribution["skipped"] = a.skipped
        s.mask_request = self._close(s, lambda: s.proto.mask_request(exclude=a.excluded, weights=a.weights))

    def _setup(self, round_: int) -> _Session:
        """Key advertisement, sharing and delivery for `round_` as three trips of their own."""
        s = self._new_session(round_)
        self.next = s
        t0 = time.perf_counter()
        payload: dict[int, list[bytes]] = {}
        self._advertise_payload(s, payload)
        self._trip(round_, "secagg", payload, None, "set-up 1/3: advertise keys")
        bset = self._close(s, s.proto.bundle_set)
        payload = self._per_member(s, Stage.SHARE, lambda m: bset) if bset else {}
        self._trip(round_, "secagg", payload, None, "set-up 2/3: share keys")
        deliveries = self._close(s, s.proto.deliveries)
        payload = self._per_member(s, Stage.RECEIVE, lambda m: deliveries.get(m)) if deliveries else {}
        self._trip(round_, "secagg", payload, None, "set-up 3/3: deliver shares")
        self._close_mask_request(s)
        s.seconds["setup"] = time.perf_counter() - t0
        return s

    def _per_member(
        self,
        s: _Session,
        stage: Stage,
        message_for: Callable[[int], ProtocolMessage | None],
        members: tuple[int, ...] | None = None,
    ) -> dict[int, list[bytes]]:
        payload: dict[int, list[bytes]] = {}
        for m in members if members is not None else s.proto.cohort:
            node = self._node_of(m)
            msg = message_for(m)
            if node is None or msg is None:
                continue
            enc = self._outgoing(s, stage, m, msg)
            if enc is not None:
                payload.setdefault(node, []).append(enc)
        return payload

    # ------------------------------------------------------------------ one training round
    def train_round(self, round_: int, model: np.ndarray) -> RoundResult:
        self._evals, self._fit, self._orphan_refusals = [], {}, []
        self.current = None
        last = round_ == self.plan.rounds
        if self.next is None or self.next.round != round_ or self.next.proto.stage is not Stage.MASK:
            self._setup(round_)
        cur, self.current, self.next = self.next, self.next, None
        t0 = time.perf_counter()

        # T1: train + mask round r; advertise round r+1
        nxt = None if last else self._new_session(round_ + 1)
        self.next = nxt
        mreq = None
        if cur.alive and cur.mask_request is not None:  # C1 was fixed earlier; now the model is known
            digest = rec.model_digest(model)
            mreq = self._close(cur, lambda: cur.proto.bind_model(round_, digest))
        payload = self._per_member(cur, Stage.MASK, lambda m: mreq, cur.proto.shared) if mreq else {}
        if nxt is not None:
            self._advertise_payload(nxt, payload)
        self._trip(round_, "train", payload, model, "train + mask")
        incoming_eval = EvalSummary.combine(self._evals)
        fit = dict(self._fit)
        t1 = time.perf_counter()

        # T2: sign survivors of round r; share keys of round r+1
        sreq = self._close(cur, cur.proto.survivor_request)
        payload = self._per_member(cur, Stage.SIGN, lambda m: sreq, sreq.survivors) if sreq else {}
        if nxt is not None:
            bset = self._close(nxt, nxt.proto.bundle_set)
            if bset is not None:
                for node, encs in self._per_member(nxt, Stage.SHARE, lambda m: bset).items():
                    payload.setdefault(node, []).extend(encs)
        self._trip(round_, "secagg", payload, None, "sign survivors")
        self._injected(cur, Stage.SIGN)
        t2 = time.perf_counter()

        # T3: unmask round r; deliver shares of round r+1
        ureq = self._close(cur, cur.proto.unmask_request)
        payload = self._per_member(cur, Stage.UNMASK, lambda m: ureq, ureq.survivors) if ureq else {}
        if nxt is not None:
            deliveries = self._close(nxt, nxt.proto.deliveries)
            if deliveries:
                for node, encs in self._per_member(nxt, Stage.RECEIVE, lambda m: deliveries.get(m)).items():
                    payload.setdefault(node, []).extend(encs)
        self._trip(round_, "secagg", payload, None, "unmask")
        self._injected(cur, Stage.UNMASK)
        t3 = time.perf_counter()
        agg = self._close(cur, cur.proto.finish)
        self._close_mask_request(nxt)
        t4 = time.perf_counter()
        cur.seconds.update({"train_mask": t1 - t0, "sign": t2 - t1, "unmask": t3 - t2, "reconstruct": t4 - t3})
        return self._result(cur, agg, fit, incoming_eval)

    def _injected(self, s: _Session, after: Stage) -> None:
        """An adversarial coordinator's extra trip (simulation only): whatever it wants to send."""
        if self.hooks.inject is None:
            return
        extra = self.hooks.inject(s.round, after) or {}
        payload: dict[int, list[bytes]] = {}
        for member, msgs in extra.items():
            node = self._node_of(member)
            if node is not None and member not in s.gone:
                payload[node] = [m.encode() for m in msgs]
        if payload:
            self._trip(s.round, "secagg", payload, None, f"extra trip after {after}")

    def _result(self, s: _Session, agg, fit: dict[int, rec.FitReport], incoming_eval) -> RoundResult:
        res = RoundResult(s.round, None, asked=list(s.proto.shared) or list(s.proto.cohort))
        res.incoming_eval = incoming_eval
        res.stage_seconds = dict(s.seconds)
        res.dropped = list(s.dropped_log)
        res.resent = list(s.resent)
        noted = {d["member"] for d in res.dropped}
        res.dropped += [{"member": m, "stage": stage} for m, stage in s.proto.dropouts().items() if m not in noted]
        res.refusals = s.refusals + self._orphan_refusals
        res.contribution = s.contribution
        res.faults = [{"member": m, "rule": r} for m, r in sorted(s.proto.faults.items())]
        reports = list(fit.values())
        if reports:
            total = sum(f.examples * f.train_loss for f in reports)
            res.train_loss = total / max(1, sum(f.examples for f in reports))
        res.clipped = sum(f.clipped for f in reports)
        if res.clipped:
            log.warning(
                "round %d: %d update coordinates exceeded secure.clip = %s and were clipped",
                s.round,
                res.clipped,
                self.plan.secure.clip,
            )
        refused = {r["member"] for r in res.refusals}
        res.dropped = [d for d in res.dropped if d.get("member") not in refused]  # refusals are listed apart
        if agg is None:
            res.skipped = _why_skipped(s)
            return res
        mean, weight = agg.weighted_mean(self.params)
        if mean is None:
            res.skipped = "the aggregate has zero total weight"
            return res
        res.mean_update = mean
        res.total_weight = float(weight)
        res.aggregated = list(agg.survivors)
        res.weights_capped = self._capped(res.aggregated, s.contribution)
        if self.hooks.after_round is not None:
            self.hooks.after_round(s.round, s.proto, agg, res)
        return res

    def _capped(self, members: list[int], contribution: dict | None) -> list[dict]:
        """Members whose FedAvg weight (their example count) was capped at max_weight in the sum.

        Known only where members declare their sizes (the plan makes them public); a contribution
        policy sets public weights of its own, reported in `contribution`."""
        if contribution is not None:
            return []
        return [
            {"member": m, "examples": self.declared[m], "weight": self.params.fedavg_weight(self.declared[m])}
            for m in sorted(members)
            if self.declared.get(m, 0) > self.params.max_weight
        ]

    def evaluate(self, round_: int, model: np.ndarray) -> EvalSummary | None:
        self._evals = []
        shared = _SharedModel(model)

        def build(node: int) -> Message:
            content = RecordDict({rec.MODEL: shared.record(), rec.CONFIG: self._config(round_, node)})
            return Message(content, dst_node_id=node, message_type=MessageType.EVALUATE)

        told_exchange(
            self.grid,
            self.nodes,
            build,
            self._on_reply,
            self.plan,
            self.journal,
            round_,
            "final evaluation",
            after_push=shared.release,
        )
        return EvalSummary.combine(self._evals)


class _SharedModel:
    """A trip's model record: built on first use and shared by every node's message (Flower
    serializes the vector into it: 4d bytes once, not once per node), let go once the messages are
    pushed (a node sent again gets it built again)."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self._record: ArrayRecord | None = None

    def record(self) -> ArrayRecord:
        if self._record is None:
            self._record = rec.vector_record(self.vector)
        return self._record

    def release(self) -> None:
        self._record = None


def _why_skipped(s: _Session) -> str:
    """A skipped round's reason for rounds_skipped: the quality floor when it left nobody, else the abort."""
    if s.contribution is not None and s.contribution.get("skipped"):
        return f"quality floor: {s.contribution['skipped']}"
    err = s.proto.abort_reason
    return f"secure aggregation aborted: {err}" if err else "secure aggregation did not complete"
