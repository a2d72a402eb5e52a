"""Whole rounds of the protocol: exact sums under dropouts, clean aborts, pipelined rounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import SLOW_EXAMPLE, examples

from protocol.errors import ProtocolError, Rule
from protocol.local import make_federation, run_round, stand_in_model_digest
from protocol.params import ProtocolParams
from protocol.stages import Stage

LEVEL16 = (1 << 15) - 1


def model(training_round: int) -> bytes:
    """The digest of the model members 'received' for a training round (no real model here)."""
    return stand_in_model_digest(training_round)


def exact_params(d: int, **kw) -> ProtocolParams:
    """clip = L makes the quantizer's scale exactly 1: integer inputs quantize to themselves."""
    return ProtocolParams(vector_length=d, bits=16, clip=float(LEVEL16), **kw)


def integer_inputs(ids, d: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(-LEVEL16, LEVEL16 + 1, d).astype(np.float64) for i in ids}


def ring_sum(inputs, weights, members, params: ProtocolParams) -> np.ndarray:
    total = np.zeros(params.masked_length, dtype=np.int64)
    for m in members:
        total[:-1] += inputs[m].astype(np.int64) * weights.get(m, 1)
        total[-1] += weights.get(m, 1)
    return total.astype(params.dtype)


def test_full_round_is_bit_exact_with_weights():
    params = exact_params(33, max_members=8, max_weight=100)
    fed = make_federation(8, params)
    xs = integer_inputs(fed.participants, 33, seed=1)
    weights = {i: i * 7 for i in fed.participants}
    out = run_round(fed.coordinator(1), fed.participants, xs, weights)
    assert out.error is None
    assert np.array_equal(out.result.total, ring_sum(xs, weights, fed.participants, params))
    s, w = out.result.weighted_sum(params)
    assert w == sum(weights.values())
    assert np.allclose(s, sum(xs[i] * weights[i] for i in xs))


def test_64_bit_ring_round():
    params = ProtocolParams(
        vector_length=17, bits=30, clip=float((1 << 29) - 1), ring_bits=64, max_members=5, max_weight=1000
    )
    fed = make_federation(5, params, seed=3)
    rng = np.random.default_rng(3)
    xs = {i: rng.integers(-(1 << 29) + 1, 1 << 29, 17).astype(np.float64) for i in fed.participants}
    out = run_round(fed.coordinator(1), fed.participants, xs, {i: 999 for i in xs})
    assert out.error is None
    expected = sum(xs[i].astype(np.int64) * 999 for i in xs)
    assert np.array_equal(out.result.total[:-1].view(np.int64), expected)


