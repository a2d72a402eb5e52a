"""The wire format: exact round trips; untrusted bytes never raise anything but ProtocolError."""

from __future__ import annotations

import dataclasses
import struct
import time
import tracemalloc
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples

from protocol import keys
from protocol import messages as msgs
from protocol.codec import MAX_BYTES, Reader, Writer
from protocol.errors import ProtocolError, Rule
from protocol.local import make_federation, run_round, stand_in_model_digest
from protocol.messages import (
    AdvertiseRequest,
    BundleSet,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    Message,
    Refusal,
    ShareBundle,
    ShareDelivery,
    ShareReceipt,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)
from protocol.params import ProtocolParams
from protocol.roster import Member, Roster

HEADER = 6  # magic (4) + version (1) + type (1)
ATTESTATION = 4 + 4 + msgs.SIGNATURE_BYTES  # a MaskedInput's attestation: member, min_cohort, signature


# ------------------------------------------------------------------------ real messages
def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def _round_by_hand(through_codec: bool = False) -> tuple[list[Message], np.ndarray]:
    """Every message of one 32-bit round with a complaint and a dropout, and the round's sum.

    Nine members; member 2 deals member 1 a garbled share (so member 1 complains and 2 is
    convicted), and member 9 drops before masking (so key shares are revealed).
    """
    params = ProtocolParams(vector_length=8, max_members=9)
    fed = make_federation(9, params, seed=11)
    parts = fed.participants
    coord = fed.coordinator(1)
    rng = np.random.default_rng(0)
    xs = {m: rng.uniform(-1, 1, 8) for m in parts}
    sent: list[Message] = []

    def wire(m: Message) -> Message:
        sent.append(m)
        return type(m).decode(m.encode()) if through_codec else m

    req = wire(coord.advertise_request())
    for p in parts.values():
        coord.add_bundle(wire(p.advertise(req)))
    bset = wire(coord.bundle_set())
    for m, p in parts.items():
        sb = p.share(bset)
        if m == 2:  # a cheating dealer: garbles its share for member 1, signs the bundle anyway

            def garble(s, sb=sb, m=m):  # the dealer re-signs its garbled item: it is its own
                ct = _flip(s.ciphertext, 5)
                t = keys.share_item_transcript(
                    fed.context, sb.round, sb.session, m, s.holder, s.key_digest, s.nonce, ct
                )
                return dataclasses.replace(s, ciphertext=ct, signature=fed.identities[m].sign(t))

            items = tuple(garble(s) if s.holder == 1 else s for s in sb.shares)
            statement = keys.share_bundle_transcript(fed.context, sb.round, sb.session, m, sb.commitment, items)
            sb = dataclasses.replace(sb, shares=items, signature=fed.identities[m].sign(statement))
        coord.add_shares(wire(sb))
    deliveries = coord.deliveries()
    receipts = {m: wire(parts[m].receive(wire(dl))) for m, dl in deliveries.items()}
    assert [c.dealer for c in receipts[1].complaints] == [2]
    for r in receipts.values():
        coord.add_receipt(r)
    model = stand_in_model_digest(1)  # training round 1's model, as every member received it
    mreq = wire(coord.mask_request(training_round=1, model_digest=model))
    assert 2 not in mreq.shared
    for m in mreq.shared:
        if m != 9:
            coord.add_masked(wire(parts[m].mask(mreq, xs[m], 1, model)))
    sreq = wire(coord.survivor_request())
    for m in sreq.survivors:
        coord.add_signature(wire(parts[m].sign_survivors(sreq)))
    ureq = wire(coord.unmask_request())
    assert ureq.dropped == (9,)
    for m in ureq.survivors:
        coord.add_unmask(wire(parts[m].unmask(ureq)))
    result = coord.finish()
    assert result.survivors == (1, 3, 4, 5, 6, 7, 8)
    return sent, result.total


