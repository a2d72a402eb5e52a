"""The building blocks: Shamir sharing, AES-CTR masks, quantization, parameters, graph, crypto."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples
from scipy.stats import chisquare

from protocol import graph, shamir
from protocol.crypto import (
    SessionContext,
    aead_open,
    aead_seal,
    sha256,
    transcript,
    x25519_key_is_usable,
    x25519_public_bytes,
)
from protocol.errors import ProtocolError, Rule
from protocol.local import make_federation, run_round, seeded_randomness
from protocol.masking import MASK_KEY_BYTES, apply_masks, expand, uniform_floats
from protocol.messages import MaskedInput
from protocol.params import ProtocolParams
from protocol.quantize import dequantize, quantize
from protocol.shamir import ELEMENT_BYTES, PRIME

SETTINGS = settings(max_examples=examples(60), suppress_health_check=[HealthCheck.too_slow])
P_MIN = 1e-4  # chi-square p-value below which a distribution is called non-uniform


def _rand(tag: str):
    return seeded_randomness(tag.encode())


# =============================================================================== Shamir
def _interpolate_at_zero(points: dict[int, int]) -> int:
    """Independent Lagrange interpolation at 0 over the field (the test's own reference)."""
    total = 0
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, PRIME - 2, PRIME)) % PRIME
    return total


@st.composite
def sharings(draw):
    n = draw(st.integers(2, 40))
    t = draw(st.integers(1, n))
    holders = draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    secret = draw(st.binary(min_size=32, max_size=32))
    seed = draw(st.binary(min_size=1, max_size=8))
    k = draw(st.integers(t, n))
    subset = draw(st.permutations(holders))[:k]
    return n, t, holders, secret, seed, subset


@SETTINGS
@given(sharings())
def test_shamir_any_t_shares_reconstruct(case):
    _n, t, holders, secret, seed, subset = case
    shares = shamir.split(secret, holders, t, seeded_randomness(seed))
    assert set(shares) == set(holders)
    assert all(isinstance(y, int) and 0 <= y < PRIME for y in shares.values())
    for y in shares.values():  # shares survive their wire encoding
        assert shamir.decode_share(shamir.encode_share(y)) == y
    chosen = {x: shares[x] for x in subset}
    assert shamir.reconstruct(chosen, t) == secret
    first_t = {x: shares[x] for x in subset[:t]}
    assert _interpolate_at_zero(first_t) == int.from_bytes(secret, "little")


@SETTINGS
@given(sharings())
def test_shamir_fewer_than_t_shares_do_not_reconstruct(case):
    _n, t, holders, secret, seed, subset = case
    if t < 2:
        return
    shares = shamir.split(secret, holders, t, seeded_randomness(seed))
    few = {x: shares[x] for x in subset[: t - 1]}
    assert _interpolate_at_zero(few) != int.from_bytes(secret, "little")
    with pytest.raises(ProtocolError) as e:
        shamir.reconstruct(few, t)
    assert e.value.rule is Rule.THRESHOLD
    try:
        guess = shamir.reconstruct(few, t - 1)
    except ProtocolError as err:  # almost always: the value is not even a 32-byte secret
        assert err.rule is Rule.BAD_SHARE
    else:
        assert guess != secret


def test_shamir_threshold_one_is_the_secret_and_higher_thresholds_hide_it():
    secret = bytes(range(32))
    s = int.from_bytes(secret, "little")
    assert set(shamir.split(secret, [1, 2, 3], 1, _rand("t1")).values()) == {s}
    assert s not in shamir.split(secret, [1, 2, 3], 2, _rand("t2")).values()


def test_shamir_coefficients_come_from_the_injected_randomness():
    secret, holders = bytes(range(32)), list(range(1, 11))
    a1 = shamir.split(secret, holders, 4, _rand("a"))
    a2 = shamir.split(secret, holders, 4, _rand("a"))
    b = shamir.split(secret, holders, 4, _rand("b"))
    assert a1 == a2
    assert all(a1[x] != b[x] for x in holders)
    # exactly which bytes become the coefficient: 521 bits kept, a draw >= PRIME is redrawn
    wanted = 123456789
    high_garbage = (wanted | (0x7F << 521)).to_bytes(ELEMENT_BYTES, "little")
    draws = deque([b"\xff" * ELEMENT_BYTES, high_garbage])
    calls: list[int] = []

    def scripted(n: int) -> bytes:
        calls.append(n)
        return draws.popleft()

    shares = shamir.split(secret, [1, 2], 2, scripted)
    assert calls == [ELEMENT_BYTES, ELEMENT_BYTES] and not draws
    s = int.from_bytes(secret, "little")
    assert shares == {1: (s + wanted) % PRIME, 2: (s + 2 * wanted) % PRIME}


