"""The participant's side of secure rounds: Flower records in, protocol messages out.

Per-round secrets live in the protocol's `Participant` state, kept in `context.state` (which stays
on this member's machine) between messages. Every refusal (a broken protocol rule) becomes a
`Refusal` message back to the coordinator and a log line here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context

from fedloom.files import atomic_write_bytes
from fedloom.kits import MemberKit
from protocol.errors import ProtocolError, Rule
from protocol.messages import MaskRequest, Refusal, decode
from protocol.params import ProtocolParams
from protocol.participant import MAX_MODEL_USES, Participant

log = logging.getLogger("fedloom.participant")
STATE_KEY = "fedloom.secagg"


STATE_FILE = "secagg.state"


@dataclasses.dataclass(frozen=True)
class Masked:
    """What this member's masked input carried: its weight, the training examples behind it and the
    update coordinates the quantizer clipped (reported to the coordinator as `FitReport.clipped`)."""

    weight: int
    examples: int
    clipped: int

    def as_dict(self) -> dict[str, int]:
        """The form kept in last-reply.npz (participant.replay)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, kept: dict) -> Masked | None:
        """Back from last-reply.npz: None when the kept reply masked nothing (an empty dict)."""
        return cls(**{f.name: int(kept[f.name]) for f in dataclasses.fields(cls)}) if kept else None


def load_participant(
    context: Context,
    kit: MemberKit,
    params: ProtocolParams,
    min_cohort: int,
    state_dir: Path | None = None,
    max_model_uses: int = MAX_MODEL_USES,
) -> Participant:
    """The member's protocol state: from its state directory in deployment (so rounds stay
    fresh across runs and restarts), else from Flower's per-run `context.state`."""
    if state_dir is not None:
        path = state_dir / STATE_FILE
        raw = path.read_bytes() if path.exists() else None
    else:
        raw = context.state[STATE_KEY]["state"] if STATE_KEY in context.state else None
    return Participant(
        kit.member.id,
        kit.identity,
        kit.roster,
        kit.context,
        params,
        min_cohort=min_cohort,
        max_model_uses=max_model_uses,
        state=raw if isinstance(raw, bytes) else None,
    )


def save_participant(context: Context, participant: Participant, state_dir: Path | None = None) -> None:
    data = participant.save()
    if state_dir is None:
        context.state[STATE_KEY] = ConfigRecord({"state": data})
        return
    atomic_write_bytes(state_dir / STATE_FILE, data, mode=0o600)  # round secrets: this member's only


def answer(
    participant: Participant,
    raw_messages: list[bytes],
    round_: int,
    train: Callable[[], tuple[np.ndarray, int]],
    model_digest: bytes | None = None,
) -> tuple[list[bytes], Masked | None]:
    """Answer each protocol message in order; `train()` runs only when masking is asked for, and
    only after the request was checked against the model this member received (`model_digest`)
    and the training rounds and models it already contributed to.

    Returns the encoded replies and, if this member masked an input, what it carried.
    """
    out: list[bytes] = []
    masked: Masked | None = None
    for data in raw_messages:
        msg = None
        try:
            msg = decode(data)
            if isinstance(msg, MaskRequest):
                if model_digest is None:
                    raise ProtocolError(Rule.OUT_OF_ORDER, "a mask request must come with the model")
                if msg.model_digest != model_digest:
                    raise ProtocolError(Rule.MODEL_MISMATCH, "the request names another model than the one received")
                if msg.training_round != round_:  # a label that could burn this member's later rounds
                    raise ProtocolError(Rule.WRONG_ROUND, f"mask request for round {msg.training_round}, not {round_}")
                participant.check_contribution(msg.training_round, model_digest)  # before any training
                update, examples = train()
                weight = participant.params.fedavg_weight(examples)
                if msg.weights:  # a contribution policy's public weight (the protocol checks the table)
                    weight = dict(zip(msg.shared, msg.weights, strict=False)).get(participant.member, weight)
                reply = participant.mask(msg, update, weight, model_digest)
                del update  # d floats: masked now, not needed while the reply is encoded
                masked = Masked(weight, int(examples), participant.clipped)
            else:
                reply = participant.handle(msg)
        except ProtocolError as err:
            # label it with the request's own (protocol) round: set-up for round r+1 rides on round r's trips
            pround = msg.round if msg is not None else round_
            log.warning("member %d refused a request of protocol round %d: %s", participant.member, pround, err)
            reply = Refusal(pround, participant.member, err.rule.value, err.detail)
        out.append(reply.encode())
        del reply  # a masked input's d ring elements go before the next message (or the record) is built
    return out, masked