def _round_64() -> list[MaskedInput]:
    params = ProtocolParams(vector_length=5, bits=30, ring_bits=64, max_members=4, max_weight=1000)
    assert params.dtype == np.uint64
    fed = make_federation(4, params, seed=12)
    coord = fed.coordinator(1)
    seen: list[MaskedInput] = []
    add = coord.add_masked

    def spy(mi: MaskedInput) -> None:
        seen.append(mi)
        add(mi)

    coord.add_masked = spy  # type: ignore[method-assign]
    xs = {m: np.linspace(-1, 1, 5) * m / 4 for m in fed.participants}
    out = run_round(coord, fed.participants, xs, {m: 999 for m in xs})
    assert out.error is None
    return seen


@cache
def all_messages() -> tuple[Message, ...]:
    """Real messages of every type (and both ring widths), plus refusals."""
    out = [*_round_by_hand()[0], *_round_64()]
    out.append(Refusal(7, 3, Rule.WRONG_SESSION.value, "request belongs to another session"))
    out.append(Refusal(2**64 - 1, 2**32 - 1, Rule.BAD_KEY.value, "ünïcödé ✓ " * 20))
    out.append(Refusal(0, 1, "", ""))
    return tuple(out)


@cache
def one_of_each() -> tuple[Message, ...]:
    """The largest message of every type, and of each ring width for masked inputs."""
    best: dict[object, Message] = {}
    for m in all_messages():
        key = (type(m), m.vector.dtype.itemsize) if isinstance(m, MaskedInput) else type(m)
        if key not in best or len(m.encode()) > len(best[key].encode()):
            best[key] = m
    return tuple(best.values())


def _name(m: Message) -> str:
    if isinstance(m, MaskedInput):
        return f"MaskedInput-u{m.vector.dtype.itemsize * 8}"
    return type(m).__name__


EVERY_TYPE = (
    AdvertiseRequest,
    KeyBundle,
    BundleSet,
    ShareBundle,
    ShareDelivery,
    ShareReceipt,
    MaskRequest,
    MaskedInput,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    Refusal,
)


def _encoding_error(data: bytes | memoryview) -> ProtocolError:
    try:
        got = decode(data)
    except ProtocolError as err:
        assert err.rule is Rule.ENCODING, err
        return err
    raise AssertionError(f"decoded to {got!r}")


# ------------------------------------------------------------------------ round trips
def test_the_sample_covers_every_message_type_and_both_rings():
    got = {type(m) for m in all_messages()}
    assert got == set(EVERY_TYPE) == set(msgs._REGISTRY.values())
    assert {m.vector.dtype for m in all_messages() if isinstance(m, MaskedInput)} == {
        np.dtype(np.uint32),
        np.dtype(np.uint64),
    }
    # the interesting optional parts are really populated
    sample = all_messages()
    assert any(isinstance(m, ShareReceipt) and m.complaints for m in sample)
    assert any(isinstance(m, UnmaskResponse) and m.seed_shares and m.key_shares for m in sample)
    assert any(isinstance(m, UnmaskRequest) and m.dropped and m.signatures and m.attestations for m in sample)
    assert any(isinstance(m, ShareReceipt) and m.held for m in sample)
    assert all(m.attestation is not None for m in sample if isinstance(m, MaskedInput))
    assert any(isinstance(m, MaskRequest) and m.training_round and any(m.model_digest) for m in sample)


def test_a_whole_round_runs_through_the_codec():
    """Every request and reply encoded and decoded in flight: the same round, the same sum."""
    sent, total = _round_by_hand(through_codec=True)
    plain_sent, plain_total = _round_by_hand()
    assert np.array_equal(total, plain_total)
    assert [m.encode() for m in sent] == [m.encode() for m in plain_sent]