def test_shamir_rejects_bad_arguments():
    r = _rand("args")
    with pytest.raises(ValueError):
        shamir.split(bytes(31), [1, 2], 2, r)
    for t in (0, 3):
        with pytest.raises(ValueError):
            shamir.split(bytes(32), [1, 2], t, r)
    for holders in ([1, 1, 2], [0, 1, 2], [-1, 1, 2]):
        with pytest.raises(ValueError):
            shamir.split(bytes(32), holders, 2, r)


def test_decode_share_checks_length_and_range():
    for n in (0, 1, ELEMENT_BYTES - 1, ELEMENT_BYTES + 1, 2 * ELEMENT_BYTES):
        with pytest.raises(ProtocolError) as e:
            shamir.decode_share(bytes(n))
        assert e.value.rule is Rule.ENCODING
    for v in (PRIME, PRIME + 1, (1 << (8 * ELEMENT_BYTES)) - 1):
        with pytest.raises(ProtocolError) as e:
            shamir.decode_share(v.to_bytes(ELEMENT_BYTES, "little"))
        assert e.value.rule is Rule.BAD_SHARE
    for v in (0, 1, PRIME - 1, 1 << 520):
        assert shamir.decode_share(shamir.encode_share(v)) == v


# =============================================================================== masks
def _keystream(key: bytes, length: int, dtype) -> np.ndarray:
    """AES-128-CTR from counter 0, straight from `cryptography`: the reference mask."""
    dtype = np.dtype(dtype)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(length * dtype.itemsize)), dtype=dtype.newbyteorder("<"))


def _keys(tag: str, k: int) -> list[bytes]:
    r = _rand(tag)
    return [r(MASK_KEY_BYTES) for _ in range(k)]


