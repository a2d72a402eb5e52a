"""Plaintext rounds (secure aggregation OFF): one trip, Flower's own FedAvg computes the mean.

Kept for comparison and debugging only: the coordinator sees every individual update here.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedloom import records as rec
from fedloom.plan import Plan

from .journal import Journal
from .ledger_feed import LedgerFeed
from .results import EvalSummary, RoundResult
from .secure import RunHooks
from .transport import Exchange, told_exchange

log = logging.getLogger("fedloom.coordinator")


class PlainRounds:
    secure = False

    def __init__(
        self,
        grid: Grid,
        plan: Plan,
        nodes: list[int],
        hooks: RunHooks | None = None,
        ledger: LedgerFeed | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.grid, self.plan, self.nodes = grid, plan, nodes
        self.hooks = hooks or RunHooks()
        self.ledger = ledger
        self.journal = journal or Journal(None, plan.rounds)
        self.fedavg = FedAvg(arrayrecord_key=rec.UPDATE, weighted_by_key=rec.NUM_EXAMPLES)

    def _config(self, round_: int, node: int | None = None) -> ConfigRecord:
        extra = dict(self.hooks.extra_config)
        if self.ledger is not None and node is not None:
            extra.update(self.ledger.config_for(node))
        return rec.request_config(round_, self.plan.canonical_json(), self.plan.hash, extra)

    def _content(self, round_: int, model, node: int) -> RecordDict:
        return RecordDict({rec.MODEL: rec.vector_record(model), rec.CONFIG: self._config(round_, node)})

    def _message(self, round_: int, model, kind: str):
        def build(node: int) -> Message:
            return Message(self._content(round_, model, node), dst_node_id=node, message_type=kind)

        return build

    def train_round(self, round_: int, model: np.ndarray) -> RoundResult:
        t0 = time.perf_counter()
        everything: list[Message] = []
        build = self._message(round_, model, MessageType.TRAIN)
        trip = self._exchange(round_, "train", build, everything.append)
        result = RoundResult(round_, None, asked=sorted(self.nodes))
        result.dropped = [{"node": n, "stage": "train", "error": e} for n, e in trip.errors.items()]
        result.dropped += [
            {"node": n, "stage": "train"} for n in self.nodes if n not in trip.replied and n not in trip.errors
        ]
        result.resent = [{"node": n, "stage": "train", "times": k} for n, k in trip.resent.items()]
        for r in everything:
            if self.ledger is not None and (who := rec.Who.of(r.content)) is not None:
                self.ledger.observe(r.metadata.src_node_id, who)
            if rec.REFUSAL in r.content:
                ref = rec.RefusalReport.from_record(r.content[rec.REFUSAL])
                entry = {"member": ref.member, "round": ref.round, "rule": ref.rule, "reason": ref.detail}
                result.refusals.append(entry)
                self.journal.refusal(entry["round"], entry["member"], entry["rule"], entry["reason"])
        # sorted by member: floating-point sums depend on order, and reruns (resume) must match
        replies = sorted((r for r in everything if rec.UPDATE in r.content), key=_member)
        replies = _finite_only(round_, replies, result)
        members = {r.metadata.src_node_id: _member(r) for r in replies}
        result.incoming_eval = _eval_of(everything)
        if not replies:
            result.skipped = _why_nothing(result)
            return result
        arrays, metrics = self.fedavg.aggregate_train(round_, replies)
        result.mean_update = arrays[rec.VECTOR].numpy()
        result.total_weight = float(sum(r.content[rec.FIT][rec.NUM_EXAMPLES] for r in replies))
        result.train_loss = rec.FitReport.mean_train_loss(metrics) if metrics else None
        result.aggregated = sorted(members.values())
        result.stage_seconds = {"train": time.perf_counter() - t0}
        return result

    def evaluate(self, round_: int, model: np.ndarray) -> EvalSummary | None:
        replies: list[Message] = []
        build = self._message(round_, model, MessageType.EVALUATE)
        self._exchange(round_, "final evaluation", build, replies.append)
        return _eval_of(replies)

    def _exchange(self, round_: int, stage: str, build, on_reply) -> Exchange:
        """One trip to every node, told on the operator's console (names learned from replies)."""

        def take(reply: Message) -> None:
            if (who := rec.Who.of(reply.content)) is not None:
                self.journal.member_of[reply.metadata.src_node_id] = who.member
            on_reply(reply)

        return told_exchange(self.grid, self.nodes, build, take, self.plan, self.journal, round_, stage)


def _why_nothing(result: RoundResult) -> str:
    """A skipped plaintext round's reason: refusals name their rules (not "no participant replied")."""
    if result.faults:
        return "no finite update"
    if result.refusals:
        rules = ", ".join(sorted({f"[{r['rule']}]" for r in result.refusals}))
        return f"every participant that answered refused ({rules})"
    return "no participant replied"


def _finite_only(round_: int, replies: list[Message], result: RoundResult) -> list[Message]:
    """The replies whose update and weight are finite numbers; the others are faults of their sender.

    One NaN or Inf in one member's update makes the mean NaN/Inf in every coordinate it touches, and
    the optimizer carries it into the global model for good: such a member is left out of this round
    (logged, and recorded in the round's faults) and the round goes on with the rest."""
    kept = []
    for reply in replies:
        member = _member(reply)
        why = _non_finite(reply)
        if why is None:
            kept.append(reply)
            continue
        log.warning("round %d: member %d left out of the aggregate: %s", round_, member, why)
        result.faults.append({"member": member, "rule": "non-finite-update", "reason": why})
    return kept


def _non_finite(reply: Message) -> str | None:
    """Why a plaintext reply cannot enter the mean (None: it can)."""
    vector = rec.read_vector(reply.content, rec.UPDATE)  # a view: Flower's .numpy() copies d floats
    bad = int(np.size(vector) - np.count_nonzero(np.isfinite(vector)))
    if bad:
        return f"{bad} of {np.size(vector)} update coordinates are NaN or infinite"
    weight = float(reply.content[rec.FIT][rec.NUM_EXAMPLES])
    if not math.isfinite(weight) or weight < 0:
        return f"its example count {weight} is not a finite non-negative number"
    return None


def _eval_of(replies: list[Message]) -> EvalSummary | None:
    reports = [rec.EvalReport.from_record(r.content[rec.EVAL]) for r in replies if rec.EVAL in r.content]
    return EvalSummary.combine([(e.loss, e.accuracy, e.examples) for e in reports])


def _member(reply: Message) -> int:
    """The member a reply with an update comes from (such replies always say who they are)."""
    return rec.Who.from_record(reply.content[rec.WHO]).member
