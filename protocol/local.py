"""An in-memory transport for whole rounds: tests, benchmarks and the attack harness use it.

It is the simplest honest "network": every reply goes straight to the coordinator, every request
straight to the participant, except for members told to drop at a given stage. It also shows the
order of calls an adapter (like fedloom's Flower round driver) has to make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .coordinator import AggregateResult, CoordinatorRound
from .errors import ProtocolError
from .participant import Participant

STAGES = ("advertise", "share", "mask", "sign", "unmask")


@dataclass
class RoundOutcome:
    result: AggregateResult | None
    error: ProtocolError | None
    refusals: dict[int, ProtocolError] = field(default_factory=dict)


def run_round(
    coordinator: CoordinatorRound,
    participants: Mapping[int, Participant],
    inputs: Mapping[int, np.ndarray],
    weights: Mapping[int, int] | None = None,
    drop: Mapping[str, set[int]] | None = None,
) -> RoundOutcome:
    """Run one round; members in drop[stage] never answer that stage (nor any later one)."""
    drop = drop or {}
    gone: set[int] = set()
    refusals: dict[int, ProtocolError] = {}

    def alive(stage: str, members) -> list[int]:  # noqa: ANN001
        gone.update(drop.get(stage, set()))
        return [m for m in members if m not in gone and m not in refusals]

    def ask(member: int, call):  # noqa: ANN001, ANN202
        try:
            return call()
        except ProtocolError as err:
            refusals[member] = err
            return None

    try:
        req = coordinator.advertise_request()
        for m in alive("advertise", participants):
            reply = ask(m, lambda m=m: participants[m].advertise(req))
            if reply is not None:
                ask(m, lambda reply=reply: coordinator.add_bundle(reply))
        bset = coordinator.bundle_set()
        for m in alive("share", coordinator.cohort):
            reply = ask(m, lambda m=m: participants[m].share(bset))
            if reply is not None:
                ask(m, lambda reply=reply: coordinator.add_shares(reply))
        deliveries = coordinator.deliveries()
        for m in alive("mask", deliveries):
            w = (weights or {}).get(m, 1)
            reply = ask(m, lambda m=m, w=w: participants[m].mask(deliveries[m], inputs[m], w))
            if reply is not None:
                ask(m, lambda reply=reply: coordinator.add_masked(reply))
        sreq = coordinator.survivor_request()
        for m in alive("sign", sreq.survivors):
            reply = ask(m, lambda m=m: participants[m].sign_survivors(sreq))
            if reply is not None:
                ask(m, lambda reply=reply: coordinator.add_signature(reply))
        ureq = coordinator.unmask_request()
        for m in alive("unmask", ureq.survivors):
            reply = ask(m, lambda m=m: participants[m].unmask(ureq))
            if reply is not None:
                ask(m, lambda reply=reply: coordinator.add_unmask(reply))
        return RoundOutcome(coordinator.finish(), None, refusals)
    except ProtocolError as err:
        return RoundOutcome(None, err, refusals)