CHUNK_ITEMS = {np.uint32: 65536, np.uint64: 32768}  # 256 KiB of keystream


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("length", [1, 3, 4, 1000, "chunk-1", "chunk", "chunk+1", "2chunk+7"])
def test_expand_is_the_aes_ctr_keystream(dtype, length):
    c = CHUNK_ITEMS[dtype]
    n = {"chunk-1": c - 1, "chunk": c, "chunk+1": c + 1, "2chunk+7": 2 * c + 7}.get(length, length)
    (key,) = _keys(f"expand{n}", 1)
    got = expand(key, n, np.dtype(dtype))
    assert got.dtype == dtype and got.shape == (n,)
    assert np.array_equal(got, _keystream(key, n, dtype))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_apply_masks_is_the_wrapping_sum_of_expansions(dtype):
    n = CHUNK_ITEMS[dtype] + 123
    plus, minus = _keys("plus", 3), _keys("minus", 2)
    start = _keystream(_keys("start", 1)[0], n, dtype).astype(dtype)
    expected = start.copy()
    for k in plus:
        expected += expand(k, n, np.dtype(dtype))
    for k in minus:
        expected -= expand(k, n, np.dtype(dtype))
    # the same thing with Python integers, mod 2^bits, on a sample of coordinates
    mod = 1 << (8 * np.dtype(dtype).itemsize)
    for i in (0, 1, n // 2, n - 1):
        v = int(start[i]) + sum(int(_keystream(k, i + 1, dtype)[i]) for k in plus)
        v -= sum(int(_keystream(k, i + 1, dtype)[i]) for k in minus)
        assert int(expected[i]) == v % mod
    acc = start.copy()
    apply_masks(acc, plus, minus)
    assert np.array_equal(acc, expected)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_mask_added_and_subtracted_cancels_exactly(dtype):
    n = 2 * CHUNK_ITEMS[dtype] + 5
    (k,) = _keys("cancel", 1)
    acc = np.zeros(n, dtype=dtype)
    apply_masks(acc, plus=[k], minus=[k])
    assert not acc.any()
    start = _keystream(_keys("cancel-start", 1)[0], n, dtype).astype(dtype)
    acc = start.copy()
    apply_masks(acc, plus=[k], minus=[k], workers=3)
    assert np.array_equal(acc, start)
    acc = start.copy()
    apply_masks(acc)  # nothing to apply: untouched
    assert np.array_equal(acc, start)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_threads_give_the_same_bits_as_one_thread(dtype):
    n = 3 * CHUNK_ITEMS[dtype] + 5
    plus, minus = _keys("tplus", 2), _keys("tminus", 2)
    start = _keystream(_keys("tstart", 1)[0], n, dtype).astype(dtype)
    single = start.copy()
    apply_masks(single, plus, minus, workers=1)
    reference = start.copy()
    for k in plus:
        reference += _keystream(k, n, dtype)
    for k in minus:
        reference -= _keystream(k, n, dtype)
    assert np.array_equal(single, reference)
    for workers in (2, 3, 4, 16):
        acc = start.copy()
        apply_masks(acc, plus, minus, workers=workers)
        assert np.array_equal(acc, single), workers


def test_apply_masks_rejects_other_accumulators():
    (k,) = _keys("reject", 1)
    for acc in (np.zeros(8, np.int64), np.zeros(8, np.float64), np.zeros(8, np.uint16), np.zeros(16, np.uint32)[::2]):
        with pytest.raises(TypeError):
            apply_masks(acc, plus=[k])


def test_uniform_floats_follow_the_same_keystream_at_any_aligned_offset():
    (k,) = _keys("floats", 1)
    whole = uniform_floats(k, 5000)
    assert np.array_equal(whole, _keystream(k, 5000, np.uint32) / 2.0**32)
    assert whole.min() >= 0.0 and whole.max() < 1.0
    for off in (0, 4, 8, 1000, 4096):
        assert np.array_equal(uniform_floats(k, 100, offset=off), whole[off : off + 100])
    with pytest.raises(ValueError):
        uniform_floats(k, 10, offset=3)


def _nibble_p_values(v: np.ndarray) -> tuple[float, float]:
    bits = v.dtype.itemsize * 8
    top = (v >> np.array(bits - 4, dtype=v.dtype)).astype(np.int64)
    low = (v & np.array(15, dtype=v.dtype)).astype(np.int64)
    return (
        float(chisquare(np.bincount(top, minlength=16)).pvalue),
        float(chisquare(np.bincount(low, minlength=16)).pvalue),
    )


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_expanded_masks_look_uniform(dtype):
    (k,) = _keys(f"uniform-{np.dtype(dtype).name}", 1)
    v = expand(k, 1 << 17, np.dtype(dtype))
    p_top, p_low = _nibble_p_values(v)
    assert p_top > P_MIN and p_low > P_MIN
    per_byte = np.bincount(v.view(np.uint8), minlength=256)
    assert chisquare(per_byte).pvalue > P_MIN
    assert abs(v.astype(np.float64).mean() / 2.0 ** (8 * v.itemsize) - 0.5) < 0.005


def test_masked_uploads_of_a_constant_input_look_uniform():
    d, n, rounds = 4096, 5, 4
    params = ProtocolParams(vector_length=d, max_members=n)
    fed = make_federation(n, params, seed=21)
    xs = {m: np.full(d, 0.5) for m in fed.participants}  # everyone sends the same constant
    uploads: dict[tuple[int, int], np.ndarray] = {}
    for r in range(1, rounds + 1):
        coord = fed.coordinator(r)
        add = coord.add_masked

        def spy(mi: MaskedInput, _add=add, _r=r) -> None:
            uploads[(_r, mi.member)] = mi.vector.copy()
            _add(mi)

        coord.add_masked = spy  # type: ignore[method-assign]
        out = run_round(coord, fed.participants, xs)
        assert out.error is None
        s, w = out.result.weighted_sum(params)  # and the masks still cancel
        assert w == n and np.allclose(s, 0.5 * n, atol=n * params.step)
    assert len(uploads) == n * rounds
    everything = np.concatenate(list(uploads.values()))
    assert everything.dtype == np.uint32 and everything.size == n * rounds * (d + 1)
    p_top, p_low = _nibble_p_values(everything)
    assert p_top > P_MIN and p_low > P_MIN
    for m in fed.participants:  # same input, another round: a fresh mask on nearly every element
        assert np.mean(uploads[(1, m)] != uploads[(2, m)]) > 0.999
    assert np.mean(uploads[(1, 1)] != uploads[(1, 2)]) > 0.999


# =============================================================================== quantization
Q8 = ProtocolParams(vector_length=1, bits=8, clip=1.0)  # level 127, scale 127


def _params(d: int, **kw) -> ProtocolParams:
    return ProtocolParams(vector_length=d, **{"bits": 8, "clip": 1.0, **kw})


def _signed(v: np.ndarray) -> np.ndarray:
    return v.view(np.int32 if v.dtype == np.uint32 else np.int64).astype(np.int64)


def test_quantization_is_unbiased_across_coordinates():
    fracs = [0.1, 0.3, 0.5, 0.7, 0.9]
    targets = [k + f for k in (-100, -3, 0, 42) for f in fracs]  # x * scale
    reps = 20000
    params = _params(len(targets) * reps)
    x = np.repeat(np.array(targets) / params.scale, reps)
    q = _signed(quantize(x, 1, params, _rand("unbiased")).vector[:-1]).reshape(len(targets), reps)
    for i, target in enumerate(targets):
        f = target - math.floor(target)
        se = math.sqrt(f * (1 - f) / reps)
        assert set(np.unique(q[i])) <= {math.floor(target), math.floor(target) + 1}
        assert abs(q[i].mean() - target) < 5 * se, (target, q[i].mean())


def test_quantization_is_unbiased_across_calls():
    params = _params(6)
    x = np.array([0.123, -0.456, 0.789, -0.999, 0.0001, 1 / 3])
    rand = _rand("calls")
    runs = np.array([_signed(quantize(x, 1, params, rand).vector[:-1]) for _ in range(3000)])
    target = x * params.scale
    f = target - np.floor(target)
    se = np.sqrt(f * (1 - f) / len(runs))
    assert np.all(np.abs(runs.mean(axis=0) - target) < 5 * se + 1e-9)
    assert np.all(runs.std(axis=0) > 0.1)  # really stochastic, not a deterministic rounding


@pytest.mark.parametrize("ring_bits,bits", [(32, 16), (64, 40)])
def test_quantization_error_is_below_one_step(ring_bits, bits):
    d = 50000
    params = ProtocolParams(vector_length=d, bits=bits, clip=0.75, ring_bits=ring_bits, max_members=3, max_weight=10)
    x = np.random.default_rng(1).uniform(-0.75, 0.75, d)
    out = quantize(x, 1, params, _rand(f"err{ring_bits}"))
    assert out.vector.dtype == params.dtype and out.vector.shape == (d + 1,)
    assert out.clipped == 0 and out.vector[-1] == 1
    err = np.abs(_signed(out.vector[:-1]) / params.scale - x)
    assert err.max() < params.step


def test_weight_multiplies_the_quantized_vector_and_is_appended():
    params = _params(1000, max_members=3, max_weight=100)
    x = np.random.default_rng(2).uniform(-1, 1, 1000)
    one = quantize(x, 1, params, _rand("w"))
    many = quantize(x, 77, params, _rand("w"))
    assert np.array_equal(_signed(many.vector[:-1]), 77 * _signed(one.vector[:-1]))
    assert many.vector[-1] == 77
    with pytest.raises(ProtocolError) as e:  # weights start at 1: leaving a member out is done via C1
        quantize(x, 0, params, _rand("w"))
    assert e.value.rule is Rule.INPUT_WEIGHT


def test_public_weight_fraction_is_applied_before_rounding():
    """With public weights a member rounds fraction * x at the public scale (N * scale) instead of
    multiplying its rounded input by the integer weight; the weight is still appended."""
    n, d = 4, 1000
    params = _params(d, max_members=n, max_weight=100)
    x = np.random.default_rng(3).uniform(-1, 1, d)
    weights = [7, 30, 13, 50]
    total = sum(weights)
    vectors = []
    for i, w in enumerate(weights):
        out = quantize(x, w, params, _rand(f"pub{i}"), w / total)
        target = x * (w / total) * params.public_scale
        q = _signed(out.vector[:-1])
        assert out.vector[-1] == w
        assert np.all((q == np.floor(target)) | (q == np.floor(target) + 1))  # one stochastic rounding
        assert np.abs(q).max() <= math.ceil(params.level * n * w / total)
        vectors.append(out.vector)
    ring = np.sum(vectors, axis=0, dtype=params.dtype)
    s, wsum = dequantize(ring, params, total)
    assert wsum == total
    # each member's rounding error is below one unit at the public scale: n of them
    assert np.max(np.abs(s / wsum - x)) < n / (params.max_members * params.scale)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ProtocolError) as e:
            quantize(x, 7, params, _rand("bad"), bad)
        assert e.value.rule is Rule.WEIGHTS


