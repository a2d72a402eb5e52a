"""The member's adapter checks a mask request against the model it received, the round of the trip
and the rounds it already contributed to BEFORE it trains (issue 11 item 3): a refusal costs no
training and reveals nothing."""

from __future__ import annotations

import numpy as np
import pytest

from participant.secure import answer
from protocol.local import make_federation, stand_in_model_digest
from protocol.messages import MaskRequest, Refusal, decode
from protocol.params import ProtocolParams

N, D = 4, 8


def ready_round(training_round: int):
    """A federation whose coordinator round stands at the mask request."""
    fed = make_federation(N, ProtocolParams(vector_length=D, max_members=N, min_cohort=3))
    coord = fed.coordinator(training_round << 4)
    for p in fed.participants.values():
        coord.add_bundle(p.advertise(coord.advertise_request()))
    bset = coord.bundle_set()
    for p in fed.participants.values():
        coord.add_shares(p.share(bset))
    for m, dl in coord.deliveries().items():
        coord.add_receipt(fed.participants[m].receive(dl))
    return fed, coord


def ask(fed, req: MaskRequest, round_: int, received: bytes) -> tuple[object, list[int]]:
    trained: list[int] = []

    def train() -> tuple[np.ndarray, int]:
        trained.append(1)
        return np.zeros(D), 10

    out, _ = answer(fed.participants[1], [req.encode()], round_, train, received)
    return decode(out[0]), trained


@pytest.mark.parametrize(
    ("case", "rule"),
    [("other model", "model.mismatch"), ("other round", "round.mismatch"), ("same round again", "contribution.repeat")],
)
def test_a_bad_mask_request_is_refused_before_training(case, rule):
    fed, coord = ready_round(5)
    digest = stand_in_model_digest(5)
    req = coord.mask_request(training_round=5, model_digest=digest)
    if case == "same round again":
        fed.participants[1].masked_round = 5  # as if it had masked for round 5 in an earlier session
    received = stand_in_model_digest(4) if case == "other model" else digest
    reply, trained = ask(fed, req, 6 if case == "other round" else 5, received)
    assert isinstance(reply, Refusal) and reply.rule == rule, reply
    assert not trained  # no training happened


def test_a_good_mask_request_trains_once_and_counts_the_contribution():
    fed, coord = ready_round(5)
    digest = stand_in_model_digest(5)
    reply, trained = ask(fed, coord.mask_request(training_round=5, model_digest=digest), 5, digest)
    assert not isinstance(reply, Refusal) and trained == [1]
    assert fed.participants[1].masked_round == 5 and fed.participants[1].model_uses[digest] == 1