@pytest.mark.parametrize("i", range(len(all_messages())))
def test_every_real_message_round_trips(i):
    m = all_messages()[i]
    data = m.encode()
    assert data[:4] == msgs.MAGIC and data[4] == msgs.VERSION and data[5] == m.TYPE
    back = decode(data)
    assert type(back) is type(m)
    assert back == m
    assert back.encode() == data
    assert type(m).decode(memoryview(data)) == m
    assert decode(bytearray(data)) == m
    if isinstance(m, MaskedInput):
        assert back.vector.dtype == m.vector.dtype and back.vector.shape == m.vector.shape
        assert np.array_equal(back.vector, m.vector)


def test_masked_input_equality_looks_at_the_vector():
    mi = next(m for m in all_messages() if isinstance(m, MaskedInput))
    other = mi.vector.copy()
    other[-1] ^= 1
    assert dataclasses.replace(mi, vector=other) != mi
    assert decode(dataclasses.replace(mi, vector=other).encode()) != mi


# ------------------------------------------------------------------------ malformed frames
@pytest.mark.parametrize("m", one_of_each(), ids=_name)
def test_every_proper_prefix_is_an_encoding_error(m):
    data = m.encode()
    for n in range(len(data)):
        _encoding_error(data[:n])


@pytest.mark.parametrize("m", one_of_each(), ids=_name)
def test_trailing_bytes_are_an_encoding_error(m):
    data = m.encode()
    for extra in (b"\x00", b"\xff" * 7, data):
        err = _encoding_error(data + extra)
        assert "trailing" in err.detail


@pytest.mark.parametrize("m", one_of_each(), ids=_name)
def test_frame_header_is_checked(m):
    data = m.encode()
    for pos in range(4):
        _encoding_error(data[:pos] + bytes([data[pos] ^ 0x20]) + data[pos + 1 :])
    for version in (0, msgs.VERSION + 1, 255):
        with pytest.raises(ProtocolError) as e:
            decode(data[:4] + bytes([version]) + data[5:])
        assert e.value.rule is Rule.VERSION
    for kind in (0, max(msgs._REGISTRY) + 1, 255):
        err = _encoding_error(data[:5] + bytes([kind]) + data[6:])
        assert "unknown message type" in err.detail


def test_decoding_as_the_wrong_class_is_an_encoding_error():
    bset = next(m for m in all_messages() if isinstance(m, BundleSet))
    with pytest.raises(ProtocolError) as e:
        KeyBundle.decode(bset.encode())
    assert e.value.rule is Rule.ENCODING and "expected" in e.value.detail
    for m in one_of_each():
        for cls in EVERY_TYPE:
            if not isinstance(m, cls):
                with pytest.raises(ProtocolError) as e:
                    cls.decode(m.encode())
                assert e.value.rule is Rule.ENCODING and "expected" in e.value.detail


def test_non_bytes_input_is_an_encoding_error():
    for junk in (None, "FLSA", 12, [70, 76, 83, 65]):
        with pytest.raises(ProtocolError) as e:
            decode(junk)  # type: ignore[arg-type]
        assert e.value.rule is Rule.ENCODING


def test_masked_vector_ring_width_and_length_are_checked():
    mi = next(m for m in all_messages() if isinstance(m, MaskedInput) and m.vector.dtype == np.uint32)
    data = bytearray(mi.encode())
    bits_at = HEADER + 8 + 4 + msgs.SESSION_BYTES + ATTESTATION
    assert data[bits_at] == 32
    for bits in (0, 8, 16, 31, 33, 128):
        data[bits_at] = bits
        _encoding_error(bytes(data))
    data[bits_at] = 64  # the payload is 4*(d+1) bytes: with d + 1 odd it is not whole u64s
    assert len(mi.vector) % 2 == 1
    _encoding_error(bytes(data))
    empty = MaskedInput(mi.round, mi.member, mi.session, np.zeros(0, dtype=np.uint32))
    _encoding_error(empty.encode())