def test_clipping_is_counted_and_saturates():
    params = _params(8, clip=2.0)
    x = np.array([3.0, -2.5, 2.0, -2.0, 1e300, -1e300, 0.0, 2.0000001])
    out = quantize(x, 1, params, _rand("clip"))
    assert out.clipped == 5  # exactly +-clip is not clipped
    q = _signed(out.vector[:-1])
    level = params.level
    assert list(q[[0, 1, 4, 5, 7]]) == [level, -level, level, -level, level]
    assert list(q[[2, 3, 6]]) == [level, -level, 0]


def test_negative_values_wrap_into_the_ring():
    params = _params(3, max_members=3, max_weight=10)
    out = quantize(np.array([-1.0, 1.0, -0.0]), 7, params, _rand("neg"))
    assert list(out.vector) == [2**32 - 7 * 127, 7 * 127, 0, 7]
    p64 = ProtocolParams(vector_length=1, bits=8, clip=1.0, ring_bits=64)
    assert quantize(np.array([-1.0]), 1, p64, _rand("neg64")).vector[0] == 2**64 - 127


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_dequantize_recovers_signed_weighted_sums(ring_bits):
    bits = 16 if ring_bits == 32 else 30
    level = (1 << (bits - 1)) - 1
    d, n = 40, 6
    params = ProtocolParams(
        vector_length=d, bits=bits, clip=float(level), ring_bits=ring_bits, max_members=n, max_weight=9
    )
    assert params.scale == 1.0  # integers quantize to themselves
    rng = np.random.default_rng(ring_bits)
    xs = [rng.integers(-level, level + 1, d).astype(np.float64) for _ in range(n)]
    xs[0][:5] = -level  # force sums that are very negative ...
    xs[1][:5] = -level
    weights = [9, 9, 1, 2, 3, 4]
    total = np.zeros(d + 1, dtype=params.dtype)
    for i, (x, w) in enumerate(zip(xs, weights, strict=True)):
        total += quantize(x, w, params, _rand(f"dq{i}")).vector  # wraps mod 2^ring_bits
    s, wsum = dequantize(total, params)
    assert wsum == sum(weights)
    expected = sum(w * x for x, w in zip(xs, weights, strict=True))
    assert np.array_equal(s, expected)
    assert (expected < 0).any() and (expected > 0).any()
    for bad in (total[:-1], total.astype(np.int64), np.zeros(d + 1, np.float64)):
        with pytest.raises(ProtocolError) as e:
            dequantize(bad, params)
        assert e.value.rule is Rule.INPUT_LENGTH


