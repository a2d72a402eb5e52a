"""Numbers a user can trust (issue 13, item 7): exactness against what the round aggregated, refusals
listed apart from dropouts, a quality-floor skip named as such, FedAvg weights capped at max_weight
reported."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from coordinator.secure import RunHooks, SecureRounds, _Session
from protocol.params import ProtocolParams
from simulations.harness import _exactness

PARAMS = ProtocolParams(vector_length=4, clip=1.0, max_weight=100)


def true_updates(tmp_path, updates: dict[int, tuple[np.ndarray, int]]) -> SimpleNamespace:
    for m, (u, n) in updates.items():
        np.savez(tmp_path / f"r1-m{m}.npz", update=u.astype(np.float32), examples=np.int64(n))
    return SimpleNamespace(verify=tmp_path)


def test_exactness_compares_with_the_clipped_inputs(tmp_path):
    """An update beyond the clip: the secure sum holds it clipped, so that is the reference (before the fix the
    reference was the unclipped update and the error reported was the clipping, 4.0 here)."""
    ws = true_updates(tmp_path, {1: (np.array([9.0, 0.5, 0, 0]), 50), 2: (np.array([0.1, 0.2, 0, 0]), 50)})
    secure_mean = (np.array([1.0, 0.5, 0, 0]) * 50 + np.array([0.1, 0.2, 0, 0]) * 50) / 100
    assert _exactness(ws, 1, [1, 2], secure_mean, PARAMS) < 1e-6


def test_exactness_uses_the_weights_the_round_used(tmp_path):
    """Under a contribution policy the sum is weighted by the public weights, not by example counts
    (before the fix: 0.45 reported here for an exact sum); counts above max_weight are capped."""
    ws = true_updates(tmp_path, {1: (np.array([1.0, 0, 0, 0]), 900), 2: (np.array([0.1, 0, 0, 0]), 10)})
    public = {1: 1, 2: 3}
    secure_mean = (np.array([1.0, 0, 0, 0]) * 1 + np.array([0.1, 0, 0, 0]) * 3) / 4
    assert _exactness(ws, 1, [1, 2], secure_mean, PARAMS, public) < 1e-6
    capped_mean = (np.array([1.0, 0, 0, 0]) * 100 + np.array([0.1, 0, 0, 0]) * 10) / 110
    assert _exactness(ws, 1, [1, 2], capped_mean, PARAMS) < 1e-6


def rounds_stub(declared: dict[int, int] | None = None) -> SecureRounds:
    rounds = SecureRounds.__new__(SecureRounds)
    rounds.params, rounds.hooks, rounds._orphan_refusals = PARAMS, RunHooks(), []
    rounds.declared = declared or {}
    rounds.plan = SimpleNamespace(secure=SimpleNamespace(clip=1.0))
    return rounds


def session(refusals=(), dropouts=None, contribution=None, abort="[cohort.too-small] 1 bundles, 3 needed"):
    proto = SimpleNamespace(
        shared=(1, 2, 3, 4), cohort=(1, 2, 3, 4), faults={}, abort_reason=abort, dropouts=lambda: dropouts or {}
    )
    s = _Session(1, proto)  # type: ignore[arg-type]
    s.refusals, s.contribution = list(refusals), contribution
    return s


def test_members_that_refuse_are_not_listed_as_dropped():
    refusal = {"member": 2, "round": 1, "rule": "policy.plan", "reason": "not this plan"}
    res = rounds_stub()._result(session([refusal], dropouts={2: "advertise", 3: "mask"}), None, {}, None)
    assert res.refusals == [refusal]
    assert res.dropped == [{"member": 3, "stage": "mask"}]  # 2 refused: it is in refusals only
    assert res.skipped == "secure aggregation aborted: [cohort.too-small] 1 bundles, 3 needed"


def test_a_round_the_quality_floor_emptied_says_so():
    decision = {"skipped": "every member is below the quality floor", "weights": {}, "excluded": {1: "x"}}
    res = rounds_stub()._result(session(contribution=decision), None, {}, None)
    assert res.skipped == "quality floor: every member is below the quality floor"


def test_weights_capped_at_max_weight_are_reported():
    rounds = rounds_stub(declared={1: 40, 2: 250, 3: 100})
    assert rounds._capped([1, 2, 3], None) == [{"member": 2, "examples": 250, "weight": 100}]
    assert rounds._capped([1, 2, 3], {"weights": {1: 1, 2: 1, 3: 1}}) == []  # public weights: none capped
