"""The contribution policy: quality floor, anti-capture cap with renormalisation, ties, and a
member excluded by the floor leaving the secure sum of the others exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from coordinator.contribution import assign, capped_shares, integer_weights
from protocol.local import make_federation, stand_in_model_digest
from protocol.params import ProtocolParams


def test_shares_follow_declared_examples_without_a_cap():
    shares = capped_shares({1: 100, 2: 300}, cap=1.0)
    assert shares == pytest.approx({1: 0.25, 2: 0.75})


def test_cap_limits_the_largest_and_renormalises_the_rest():
    shares = capped_shares({1: 800, 2: 100, 3: 100}, cap=0.5)
    assert shares[1] == pytest.approx(0.5)
    assert shares[2] == pytest.approx(0.25) and shares[3] == pytest.approx(0.25)
    # two members over the cap: both capped, the third takes the rest
    shares = capped_shares({1: 450, 2: 450, 3: 100}, cap=0.4)
    assert shares == pytest.approx({1: 0.4, 2: 0.4, 3: 0.2})


def test_an_infeasible_cap_gives_equal_shares():
    assert capped_shares({1: 9, 2: 1}, cap=0.3) == pytest.approx({1: 0.5, 2: 0.5})


@settings(max_examples=examples(200))
@given(
    raw=st.dictionaries(st.integers(1, 50), st.integers(1, 10_000), min_size=1, max_size=20),
    cap=st.floats(0.05, 1.0),
)
def test_property_shares_sum_to_one_and_respect_a_feasible_cap(raw, cap):
    shares = capped_shares(raw, cap)
    assert sum(shares.values()) == pytest.approx(1.0)
    if cap * len(raw) > 1:
        assert max(shares.values()) <= cap + 1e-9
        weights = integer_weights(shares, 1000, cap)
        assert all(1 <= w <= 1000 for w in weights.values())
        assert max(weights.values()) <= cap * sum(weights.values())


def test_ties_get_equal_weights():
    weights = integer_weights(capped_shares({3: 50, 1: 50, 2: 50}, cap=0.5), 900, 0.5)
    assert weights[1] == weights[2] == weights[3]


def test_floor_excludes_members_above_it_and_their_share_is_renormalised():
    a = assign(
        [1, 2, 3, 4],
        {1: 100, 2: 100, 3: 100, 4: 100},
        {1: 1.2, 2: 3.5, 3: 1.1},
        floor=2.0,
        cap=0.5,
        weighting="examples",
        max_weight=600,
    )
    assert set(a.excluded) == {2} and "quality floor" in a.excluded[2]
    assert set(a.weights) == {1, 3, 4}  # member 4 has no score yet: not excluded
    assert sum(a.shares.values()) == pytest.approx(1.0)
    assert a.skipped is None


def test_everyone_below_the_floor_skips_the_round():
    a = assign([1, 2], {1: 10, 2: 10}, {1: 9.0, 2: 9.0}, floor=2.0, cap=1.0, weighting="equal", max_weight=100)
    assert a.weights == {} and a.skipped and set(a.excluded) == {1, 2}


def test_a_member_left_out_by_the_floor_does_not_break_the_secure_sum():
    """The excluded member leaves C1 before anyone masks; the others' weighted sum comes out, its
    weight total exact and its mean within rounding: public weights are applied as fractions
    w / sum(w) before rounding at N * scale, so each of the n survivors adds less than one unit
    of that scale, n / N steps of the mean in all (every member of C1 survives here)."""
    level = (1 << 15) - 1
    params = ProtocolParams(vector_length=6, clip=float(level), max_members=6, max_weight=1000, max_share=0.5)
    fed = make_federation(6, params)
    rng = np.random.default_rng(4)
    xs = {m: rng.integers(-level, level + 1, 6).astype(np.float64) for m in fed.participants}
    a = assign(
        list(fed.participants),
        {m: 50 * m for m in fed.participants},
        {2: 5.0, 5: 0.5},
        floor=1.0,
        cap=0.5,
        weighting="examples",
        max_weight=1000,
    )
    coord = fed.coordinator(1)
    for p in fed.participants.values():
        coord.add_bundle(p.advertise(coord.advertise_request()))
    bset = coord.bundle_set()
    for p in fed.participants.values():
        coord.add_shares(p.share(bset))
    for m, dl in coord.deliveries().items():
        coord.add_receipt(fed.participants[m].receive(dl))
    model = stand_in_model_digest(1)
    mreq = coord.mask_request(exclude=a.excluded, weights=a.weights, training_round=1, model_digest=model)
    assert 2 not in mreq.shared
    for m in mreq.shared:
        coord.add_masked(fed.participants[m].mask(mreq, xs[m], a.weights[m], model))
    sreq = coord.survivor_request()
    for m in sreq.survivors:
        coord.add_signature(fed.participants[m].sign_survivors(sreq))
    ureq = coord.unmask_request()
    for m in ureq.survivors:
        coord.add_unmask(fed.participants[m].unmask(ureq))
    result = coord.finish()
    assert result.survivors == mreq.shared
    assert int(result.total[-1]) == sum(a.weights.values())
    s, w = result.weighted_sum(params)
    assert w == sum(a.weights.values())
    true_mean = sum(xs[m] * a.weights[m] for m in mreq.shared) / w
    bound = len(result.survivors) / params.max_members * params.step
    assert np.max(np.abs(s / w - true_mean)) < bound