def _rule(call) -> Rule:
    with pytest.raises(ProtocolError) as e:
        call()
    return e.value.rule


def test_quantize_input_checks():
    params = _params(4, max_weight=50)
    r = _rand("checks")
    ok = np.zeros(4)
    for bad in (np.nan, np.inf, -np.inf):
        x = ok.copy()
        x[2] = bad
        assert _rule(lambda x=x: quantize(x, 1, params, r)) is Rule.INPUT_NONFINITE
    for shape in ((3,), (5,), (4, 1), (1, 4), (2, 2), ()):
        x = np.zeros(shape)
        assert _rule(lambda x=x: quantize(x, 1, params, r)) is Rule.INPUT_LENGTH
    for dtype in (np.int64, np.int32, np.uint8, np.bool_):
        x = np.zeros(4, dtype=dtype)
        assert _rule(lambda x=x: quantize(x, 1, params, r)) is Rule.INPUT_LENGTH
    assert _rule(lambda: quantize([0, 0, 0, 0], 1, params, r)) is Rule.INPUT_LENGTH
    for w in (-1, 0, 51, 2**40):
        assert _rule(lambda w=w: quantize(ok, w, params, r)) is Rule.INPUT_WEIGHT
    for w in (1, 50):
        assert quantize(ok, w, params, r).vector[-1] == w
    for dtype in (np.float16, np.float32, np.float64):
        assert quantize(ok.astype(dtype), 1, params, r).vector.shape == (5,)


