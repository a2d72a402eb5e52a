"""The participant's side of secure rounds: Flower records in, protocol messages out.

Per-round secrets live in the protocol's `Participant` state, kept in `context.state` (which stays
on this member's machine) between messages. Every refusal (a broken protocol rule) becomes a
`Refusal` message back to the coordinator and a log line here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context

from fedloom.kits import MemberKit
from fedloom.plan import Plan
from protocol.errors import ProtocolError
from protocol.messages import MaskRequest, Refusal, decode
from protocol.params import ProtocolParams
from protocol.participant import Participant

log = logging.getLogger("fedloom.participant")
STATE_KEY = "fedloom.secagg"


def protocol_params(plan: Plan, vector_length: int, members: int) -> ProtocolParams:
    """The plan's secure-aggregation parameters for a model of `vector_length` parameters."""
    s = plan.secure
    return ProtocolParams.for_federation(
        vector_length, members, bits=s.bits, max_weight=s.max_weight or None, clip=s.clip,
        threshold_fraction=s.threshold, neighbours=s.neighbours, min_cohort=s.min_cohort,
    )


def load_participant(context: Context, kit: MemberKit, params: ProtocolParams, min_cohort: int) -> Participant:
    raw = context.state[STATE_KEY]["state"] if STATE_KEY in context.state else None
    return Participant(kit.member.id, kit.identity, kit.roster, kit.context, params,
                       min_cohort=min_cohort, state=raw if isinstance(raw, bytes) else None)


def save_participant(context: Context, participant: Participant) -> None:
    context.state[STATE_KEY] = ConfigRecord({"state": participant.save()})


def answer(
    participant: Participant,
    raw_messages: list[bytes],
    round_: int,
    train: Callable[[], tuple[np.ndarray, int]],
) -> tuple[list[bytes], dict]:
    """Answer each protocol message in order; `train()` runs only when masking is asked for.

    Returns the encoded replies and what training reported (weight, examples, clipped).
    """
    out: list[bytes] = []
    info: dict = {}
    for data in raw_messages:
        try:
            msg = decode(data)
            if isinstance(msg, MaskRequest):
                update, examples = train()
                weight = min(int(examples), participant.params.max_weight)
                info.update(weight=weight, examples=int(examples))
                reply = participant.mask(msg, update, weight)
                info["clipped"] = participant.last_clipped
            else:
                reply = participant.handle(msg)
        except ProtocolError as err:
            log.warning("member %d refused a request of round %d: %s", participant.member, round_, err)
            reply = Refusal(round_, participant.member, err.rule.value, err.detail)
        out.append(reply.encode())
    return out, info