def test_fixed_size_fields_and_text_are_checked():
    kb = next(m for m in all_messages() if isinstance(m, KeyBundle))
    with pytest.raises(ValueError):
        dataclasses.replace(kb, signature=kb.signature[:-1]).encode()
    refusal = Refusal(1, 2, "rule", "detail").encode()
    # invalid UTF-8 in the detail (same length): still nothing but an encoding error
    _encoding_error(refusal[:-1] + b"\xff")
    _encoding_error(refusal[:-6] + b"\xc0\xaf" + refusal[-4:])  # overlong "/"


# ------------------------------------------------------------------------ huge length claims
def _offsets_of_lengths() -> list[tuple[str, bytes, int]]:
    """(what, encoding, offset of a u32 length/count field) for every length-prefixed type."""
    by_type = {type(m): m for m in one_of_each()}
    mi = next(m for m in one_of_each() if isinstance(m, MaskedInput))
    s = msgs.SESSION_BYTES
    most = msgs.MAX_MEMBERS
    cases = [
        ("BundleSet.count", by_type[BundleSet].encode(), HEADER + 8, most),
        ("ShareBundle.count", by_type[ShareBundle].encode(), HEADER + 8 + 4 + s + 32, most),
        ("ShareDelivery.count", by_type[ShareDelivery].encode(), HEADER + 8 + s, most),
        ("ShareReceipt.count", by_type[ShareReceipt].encode(), HEADER + 8 + 4 + s, most),
        ("MaskRequest.shared", by_type[MaskRequest].encode(), HEADER + 8 + s, most),
        ("MaskedInput.bytes", mi.encode(), HEADER + 8 + 4 + s + ATTESTATION + 1, MAX_BYTES),
        ("SurvivorRequest.shared", by_type[SurvivorRequest].encode(), HEADER + 8 + s, most),
        ("UnmaskRequest.survivors", by_type[UnmaskRequest].encode(), HEADER + 8 + s, most),
        ("UnmaskResponse.seed", by_type[UnmaskResponse].encode(), HEADER + 8 + 4 + s, most),
        ("Refusal.rule", by_type[Refusal].encode(), HEADER + 8 + 4, 1024),
    ]
    for what, data, at, _ in cases:  # the offsets really point at the length fields
        (n,) = struct.unpack_from("<I", data, at)
        assert 0 < n < 1 << 16, (what, n)
    return cases


@pytest.mark.parametrize("claim", [1 << 16, (1 << 16) + 1, 1 << 20, 1 << 31, (1 << 32) - 1])
def test_huge_length_fields_fail_fast_without_allocating(claim):
    for what, data, at, bound in _offsets_of_lengths():
        patched = data[:at] + struct.pack("<I", claim) + data[at + 4 :]
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            err = _encoding_error(patched)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert time.perf_counter() - t0 < 0.5, what
        assert peak < 4 * len(data) + (1 << 20), (what, peak)
        # refused by the field's upper bound before anything is read, not by running out of bytes
        assert ("exceeds" in err.detail) == (claim > bound), (what, err.detail)


def test_writer_length_prefix_counts_bytes_not_items():
    """Regression: a memoryview of a uint32/uint64 array used to be prefixed with its item count."""
    for dtype in (np.uint8, np.uint32, np.uint64):
        arr = np.arange(5, dtype=dtype)
        raw = Writer().var(memoryview(arr)).getvalue()
        assert raw == struct.pack("<I", arr.nbytes) + arr.tobytes()
        assert Reader(raw).var() == arr.tobytes()


def test_reader_bounds_fields_before_reading_them():
    r = Reader(struct.pack("<I", 1 << 31) + b"xyz")
    with pytest.raises(ProtocolError) as e:
        r.var(max_len=10)
    assert e.value.rule is Rule.ENCODING and "exceeds" in e.value.detail
    with pytest.raises(ProtocolError) as e:
        Reader(struct.pack("<I", 11)).count(max_items=10)
    assert e.value.rule is Rule.ENCODING and "exceeds" in e.value.detail
    with pytest.raises(ProtocolError) as e:
        Reader(struct.pack("<I", 11) + bytes(44)).ints(max_items=10)
    assert e.value.rule is Rule.ENCODING and "exceeds" in e.value.detail
    assert Reader(struct.pack("<I", 2) + struct.pack("<2I", 5, 6)).ints(max_items=2) == (5, 6)