# =============================================================================== parameters
def _params_rule(**kw) -> Rule:
    return _rule(lambda: ProtocolParams(**{"vector_length": 10, **kw}))


def test_overflow_check_is_exact_at_the_boundary():
    # 100 members x 655 x 32767 < 2^31 <= 100 x 656 x 32767
    assert 100 * 655 * 32767 < 2**31 <= 100 * 656 * 32767
    ProtocolParams(vector_length=1, bits=16, max_members=100, max_weight=655)
    assert _params_rule(bits=16, max_members=100, max_weight=656) is Rule.PARAMETERS
    # bits = 2 makes the level 1, so the product can hit 2^(ring-1) exactly
    ProtocolParams(vector_length=1, bits=2, max_members=2**16, max_weight=2**15 - 1)
    assert _params_rule(bits=2, max_members=2**16, max_weight=2**15) is Rule.PARAMETERS
    ProtocolParams(vector_length=1, bits=2, ring_bits=64, max_members=2**33, max_weight=2**30 - 1)
    rule = _params_rule(bits=2, ring_bits=64, max_members=2**33, max_weight=2**30)
    assert rule is Rule.PARAMETERS
    # bits = 3 (level 3): 2 x 357913941 x 3 = 2^31 - 2 passes
    ProtocolParams(vector_length=1, bits=3, min_cohort=2, max_members=2, max_weight=357913941)
    rule = _params_rule(bits=3, min_cohort=2, max_members=2, max_weight=357913942)
    assert rule is Rule.PARAMETERS
    # the same cohort fits once the ring is 64 bits
    ProtocolParams(vector_length=1, bits=16, max_members=100, max_weight=656, ring_bits=64)


def test_for_federation_picks_the_smallest_ring_that_holds_the_sum():
    small = ProtocolParams.for_federation(100, members=10)
    assert small.ring_bits == 32 and small.dtype == np.uint32 and small.max_members == 10
    assert 10 * small.max_weight * small.level < 2**31 <= 10 * (small.max_weight + 1) * small.level
    assert ProtocolParams.for_federation(100, members=3).max_weight == (2**31 - 1) // (3 * 32767)
    capped = ProtocolParams.for_federation(100, members=3, bits=8)  # FedAvg counts up to 65535
    assert capped.ring_bits == 32 and capped.max_weight == 65535
    big = ProtocolParams.for_federation(100, members=100, max_weight=65535)
    assert big.ring_bits == 64 and big.dtype == np.uint64
    wide = ProtocolParams.for_federation(100, members=3, bits=31)
    assert wide.ring_bits == 64
    fits = ProtocolParams.for_federation(100, members=100, max_weight=655)
    assert fits.ring_bits == 32
    assert ProtocolParams.for_federation(100, members=100, max_weight=656).ring_bits == 64
    assert ProtocolParams.fitting_ring(100, 655, 16) == 32
    assert ProtocolParams.fitting_ring(100, 656, 16) == 64
    assert ProtocolParams.fitting_ring(2**16, 2**15 - 1, 2) == 32  # 2^31 - 2^16: fits
    assert ProtocolParams.fitting_ring(2**16, 2**15, 2) == 64  # exactly 2^31: does not
    assert ProtocolParams.for_federation(1, members=2**16, bits=2, max_weight=2**15).ring_bits == 64
    with pytest.raises(ProtocolError) as e:  # not even 64 bits hold it
        ProtocolParams.for_federation(100, members=10**6, bits=40, max_weight=2**20)
    assert e.value.rule is Rule.PARAMETERS
    assert ProtocolParams.for_federation(7, members=5, clip=0.5).clip == 0.5