@st.composite
def federations_with_dropouts(draw):
    # the graph is complete (params.neighbours must be 0); n is kept small so the test stays fast
    n = draw(st.integers(3, 16))
    frac = draw(st.sampled_from([0.5, 0.6, 2 / 3, 0.75]))
    members = list(range(1, n + 1))
    drop = {}
    pool = list(members)
    for stage in tuple(Stage):
        k = draw(st.integers(0, max(0, n // 4)))
        chosen = draw(st.permutations(pool))[:k] if k else []
        drop[stage] = set(chosen)
        pool = [m for m in pool if m not in drop[stage]]
    return n, frac, drop, draw(st.integers(0, 2**16))


def honest_round_completes(n: int, params: ProtocolParams, drop: dict[str, set[int]]) -> bool:
    """Whether an honest round of n members (roster N = n) survives these dropouts. T comes from
    the roster; each dealer's shares (t of its n0 - 1 holders needed) are held by every other
    member that sent a receipt. The round completes iff at most n0 - T members are gone before
    signing (C0, C1, C2 and the signers each reach T) and every secret that is needed keeps at
    least t holders among the signers, and then among those that answer the unmask request."""
    need = max(params.min_cohort, params.consistency_threshold())
    n0 = n - len(drop["advertise"])
    if n0 < need:
        return False
    t = params.shamir_threshold(n0 - 1)
    dealers = n0 - len(drop["share"])
    c1 = dealers - len(drop["receive"])
    if c1 - 1 < t:  # every dealer's shares held by fewer than t others: none can be in C1
        c1 = 0
    survivors = c1 - len(drop["mask"])
    signers = survivors - len(drop["sign"])
    responders = signers - len(drop["unmask"])
    if min(dealers, c1, survivors, signers) < need:
        return False
    # a signing survivor's seed is held by the other signers; others' secrets by all signers
    if signers - 1 < t:
        return False
    # finish(): a responding survivor's seed is rebuilt from the other responders' shares
    return responders >= 1 and responders - 1 >= t


@settings(max_examples=examples(20), deadline=SLOW_EXAMPLE, suppress_health_check=[HealthCheck.too_slow])
@given(federations_with_dropouts())
def test_property_exact_sum_or_clean_abort(case):
    """Any dropout pattern: either the bit-exact sum of the survivors, or an abort that never
    released a seed share of a dropped member nor a key share of a survivor; which of the two
    is what the thresholds (from the roster) predict."""
    n, frac, drop, seed = case
    d = 11
    params = exact_params(d, threshold_fraction=frac, max_members=max(n, 3), min_cohort=2, max_weight=10)
    fed = make_federation(n, params, seed=seed)
    xs = integer_inputs(fed.participants, d, seed)
    released: dict[str, list] = {"seed": [], "key": []}
    originals = {m: p.unmask for m, p in fed.participants.items()}
    for m, p in fed.participants.items():

        def spy(req, _orig=originals[m]):
            resp = _orig(req)
            released["seed"] += [(s.dealer, req) for s in resp.seed_shares]
            released["key"] += [(s.dealer, req) for s in resp.key_shares]
            return resp

        p.unmask = spy  # type: ignore[method-assign]
    coord = fed.coordinator(1)
    out = run_round(coord, fed.participants, xs, drop=drop)
    assert not out.refusals, out.refusals  # honest coordinator: no honest member refuses
    for dealer, req in released["seed"]:
        assert dealer in req.survivors and dealer not in req.dropped
    for dealer, req in released["key"]:
        assert dealer in req.dropped and dealer not in req.survivors
    if out.error is None:
        res = out.result
        gone = set().union(*drop.values())
        assert (
            set(res.survivors) == set(coord.shared) - drop["mask"] - drop["receive"] - drop["share"] - drop["advertise"]
        )
        assert not set(res.survivors) & gone - drop["sign"] - drop["unmask"]
        assert np.array_equal(res.total, ring_sum(xs, {}, res.survivors, params))
    else:
        assert out.error.rule in {Rule.THRESHOLD, Rule.COHORT_TOO_SMALL}
    assert (out.error is None) is honest_round_completes(n, params, drop), out.error


@settings(max_examples=examples(15), deadline=SLOW_EXAMPLE)
@given(n=st.integers(3, 16), seed=st.integers(0, 2**16), data=st.data())  # complete graph: n^2 shares
def test_property_dropouts_within_threshold_always_recover(n, seed, data):
    """With fewer total dropouts than the thresholds allow, every round completes exactly."""
    params = exact_params(7, max_members=n, min_cohort=3 if n >= 3 else 2, max_weight=10)
    deg = params.degree(n)  # complete graph: n - 1
    budget = min(deg - params.shamir_threshold(deg), n - params.consistency_threshold())
    if budget < 0:
        return
    k = data.draw(st.integers(0, budget))
    victims = data.draw(st.permutations(range(1, n + 1)))[:k]
    drop = {s: set() for s in tuple(Stage)}
    for v in victims:
        drop[data.draw(st.sampled_from(tuple(Stage)))].add(v)
    fed = make_federation(n, params, seed=seed)
    xs = integer_inputs(fed.participants, 7, seed)
    out = run_round(fed.coordinator(1), fed.participants, xs, drop=drop)
    assert out.error is None, out.error
    assert np.array_equal(out.result.total, ring_sum(xs, {}, out.result.survivors, params))


def test_too_many_dropouts_abort_before_any_share_is_released():
    params = exact_params(5, max_members=9)
    fed = make_federation(9, params)
    xs = integer_inputs(fed.participants, 5, 0)
    out = run_round(fed.coordinator(1), fed.participants, xs, drop={"mask": {1, 2, 3, 4}})
    assert out.error is not None and out.error.rule is Rule.THRESHOLD
    for p in fed.participants.values():
        st_ = p.rounds[1]
        assert st_.released_seed == () and st_.released_key == ()


def test_too_few_unmask_responses_abort_cleanly():
    params = exact_params(5, max_members=6)
    fed = make_federation(6, params)
    xs = integer_inputs(fed.participants, 5, 0)
    coord = fed.coordinator(1)
    out = run_round(coord, fed.participants, xs, drop={"unmask": {1, 2, 3, 4}})
    assert out.error is not None and out.error.rule is Rule.THRESHOLD
    with pytest.raises(ProtocolError) as e:
        coord.finish()
    assert e.value.rule is Rule.OUT_OF_ORDER


def test_consecutive_rounds_and_pipelined_overlap():
    """Round r+1's keys and shares are set up while round r is still being unmasked."""
    params = exact_params(9, max_members=6)
    fed = make_federation(6, params)
    parts = fed.participants
    xs = integer_inputs(parts, 9, 5)
    c1, c2 = fed.coordinator(1), fed.coordinator(2)
    for p in parts.values():
        c1.add_bundle(p.advertise(c1.advertise_request()))
    b1 = c1.bundle_set()
    for p in parts.values():
        c1.add_shares(p.share(b1))
    d1 = c1.deliveries()
    for m, p in parts.items():
        c1.add_receipt(p.receive(d1[m]))
    m1 = c1.mask_request(training_round=1, model_digest=model(1))
    for m, p in parts.items():
        c1.add_masked(p.mask(m1, xs[m], 1, model(1)))
        c2.add_bundle(p.advertise(c2.advertise_request()))  # piggybacked on the same trip
    s1, b2 = c1.survivor_request(), c2.bundle_set()
    for p in parts.values():
        c1.add_signature(p.sign_survivors(s1))
        c2.add_shares(p.share(b2))
    u1, d2 = c1.unmask_request(), c2.deliveries()
    for m, p in parts.items():
        c1.add_unmask(p.unmask(u1))
        c2.add_receipt(p.receive(d2[m]))
    r1 = c1.finish()
    m2 = c2.mask_request(training_round=2, model_digest=model(2))  # the model round 1's sum produced
    for m, p in parts.items():
        c2.add_masked(p.mask(m2, -xs[m], 1, model(2)))
    s2 = c2.survivor_request()
    for p in parts.values():
        c2.add_signature(p.sign_survivors(s2))
    u2 = c2.unmask_request()
    for p in parts.values():
        c2.add_unmask(p.unmask(u2))
    r2 = c2.finish()
    assert np.array_equal(r1.total, ring_sum(xs, {}, parts, params))
    neg = {m: -x for m, x in xs.items()}
    assert np.array_equal(r2.total, ring_sum(neg, {}, parts, params))


def test_participant_state_survives_save_and_load():
    params = exact_params(6, max_members=4)
    fed = make_federation(4, params)
    xs = integer_inputs(fed.participants, 6, 1)
    from protocol.participant import Participant

    # reload every participant from its saved bytes between every two stages
    class Reloading(dict):
        def __getitem__(self, m):
            p = dict.__getitem__(self, m)
            fresh = Participant(
                m, fed.identities[m], fed.roster, fed.context, params, randomness=p._random, state=p.save()
            )
            dict.__setitem__(self, m, fresh)
            return fresh

    out = run_round(fed.coordinator(1), Reloading(fed.participants), xs)
    assert out.error is None
    assert np.array_equal(out.result.total, ring_sum(xs, {}, fed.participants, params))


def test_float_inputs_are_within_one_step_of_the_true_mean():
    params = ProtocolParams(vector_length=1000, bits=16, clip=0.5, max_members=10)
    fed = make_federation(10, params, seed=9)
    rng = np.random.default_rng(9)
    xs = {i: rng.normal(0, 0.1, 1000).astype(np.float32) for i in fed.participants}
    weights = {i: 10 + i for i in xs}
    out = run_round(fed.coordinator(1), fed.participants, xs, weights)
    s, w = out.result.weighted_sum(params)
    clipped = {i: np.clip(x.astype(np.float64), -0.5, 0.5) for i, x in xs.items()}
    true_mean = sum(clipped[i] * weights[i] for i in xs) / sum(weights.values())
    assert np.max(np.abs(s / w - true_mean)) < params.step


@pytest.mark.parametrize(
    ("drop", "completes", "expected"),
    [
        ({"sign": {3}, "unmask": {6}}, True, {3: "sign", 6: "unmask"}),
        ({"mask": {2}, "unmask": {5}, "receive": {7}}, False, {7: "receive", 2: "mask", 5: "unmask"}),
        ({"share": {1, 2, 3, 4}}, False, {1: "share", 2: "share", 3: "share", 4: "share"}),
        ({}, True, {}),
    ],
)
def test_coordinator_reports_who_went_silent_at_which_stage(drop, completes, expected):
    params = exact_params(4, max_members=8)
    fed = make_federation(8, params)
    coord = fed.coordinator(1)
    out = run_round(coord, fed.participants, integer_inputs(fed.participants, 4, 0), drop=drop)
    assert (out.error is None) is completes
    assert coord.dropouts() == expected


# ------------------------------------------------------------------ public weights (contribution policy)
def _setup_to_mask(fed, round_: int = 1):
    coord = fed.coordinator(round_)
    for p in fed.participants.values():
        coord.add_bundle(p.advertise(coord.advertise_request()))
    bset = coord.bundle_set()
    for p in fed.participants.values():
        coord.add_shares(p.share(bset))
    for m, dl in coord.deliveries().items():
        coord.add_receipt(fed.participants[m].receive(dl))
    return coord


@pytest.mark.parametrize("drop", [{}, {"mask": {2}}], ids=["all survive", "one drops"])
def test_public_weights_give_the_weighted_mean_within_rounding(drop):
    """Public weights are applied as fractions alpha_i = w_i / sum(C1 weights) before rounding, at
    the scale N * scale: each member's rounding error is below one unit of that scale, so the
    weighted mean of the survivors is within n2 / (N * sum of their alphas) steps, and the weight
    total is exact."""
    n = 6
    params = exact_params(9, max_members=n, max_weight=50, max_share=0.5)
    fed = make_federation(n, params)
    xs = integer_inputs(fed.participants, 9, 2)
    weights = {m: 3 + m for m in fed.participants}
    out = run_round(fed.coordinator(1), fed.participants, xs, weights, drop=drop, public_weights=True)
    assert out.error is None
    survivors = out.result.survivors
    assert set(survivors) == set(fed.participants) - drop.get("mask", set())
    s, w = out.result.weighted_sum(params)
    assert w == sum(weights[m] for m in survivors)
    true_mean = sum(xs[m] * weights[m] for m in survivors) / w
    alphas = sum(weights[m] for m in survivors) / sum(weights.values())
    bound = len(survivors) / (params.max_members * alphas) * params.step
    assert np.max(np.abs(s / w - true_mean)) < bound


def test_a_member_masks_only_with_the_weight_the_table_gives_it():
    params = exact_params(4, max_members=5, max_weight=50)
    fed = make_federation(5, params)
    coord = _setup_to_mask(fed)
    mreq = coord.mask_request(weights={m: 10 for m in range(1, 6)}, training_round=1, model_digest=model(1))
    with pytest.raises(ProtocolError) as e:
        fed.participants[1].mask(mreq, np.zeros(4), 11, model(1))
    assert e.value.rule is Rule.INPUT_WEIGHT


def test_zero_or_missing_public_weights_are_refused():
    from dataclasses import replace

    params = exact_params(4, max_members=5, max_weight=50)
    fed = make_federation(5, params)
    coord = _setup_to_mask(fed)
    mreq = coord.mask_request(weights={m: 10 for m in range(1, 6)}, training_round=1, model_digest=model(1))
    zero = replace(mreq, weights=(0, 10, 10, 10, 10))
    with pytest.raises(ProtocolError) as e:
        fed.participants[2].mask(zero, np.zeros(4), 10, model(1))
    assert e.value.rule is Rule.WEIGHTS
    short = replace(mreq, weights=(10, 10))
    with pytest.raises(ProtocolError) as e:
        fed.participants[3].mask(short, np.zeros(4), 10, model(1))
    assert e.value.rule is Rule.WEIGHTS


def test_members_refuse_to_sign_a_sum_one_weight_dominates():
    """A coordinator giving its target a huge weight and everyone else a tiny one would turn the
    'sum' into the target's update: members check the anti-capture cap before signing."""
    params = exact_params(4, max_members=6, max_weight=1000, max_share=0.4)
    fed = make_federation(6, params)
    coord = _setup_to_mask(fed)
    weights = {m: 1 for m in fed.participants} | {1: 1000}
    # an honest coordinator stops itself...
    mreq = coord.mask_request(weights=weights, training_round=1, model_digest=model(1))
    for m in mreq.shared:
        coord.add_masked(fed.participants[m].mask(mreq, np.zeros(4), weights[m], model(1)))
    with pytest.raises(ProtocolError) as e:
        coord.survivor_request()
    assert e.value.rule is Rule.WEIGHT_CAPTURE
    # ...and a malicious one that goes on anyway gets no signature
    from protocol.messages import SurvivorRequest

    sreq = SurvivorRequest(mreq.round, mreq.session, mreq.shared, mreq.shared)
    for m in (2, 3, 4):
        with pytest.raises(ProtocolError) as e:
            fed.participants[m].sign_survivors(sreq)
        assert e.value.rule is Rule.WEIGHT_CAPTURE


def test_different_weight_tables_for_different_members_cannot_be_unmasked():
    """The signed survivor statement covers the weight table: split tables never gather enough
    matching signatures, so nobody releases a share. (An honest coordinator already rejects a
    masked input attested under another table; a malicious one goes on regardless.)"""
    from dataclasses import replace

    from protocol.messages import SurvivorRequest, UnmaskRequest

    params = exact_params(4, max_members=6, max_weight=50, max_share=0.6)
    fed = make_federation(6, params)
    coord = _setup_to_mask(fed)
    honest = coord.mask_request(weights={m: 10 for m in fed.participants}, training_round=1, model_digest=model(1))
    other = replace(honest, weights=(20, 10, 10, 10, 10, 10))
    masked = {}
    for m in honest.shared:
        req, w = (other, 20 if m == 1 else 10) if m in (1, 2, 3) else (honest, 10)
        masked[m] = fed.participants[m].mask(req, np.zeros(4), w, model(1))
        if m in (1, 2, 3):
            with pytest.raises(ProtocolError) as e:
                coord.add_masked(masked[m])
            assert e.value.rule is Rule.ATTESTATION
    sreq = SurvivorRequest(honest.round, honest.session, honest.shared, honest.shared)
    sigs = [fed.participants[m].sign_survivors(sreq) for m in sreq.survivors]
    atts = tuple(masked[m].attestation for m in sreq.survivors)
    ureq = UnmaskRequest(sreq.round, sreq.session, sreq.survivors, (), tuple(sigs), atts)
    for m in sreq.survivors:
        with pytest.raises(ProtocolError) as e:
            fed.participants[m].unmask(ureq)
        assert e.value.rule is Rule.INCONSISTENT_SURVIVORS