# ------------------------------------------------------------------------ fuzzing
def _decodes_cleanly(data: bytes) -> None:
    """decode() either returns a message whose encoding is exactly `data`, or a ProtocolError."""
    try:
        m = decode(data)
    except ProtocolError as err:
        assert err.rule in (Rule.ENCODING, Rule.VERSION), err
        return
    assert isinstance(m, Message)
    if not (isinstance(m, Refusal) and len(m.detail) > 1000):  # the encoder truncates details
        assert m.encode() == data  # the encoding is canonical: one message, one byte string


FUZZ = settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _decodes_cleanly(data)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=400))
def test_fuzz_random_bodies_behind_a_valid_header(version, kind, body):
    _decodes_cleanly(msgs.MAGIC + bytes([version % 3, kind % 16]) + body)


@st.composite
def mutated_encodings(draw):
    m = draw(st.sampled_from(one_of_each()))
    data = bytearray(m.encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "chop"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "chop":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_encodings())
def test_fuzz_mutated_valid_encodings(data):
    _decodes_cleanly(data)


@FUZZ
@given(st.sampled_from(one_of_each()), st.data())
def test_fuzz_single_byte_changes_in_the_header_or_lengths_never_escape(m, data):
    raw = bytearray(m.encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    _decodes_cleanly(bytes(raw))


# ------------------------------------------------------------------------ roster
def _roster() -> Roster:
    fed = make_federation(5, ProtocolParams(vector_length=1, max_members=5), seed=4)
    members = list(fed.roster)
    members.append(Member(2**32 - 1, "Ωmega-Ünïon", bytes(range(32)), country="ZA"))
    return Roster.of(members)


def test_roster_round_trips():
    roster = _roster()
    data = roster.encode()
    back = Roster.decode(data)
    assert back == roster
    assert back.encode() == data
    assert back.digest() == roster.digest()
    assert back.by_name("Ωmega-Ünïon").country == "ZA"
    assert Roster.decode(Roster(()).encode()) == Roster(())


def _roster_error(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        Roster.decode(data)
    assert e.value.rule is Rule.ENCODING, e.value
    return e.value


def test_roster_garbage_is_an_encoding_error():
    data = _roster().encode()
    for n in range(len(data)):
        _roster_error(data[:n])
    _roster_error(data + b"\x00")
    assert "exceeds" in _roster_error(struct.pack("<I", (1 << 16) + 1) + data[4:]).detail
    _roster_error(struct.pack("<I", 1 << 31) + data[4:])
    single = Roster(_roster().members[:1]).encode()[4:]  # one member's record
    _roster_error(struct.pack("<I", 2) + single * 2)  # the same member twice
    _roster_error(struct.pack("<I", 1) + struct.pack("<I", 0) + single[4:])  # id 0
    _roster_error(struct.pack("<I", 1) + single[:-4] + struct.pack("<I", 1))  # truncated country
    _roster_error(struct.pack("<II", 1, 5) + struct.pack("<I", 2) + b"\xff\xfe" + bytes(40))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_roster_decode(data):
    try:
        roster = Roster.decode(data)
    except ProtocolError as err:
        assert err.rule is Rule.ENCODING
    else:
        assert isinstance(roster, Roster)


def test_a_message_class_without_its_codec_hooks_is_refused_before_it_is_registered():
    before = dict(msgs._REGISTRY)
    free_type = max(msgs._REGISTRY) + 1
    with pytest.raises(TypeError, match="does not define _write, _read"):

        class Incomplete(msgs.Message):
            TYPE = free_type

    with pytest.raises(TypeError, match="does not define _read"):

        class WriteOnly(msgs.Message):
            TYPE = free_type

            def _write(self, w):
                pass

    assert before == msgs._REGISTRY