@pytest.mark.parametrize(
    "kw",
    [
        {"vector_length": 0},
        {"vector_length": -1},
        {"ring_bits": 16},
        {"ring_bits": 48},
        {"ring_bits": 128},
        {"bits": 1},
        {"bits": 0},
        {"bits": 31},
        {"bits": 32},
        {"bits": 63, "ring_bits": 64},
        {"clip": 0.0},
        {"clip": -1.0},
        {"clip": float("nan")},
        {"clip": float("inf")},
        {"threshold_fraction": 0.49},
        {"threshold_fraction": 1.0},
        {"threshold_fraction": 1.5},
        {"threshold_fraction": float("nan")},
        {"threshold_fraction": 0.0},
        {"bits": 54, "ring_bits": 64},  # quantized values must stay exact in float64 (2^53)
        {"neighbours": 1},
        {"neighbours": 2},
        {"neighbours": 3},
        {"neighbours": -2},
        {"min_cohort": 1},
        {"min_cohort": 0},
        {"min_cohort": 5, "max_members": 4},
        {"max_weight": 0},
        {"max_weight": 2**31},
    ],
)
def test_invalid_parameters_are_refused(kw):
    assert _params_rule(**kw) is Rule.PARAMETERS


def test_valid_parameter_edges_are_accepted():
    for kw in (
        {"bits": 2},
        {"bits": 30, "max_weight": 1, "max_members": 3},
        {"bits": 53, "ring_bits": 64, "max_weight": 1, "max_members": 3},  # the float64-exact limit
        {"threshold_fraction": 0.5},
        {"threshold_fraction": 0.999},
        {"neighbours": 0},  # the only valid value: the graph is complete
        {"min_cohort": 2},
        {"clip": 1e-9},
    ):
        ProtocolParams(**{"vector_length": 1, **kw})


# =============================================================================== graph
@SETTINGS
@given(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=70, unique=True))
def test_graph_is_complete(members):
    """Every member holds shares of every other member of the cohort: nothing for a coordinator
    to steer by choosing which bundles to include."""
    adj = graph.neighbours(members)
    assert set(adj) == set(members)
    for i, nb in adj.items():
        assert nb == set(members) - {i}
        assert all(i in adj[j] for j in nb)  # symmetric
    assert graph.neighbours(list(reversed(members))) == adj  # order of input is irrelevant
    for i in members[:5]:  # what a participant computes for itself alone is the same
        assert graph.neighbours_of(i, members) == adj[i]
    with pytest.raises(KeyError):
        graph.neighbours_of(0, members)  # member ids start at 1: 0 is never in the cohort


@pytest.mark.parametrize("k", [1, 2, 4, 8, 20, -1])
def test_sparse_graphs_are_refused(k):
    err = _rule(lambda: ProtocolParams(vector_length=1, neighbours=k))
    assert err is Rule.PARAMETERS


def test_degree_is_the_rest_of_the_cohort():
    p = ProtocolParams(vector_length=1, max_members=1000, max_weight=1)
    assert [p.degree(n) for n in (0, 1, 2, 3, 10, 32, 33, 1000)] == [0, 0, 1, 2, 9, 31, 32, 999]


def test_thresholds_come_from_the_roster_and_the_collusion_bound():
    """c = ceil(N/3) - 1 by default; T = max((N + c)//2 + 1, ceil(f*N), min_cohort) whatever the
    cohort shown; t = max(1, ceil(f*k), c + 1) for k holders (so colluders never hold t)."""
    p = ProtocolParams(vector_length=1, max_members=10)  # f = 2/3, min_cohort 3
    assert p.collusion_bound == 3  # ceil(10/3) - 1
    assert p.consistency_threshold() == 7  # max(13//2 + 1 = 7, ceil(20/3) = 7, 3)
    assert p.consistency_threshold(4) == p.consistency_threshold(10) == 7  # the cohort is ignored
    assert p.shamir_threshold(9) == 6  # max(ceil(18/3) = 6, c + 1 = 4)
    assert p.shamir_threshold(3) == 4  # c + 1: more than 3 colluders' shares, even for 3 holders
    assert 2 * p.consistency_threshold() > p.max_members + p.collusion_bound
    q = ProtocolParams(vector_length=1, max_members=9, colluders=1, threshold_fraction=0.5)
    assert q.collusion_bound == 1
    assert q.consistency_threshold() == 6  # max(10//2 + 1 = 6, ceil(4.5) = 5, 3)
    assert q.shamir_threshold(5) == 3 and q.shamir_threshold(1) == 2  # max(ceil(2.5), 2); c + 1
    assert ProtocolParams(vector_length=1, max_members=3, min_cohort=2).collusion_bound == 0
    # a collusion bound no cohort of T members can carry (t > T - 1) is refused
    assert _rule(lambda: ProtocolParams(vector_length=1, max_members=10, colluders=9)) is Rule.PARAMETERS


# =============================================================================== crypto helpers
CTX = SessionContext("fed", bytes(32))


def test_transcript_is_injective_on_field_boundaries_and_types():
    pairs = [
        (("ab", "c"), ("a", "bc")),
        ((b"ab", b"c"), (b"a", b"bc")),
        ((b"", b"x"), (b"x", b"")),
        ((b"x",), (b"x", b"")),
        ((b"a\x02b",), (b"a", b"b")),  # a field's tag inside another field's bytes
        (("a\x03b",), ("a", "b")),
        ((b"\x01" + bytes(8),), (b"", 0)),
        ((1,), ((1).to_bytes(8, "little"),)),
        ((1,), ((1,),)),
        (("1",), (b"1",)),
        (((1, 2), (3,)), ((1,), (2, 3))),
        ((0,), ()),
        ((2**64 - 1,), (b"\xff" * 8,)),
    ]
    for a, b in pairs:
        assert transcript("l", CTX, *a) != transcript("l", CTX, *b), (a, b)
    fed_c, fed_bc = SessionContext("c", bytes(32)), SessionContext("bc", bytes(32))
    assert transcript("ab", fed_c) != transcript("a", fed_bc)
    assert transcript("l", CTX) != transcript("l", SessionContext("fed", b"\x01" + bytes(31)))
    assert transcript("l", CTX, 5, b"x") == transcript("l", CTX, 5, b"x")
    with pytest.raises(TypeError):
        transcript("l", CTX, True)
    assert sha256(b"ab", b"c") != sha256(b"a", b"bc") != sha256(b"abc")


_FIELD = st.one_of(
    st.integers(0, 2**64 - 1),
    st.binary(max_size=6),
    st.text(max_size=4),
    st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple),
)


@SETTINGS
@given(st.lists(_FIELD, max_size=4), st.lists(_FIELD, max_size=4))
def test_transcript_never_collides(a, b):
    def typed(fields):
        return [(type(f), f) for f in fields]

    if typed(a) != typed(b):
        assert transcript("l", CTX, *a) != transcript("l", CTX, *b)


LOW_ORDER_POINTS = [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),  # 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),  # p - 1
    (2**255 - 19).to_bytes(32, "little"),  # p (= 0)
    (2**255 - 19 + 1).to_bytes(32, "little"),  # p + 1 (= 1)
]


def test_low_order_x25519_keys_are_unusable():
    for point in LOW_ORDER_POINTS:
        assert not x25519_key_is_usable(point), point.hex()
        top = point[:31] + bytes([point[31] | 0x80])  # bit 255 is ignored by X25519
        assert not x25519_key_is_usable(top), top.hex()
    for _ in range(20):
        assert x25519_key_is_usable(x25519_public_bytes(X25519PrivateKey.generate()))
    assert x25519_key_is_usable((9).to_bytes(32, "little"))  # the base point


def test_aead_open_rejects_any_tampering():
    r = _rand("aead")
    key, nonce, ad, pt = r(32), r(12), b"associated data", r(100)
    ct = aead_seal(key, nonce, pt, ad)
    assert aead_open(key, nonce, ct, ad) == pt
    for i in range(len(ct)):
        for bit in (0, 7):
            bad = ct[:i] + bytes([ct[i] ^ (1 << bit)]) + ct[i + 1 :]
            assert aead_open(key, nonce, bad, ad) is None, i
    for i in range(len(nonce)):
        assert aead_open(key, nonce[:i] + bytes([nonce[i] ^ 1]) + nonce[i + 1 :], ct, ad) is None
    for i in range(len(ad)):
        assert aead_open(key, nonce, ct, ad[:i] + bytes([ad[i] ^ 1]) + ad[i + 1 :]) is None
    for bad_ad in (b"", ad + b"\x00", ad[:-1]):
        assert aead_open(key, nonce, ct, bad_ad) is None
    for bad_ct in (b"", ct[:15], ct[:-1], ct + b"\x00", ct[16:]):
        assert aead_open(key, nonce, bad_ct, ad) is None
    assert aead_open(bytes([key[0] ^ 1]) + key[1:], nonce, ct, ad) is None
    assert aead_open(key, b"", ct, ad) is None  # malformed nonce: None, not an exception
