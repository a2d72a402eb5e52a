"""Attacks on secure aggregation, played through the real participant and coordinator code.

The adversary is mostly a MALICIOUS COORDINATOR: it builds requests by hand, rewrites, replays,
splits and mixes them, and re-signs whatever it holds keys for. Some tests play a malicious
PARTICIPANT (a dealer, holder or survivor whose identity key the test holds) against an honest
coordinator, which must convict it and still finish the round.

Each test asserts that honest participants refuse with the `ProtocolError` whose `rule` names the
broken rule and, where it matters, what the adversary got: no peer has both its seed shares and
its key shares released, and the target's individual input cannot be unmasked. Where it can, a
test also shows the attack WOULD have worked without the check: the shares the check withheld,
read from the honest members' state (an oracle, for the what-if only), go into the very
reconstruction the adversary runs (`unmask_individual`), which then returns the target's input.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import keys, shamir
from protocol.coordinator import AggregateResult, CoordinatorRound
from protocol.crypto import (
    SessionContext,
    aead_open,
    aead_seal,
    ed25519_public_bytes,
    x25519_exchange,
    x25519_from_bytes,
    x25519_from_random,
    x25519_public_bytes,
)
from protocol.errors import ProtocolError, Rule
from protocol.local import LocalFederation, make_federation, seeded_randomness, stand_in_model_digest
from protocol.masking import apply_masks
from protocol.messages import (
    AdvertiseRequest,
    BundleSet,
    Complaint,
    EncryptedShare,
    KeyBundle,
    MaskAttestation,
    MaskedInput,
    MaskRequest,
    Message,
    RevealedShare,
    ShareBundle,
    ShareDelivery,
    ShareReceipt,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.params import ProtocolParams
from protocol.participant import HeldShare, Participant, Phase, RoundState, parse_share_plaintext
from protocol.roster import Member, Roster
from protocol.stages import Stage

D = 8
LEVEL16 = (1 << 15) - 1
STAGES = tuple(Stage)  # Round has one method per stage, named by its value
Shares = dict[int, int]  # holder -> share value


# ============================================================================= harness
def exact_params(n: int, d: int = D, **kw) -> ProtocolParams:
    """clip = L: the quantizer's scale is exactly 1, so integer inputs quantize to themselves."""
    kw.setdefault("max_members", n)
    return ProtocolParams(vector_length=d, bits=16, clip=float(LEVEL16), **kw)


def federation(n: int, seed: int = 0, **kw) -> LocalFederation:
    return make_federation(n, exact_params(n, **kw), seed=seed)


def ring_sum(xs: Mapping[int, np.ndarray], members: Iterable[int], params: ProtocolParams) -> np.ndarray:
    total = np.zeros(params.masked_length, dtype=np.int64)
    for m in members:
        total[:-1] += xs[m].astype(np.int64)
        total[-1] += 1
    return total.astype(params.dtype)


Edit = Callable[[int, Message], Message] | None


class Round:
    """One round driven stage by stage through the real code.

    Each stage method asks `members` (default: all the coordinator expects), passes every reply
    through `edit(member, reply)` (the attacker's hook) on to the coordinator and closes the
    stage, keeping the next request: `bset`, `deliveries`, `mreq`, `sreq`, `ureq`.
    """

    def __init__(
        self,
        fed: LocalFederation,
        round_: int | None = None,
        *,
        participants: Mapping[int, Participant] | None = None,
        coordinator: CoordinatorRound | None = None,
    ) -> None:
        self.fed = fed
        self.params, self.ctx = fed.params, fed.context
        self.parts = dict(fed.participants if participants is None else participants)
        self.r = max(p.latest for p in self.parts.values()) + 1 if round_ is None else round_
        self.coord = coordinator or fed.coordinator(self.r)
        self.tr = self.r  # the training round: the protocol round, as run_round does by default
        self.digest = stand_in_model_digest(self.tr)  # the model every member received
        rng = np.random.default_rng(self.r)
        d = self.params.vector_length
        self.xs = {m: rng.integers(-LEVEL16, LEVEL16 + 1, d).astype(np.float64) for m in sorted(self.parts)}
        self.bundles: dict[int, KeyBundle] = {}
        self.share_bundles: dict[int, ShareBundle] = {}
        self.masked: dict[int, MaskedInput] = {}
        self.responses: dict[int, UnmaskResponse] = {}

    @property
    def session(self) -> bytes:
        return self.coord.session

    def state(self, m: int) -> RoundState:
        return self.parts[m].rounds[self.r]

    @staticmethod
    def _who(members: Iterable[int] | None, default: Iterable[int]) -> list[int]:
        return sorted(default) if members is None else list(members)

    @staticmethod
    def _edit(edit: Edit, m: int, reply: Message) -> Message:
        return edit(m, reply) if edit else reply

    def advertise(self, members: Iterable[int] | None = None, edit: Edit = None) -> BundleSet:
        req = self.coord.advertise_request()
        for m in self._who(members, self.parts):
            b = self._edit(edit, m, self.parts[m].advertise(req))
            self.coord.add_bundle(b)
            self.bundles[m] = b
        self.bset = self.coord.bundle_set()
        return self.bset

    def share(self, members: Iterable[int] | None = None, edit: Edit = None) -> None:
        for m in self._who(members, self.coord.cohort):
            sb = self._edit(edit, m, self.parts[m].share(self.bset))
            self.coord.add_shares(sb)
            self.share_bundles[m] = sb
        self.deliveries = self.coord.deliveries()

    def receive(self, members: Iterable[int] | None = None, edit: Edit = None) -> None:
        for m in self._who(members, self.deliveries):
            self.coord.add_receipt(self._edit(edit, m, self.parts[m].receive(self.deliveries[m])))
        self.mreq = self.coord.mask_request(training_round=self.tr, model_digest=self.digest)

    def mask(self, members: Iterable[int] | None = None, edit: Edit = None) -> None:
        for m in self._who(members, self.mreq.shared):
            mi = self._edit(edit, m, self.parts[m].mask(self.mreq, self.xs[m], 1, self.digest))
            self.coord.add_masked(mi)
            self.masked[m] = mi
        self.sreq = self.coord.survivor_request()

    def sign(self, members: Iterable[int] | None = None, edit: Edit = None) -> None:
        for m in self._who(members, self.sreq.survivors):
            self.coord.add_signature(self._edit(edit, m, self.parts[m].sign_survivors(self.sreq)))
        self.ureq = self.coord.unmask_request()

    def unmask(self, members: Iterable[int] | None = None, edit: Edit = None) -> None:
        for m in self._who(members, self.ureq.survivors):
            resp = self._edit(edit, m, self.parts[m].unmask(self.ureq))
            self.coord.add_unmask(resp)
            self.responses[m] = resp

    def until(self, last: str) -> Round:
        for stage in STAGES[: STAGES.index(last) + 1]:
            getattr(self, stage)()
        return self

    def finish_from(self, stage: str) -> AggregateResult:
        """Run the honest stages from `stage` on, for everyone still expected, and finish."""
        for s in STAGES[STAGES.index(stage) :]:
            getattr(self, s)()
        return self.coord.finish()

    def statement(self, survivors: tuple[int, ...]) -> bytes:
        """The survivor statement members sign for this C2 (C1, weights and model as masked)."""
        m = self.mreq
        return keys.survivors_transcript(
            self.ctx, self.r, self.session, m.shared, survivors, m.weights, m.training_round, m.model_digest
        )

    def sign_as(self, m: int, survivors: tuple[int, ...]) -> SurvivorSignature:
        """A survivor signature made with member m's identity key (the test holds them all)."""
        return SurvivorSignature(self.r, m, self.session, self.fed.identities[m].sign(self.statement(survivors)))

    def attestations(self, survivors: Iterable[int]) -> tuple[MaskAttestation, ...]:
        """The mask attestations of these survivors, from their masked inputs (a malicious
        coordinator building its own UnmaskRequest has them all)."""
        return tuple(self.masked[m].attestation for m in survivors if m in self.masked)


def refuse(rule: Rule, call: Callable, *args: object) -> ProtocolError:
    """`call(*args)` must raise ProtocolError for exactly `rule`."""
    with pytest.raises(ProtocolError) as e:
        call(*args)
    assert e.value.rule is rule, f"expected {rule}, got {e.value!r}"
    return e.value


def assert_aborted_and_wiped(p: Participant, r: int) -> None:
    """Rule 7: the round is over for this member and none of its round secrets is left."""
    st = p.rounds[r]
    assert st.phase is Phase.ABORTED
    assert st.encryption_sk == st.masking_sk == st.seed == b""
    assert st.held == {} and st.peers == {}


def send_to_all(rnd: Round, members: Iterable[int], rule: Rule, msg: Message) -> None:
    """Every member given `msg` refuses it for `rule`, and its round is aborted and wiped."""
    for m in members:
        refuse(rule, rnd.parts[m].handle, msg, rnd.xs[m], 1, rnd.digest)
        assert_aborted_and_wiped(rnd.parts[m], rnd.r)


def released(responses: Iterable[UnmaskResponse]) -> tuple[dict[int, Shares], dict[int, Shares]]:
    """(seed shares, key shares) that the responses revealed, as dealer -> holder -> value."""
    seeds: dict[int, Shares] = {}
    keyz: dict[int, Shares] = {}
    for resp in responses:
        for s in resp.seed_shares:
            seeds.setdefault(s.dealer, {})[resp.member] = shamir.decode_share(s.value)
        for s in resp.key_shares:
            keyz.setdefault(s.dealer, {})[resp.member] = shamir.decode_share(s.value)
    return seeds, keyz


def assert_no_peer_has_both_shares_released(responses: Iterable[UnmaskResponse]) -> None:
    seeds, keyz = released(responses)
    assert not set(seeds) & set(keyz), f"both shares released of {sorted(set(seeds) & set(keyz))}"


def held_shares(rnd: Round, dealer: int, holders: Iterable[int], kind: str) -> Shares:
    """ORACLE for the what-if (or a colluder's loot): the shares of `dealer` that `holders` keep."""
    out = {}
    for h in holders:
        held = rnd.state(h).held.get(dealer)
        if held is not None:
            out[h] = shamir.decode_share(held.seed if kind == keys.SEED else held.key)
    return out


def unmask_individual(
    rnd: Round, target: int, seed_shares: Mapping[int, int], key_shares: Mapping[int, int]
) -> np.ndarray | None:
    """The coordinator's attack: reconstruct the target's self-mask seed AND masking key, strip
    every mask off its masked input and read its input. None with fewer than t of either."""
    coord, ctx, r, sess = rnd.coord, rnd.ctx, rnd.r, rnd.session
    t = rnd.params.shamir_threshold(len(coord.neighbours[target]))
    if len(seed_shares) < t or len(key_shares) < t:
        return None
    seed = shamir.reconstruct(dict(seed_shares), t)
    sk = x25519_from_bytes(shamir.reconstruct(dict(key_shares), t))
    y = np.array(rnd.masked[target].vector, dtype=rnd.params.dtype)  # a writable copy
    plus, minus = [], [keys.self_mask_key(ctx, r, sess, target, seed)]
    for k in sorted(coord.neighbours[target] & set(rnd.mreq.shared)):
        dh = x25519_exchange(sk, rnd.bundles[k].masking_key)
        # the target added +PRG(pair key) when it had the smaller id: take it back out
        (minus if target < k else plus).append(keys.pair_mask_key(ctx, r, sess, target, k, dh))
    apply_masks(y, plus, minus)
    assert y[-1] == 1  # its weight: the masks really are gone
    return y[:-1].view(np.int32).astype(np.float64)


# ---------------------------------------------------------------- a malicious dealer's tools
def share_key(rnd: Round, dealer: int, holder: int, secret_of: int) -> bytes:
    """The directional share key dealer -> holder, from `secret_of`'s encryption secret."""
    other = holder if secret_of == dealer else dealer
    dh = x25519_exchange(x25519_from_bytes(rnd.state(secret_of).encryption_sk), rnd.bundles[other].encryption_key)
    return keys.share_encryption_key(rnd.ctx, rnd.r, rnd.session, dealer, holder, dh)


def redeal(
    rnd: Round,
    sb: ShareBundle,
    *,
    garble: bool = False,
    seed_values: Mapping[int, int | bytes] | None = None,
    key_values: Mapping[int, int | bytes] | None = None,
    value_signer: Ed25519PrivateKey | None = None,
) -> ShareBundle:
    """A malicious dealer (the test holds its identity key and round secrets) deals again:
    garbage ciphertexts under the right key digest, or other share values, encrypted and signed
    (by `value_signer`, default the dealer); then it signs the new bundle with its identity key,
    so the coordinator takes the bundle as the dealer's own."""
    dealer, ctx, r, sess = sb.member, rnd.ctx, rnd.r, rnd.session
    ident = rnd.fed.identities[dealer]
    signer = value_signer or ident

    def element(v: int | bytes) -> bytes:
        return v if isinstance(v, bytes) else shamir.encode_share(v)

    items = []
    for it in sb.shares:
        k = share_key(rnd, dealer, it.holder, secret_of=dealer)
        ad = keys.share_associated_data(ctx, r, sess, dealer, it.holder)
        if garble:
            ct = bytes(b ^ 0x5A for b in it.ciphertext)
        else:
            old = parse_share_plaintext(aead_open(k, it.nonce, it.ciphertext, ad))
            sv = element(seed_values[it.holder]) if seed_values else old.seed
            kv = element(key_values[it.holder]) if key_values else old.key
            sig = {
                kind: signer.sign(keys.share_value_transcript(ctx, r, sess, kind, dealer, it.holder, v))
                for kind, v in ((keys.SEED, sv), (keys.KEY, kv))
            }
            ct = aead_seal(k, it.nonce, sv + sig[keys.SEED] + kv + sig[keys.KEY], ad)
        item_sig = ident.sign(keys.share_item_transcript(ctx, r, sess, dealer, it.holder, it.key_digest, it.nonce, ct))
        items.append(EncryptedShare(dealer, it.holder, it.key_digest, it.nonce, ct, item_sig))
    signature = ident.sign(keys.share_bundle_transcript(ctx, r, sess, dealer, sb.commitment, items))
    return ShareBundle(r, dealer, sess, sb.commitment, tuple(items), signature)


def replace_bundle(bset: BundleSet, bundle: KeyBundle) -> BundleSet:
    return BundleSet(bset.round, tuple(bundle if b.member == bundle.member else b for b in bset.bundles))


def signed_bundle(key: Ed25519PrivateKey, ctx: SessionContext, r: int, m: int, enc: bytes, msk: bytes) -> KeyBundle:
    """A key bundle of member m for round r, signed with `key` (whoever holds it)."""
    unsigned = KeyBundle(r, m, enc, msk, bytes(64))
    return dataclasses.replace(unsigned, signature=key.sign(keys.bundle_transcript(ctx, unsigned)))


# ============================================================================= 1. key bundles
def test_substituted_keys_are_refused_by_every_member():
    """The coordinator swaps member 3's keys for its own (it cannot sign as 3). Accepted, every
    share dealt to 3 would be encrypted to the coordinator. Everyone refuses, member 3 included:
    its own bundle fails the signature check before the own-bundle comparison is reached."""
    fed = federation(6)
    rnd = Round(fed)
    rnd.advertise()
    theirs = rnd.bundles[3]
    evil = KeyBundle(rnd.r, 3, rnd.bundles[1].encryption_key, rnd.bundles[2].masking_key, theirs.signature)
    send_to_all(rnd, fed.participants, Rule.BAD_SIGNATURE, replace_bundle(rnd.bset, evil))


def test_own_bundle_altered_under_a_stolen_identity_key():
    """A coordinator that stole member 3's identity key makes every OTHER member accept its
    substitute keys for 3, but member 3 itself will not deal with keys that are not its own."""
    fed = federation(6)
    rnd = Round(fed)
    rnd.advertise()
    evil = signed_bundle(
        fed.identities[3],
        rnd.ctx,
        rnd.r,
        3,
        rnd.bundles[1].encryption_key,
        rnd.bundles[2].masking_key,
    )
    forged = replace_bundle(rnd.bset, evil)
    send_to_all(rnd, [3], Rule.OWN_BUNDLE_ALTERED, forged)
    fed.participants[1].share(forged)  # the others cannot tell: this check is member 3's alone


LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ((1 << 255) - 20).to_bytes(32, "little"),  # p - 1
    ((1 << 255) - 19).to_bytes(32, "little"),  # p
    ((1 << 255) - 18).to_bytes(32, "little"),  # p + 1
]


@pytest.mark.parametrize("which", ["encryption", "masking"])
@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p[:4].hex())
def test_low_order_key_signed_by_its_member_is_refused(which, point):
    """A malicious member advertises a low-order X25519 key (every DH with it gives a secret
    known to all): the coordinator and every other member refuse the bundle."""
    fed = federation(4)
    rnd = Round(fed)
    rnd.advertise()
    good = rnd.bundles[4]
    enc, msk = (point, good.masking_key) if which == "encryption" else (good.encryption_key, point)
    bad = signed_bundle(fed.identities[4], rnd.ctx, rnd.r, 4, enc, msk)
    assert refuse(Rule.BAD_KEY, fed.coordinator(rnd.r).add_bundle, bad).culprits == (4,)
    send_to_all(rnd, [1, 2, 3], Rule.BAD_KEY, replace_bundle(rnd.bset, bad))


# ============================================================================= 2. membership
def sybil_roster(fed: LocalFederation, ids: Iterable[int]) -> tuple[Roster, dict[int, Ed25519PrivateKey]]:
    """The federation's roster plus members the coordinator made up (and holds the keys of)."""
    sybils = {i: Ed25519PrivateKey.from_private_bytes(seeded_randomness(b"sybil%d" % i)(32)) for i in ids}
    extra = [Member(i, f"sybil-{i}", ed25519_public_bytes(k)) for i, k in sybils.items()]
    return Roster.of([*fed.roster.members, *extra]), sybils


@pytest.mark.parametrize("coordinator_roster", ["the federation's", "its own, listing the fake member"])
def test_member_outside_the_roster_is_refused(coordinator_roster):
    """A bundle from member 99, signed with a key the coordinator made: injected by hand into
    the set, or accepted because the coordinator's own roster lists it. Members check their own."""
    fed = federation(6, max_members=7)  # room for the fake member in the coordinator's cohort
    inflated, sybils = sybil_roster(fed, [99])
    rand = seeded_randomness(b"fake")
    enc, msk = (x25519_public_bytes(x25519_from_random(rand)) for _ in range(2))
    fake = signed_bundle(sybils[99], fed.context, 1, 99, enc, msk)
    if coordinator_roster == "the federation's":
        rnd = Round(fed, 1)
        refuse(Rule.UNKNOWN_MEMBER, rnd.coord.add_bundle, fake)  # honest code refuses it too ...
        rnd.advertise()
        forged = BundleSet(1, (*rnd.bset.bundles, fake))  # ... so the coordinator injects it
    else:
        rnd = Round(fed, 1, coordinator=CoordinatorRound(1, inflated, fed.context, fed.params))
        for p in fed.participants.values():
            rnd.coord.add_bundle(p.advertise(AdvertiseRequest(1)))
        rnd.coord.add_bundle(fake)  # its roster lists member 99
        forged = rnd.coord.bundle_set()
        assert 99 in rnd.coord.cohort
    send_to_all(rnd, fed.participants, Rule.UNKNOWN_MEMBER, forged)


def test_sybils_unmask_a_member_who_trusts_the_coordinators_roster():
    """Why a member checks bundles against its OWN roster. Among members the coordinator made
    up, a member deals every share to the coordinator and masks only against keys it holds: its
    input comes out in the clear. Given its own roster, the same member refuses the same set."""
    fed = federation(4)
    inflated, sybils = sybil_roster(fed, [101, 102, 103])
    target = 1

    def twin(roster: Roster) -> Participant:  # same identity, same randomness: same keys
        return Participant(
            target,
            fed.identities[target],
            roster,
            fed.context,
            fed.params,
            randomness=seeded_randomness(b"target"),
        )

    honest, gullible = twin(fed.roster), twin(inflated)
    parts = {target: gullible}
    for i, k in sybils.items():
        parts[i] = Participant(i, k, inflated, fed.context, fed.params, randomness=seeded_randomness(b"%d" % i))
    rnd = Round(
        fed,
        1,
        participants=parts,
        coordinator=CoordinatorRound(1, inflated, fed.context, fed.params),
    )
    rnd.until("mask")
    assert honest.advertise(AdvertiseRequest(1)) == rnd.bundles[target]
    refuse(Rule.UNKNOWN_MEMBER, honest.share, rnd.bset)
    assert_aborted_and_wiped(honest, 1)
    seeds = held_shares(rnd, target, sybils, keys.SEED)  # the sybils' loot
    keyz = held_shares(rnd, target, sybils, keys.KEY)
    assert np.array_equal(unmask_individual(rnd, target, seeds, keyz), rnd.xs[target])


@pytest.mark.parametrize("copy", ["verbatim", "altered"])
def test_duplicate_bundle_is_refused(copy):
    """Two bundles for member 2 (a copy, or one with other keys): refused by members and
    coordinator alike, before any signature is checked."""
    fed = federation(5)
    rnd = Round(fed)
    rnd.advertise()
    b = rnd.bundles[2]
    dup = b if copy == "verbatim" else dataclasses.replace(b, encryption_key=rnd.bundles[1].encryption_key)
    send_to_all(rnd, fed.participants, Rule.DUPLICATE_MEMBER, BundleSet(rnd.r, (*rnd.bset.bundles, dup)))
    coord = fed.coordinator(rnd.r)
    coord.add_bundle(b)
    refuse(Rule.DUPLICATE_MEMBER, coord.add_bundle, dup)


# ============================================================================= 3. overlap
def test_survivor_listed_as_dropped_releases_nothing():
    """The attack that broke Flower's SecAgg+: one request asking for member 1's seed shares
    (as a survivor) AND its key shares (as dropped). Nobody releases anything; answered, the
    request would have handed the coordinator member 1's input."""
    fed = federation(6)
    rnd = Round(fed).until("sign")
    target = 1
    holders = [h for h in rnd.ureq.survivors if h != target]
    oracle_seed = held_shares(rnd, target, holders, keys.SEED)
    oracle_key = held_shares(rnd, target, holders, keys.KEY)
    evil = UnmaskRequest(rnd.r, rnd.session, rnd.ureq.survivors, (target,), rnd.ureq.signatures, rnd.ureq.attestations)
    send_to_all(rnd, rnd.ureq.survivors, Rule.SURVIVOR_DROPPED_OVERLAP, evil)
    for p in fed.participants.values():
        assert p.rounds[rnd.r].released_seed == p.rounds[rnd.r].released_key == ()
    assert unmask_individual(rnd, target, {}, {}) is None
    assert np.array_equal(unmask_individual(rnd, target, oracle_seed, oracle_key), rnd.xs[target])


# ============================================================================= 4. two requests
def test_second_unmask_request_cannot_get_the_other_shares():
    """After a valid unmask (member 6 dropped before masking) the coordinator asks again, with
    member 1 moved to 'dropped' (for its key shares), or member 6 moved to 'survivors' (for its
    seed shares), or just the same request: refused; no peer ever has both shares released."""
    fed = federation(6)
    rnd = Round(fed)
    rnd.until("receive")
    rnd.mask(members=[1, 2, 3, 4, 5])
    rnd.sign()
    assert rnd.ureq.dropped == (6,)
    target = 1
    oracle_key = held_shares(rnd, target, [2, 3, 4, 5], keys.KEY)
    rnd.unmask()
    assert np.array_equal(rnd.coord.finish().total, ring_sum(rnd.xs, [1, 2, 3, 4, 5], fed.params))
    sigs, atts = rnd.ureq.signatures, rnd.ureq.attestations
    one_dropped = UnmaskRequest(rnd.r, rnd.session, (2, 3, 4, 5), (1, 6), sigs, atts)
    six_survived = UnmaskRequest(rnd.r, rnd.session, (1, 2, 3, 4, 5, 6), (), sigs, atts)
    for m in rnd.ureq.survivors:
        p = fed.participants[m]
        # member 1 holds no share of its own, so for it the first request is a plain replay
        refuse(Rule.BOTH_SHARES if m != target else Rule.REPLAY, p.unmask, one_dropped)
        refuse(Rule.BOTH_SHARES, p.unmask, six_survived)
        refuse(Rule.REPLAY, p.unmask, rnd.ureq)
    assert_no_peer_has_both_shares_released(rnd.responses.values())
    seeds, keyz = released(rnd.responses.values())
    assert len(seeds[target]) >= fed.params.shamir_threshold(5)  # its seed is out (it survived)
    assert unmask_individual(rnd, target, seeds[target], keyz.get(target, {})) is None
    assert np.array_equal(unmask_individual(rnd, target, seeds[target], oracle_key), rnd.xs[target])


# ============================================================================= 5. consistency
def split_views(n: int, target: int, half_a: list[int]) -> tuple[Round, dict]:
    """Everyone shared and masked. Half A is told that everyone survived (view A), the others
    that all but the target did (view B); each member signs the view it was told."""
    fed = federation(n)
    rnd = Round(fed).until("mask")
    c1 = rnd.mreq.shared
    v = {
        "a": half_a,
        "b": [m for m in c1 if m not in half_a],
        "view_a": c1,
        "view_b": tuple(m for m in c1 if m != target),
        "sig": {},
    }
    for half in "ab":
        req = SurvivorRequest(rnd.r, rnd.session, c1, v[f"view_{half}"])
        for m in v[half]:
            v["sig"][m] = fed.participants[m].sign_survivors(req)
    return rnd, v


def padded_signatures(rnd: Round, v: dict, half: str) -> tuple[SurvivorSignature, ...]:
    """One half's genuine signatures, padded with copies relabelled to other members,
    duplicates, garbage, and signatures made with a key of the coordinator's."""
    own = [v["sig"][m] for m in v[half]]
    others = v["b" if half == "a" else "a"]
    outsider = Ed25519PrivateKey.from_private_bytes(bytes(32))
    statement = rnd.statement(v[f"view_{half}"])
    return (
        *own,
        *(SurvivorSignature(rnd.r, m, rnd.session, own[i % len(own)].signature) for i, m in enumerate(others)),
        *[own[0]] * 5,
        *(SurvivorSignature(rnd.r, m, rnd.session, bytes([m]) * 64) for m in others),
        *(SurvivorSignature(rnd.r, m, rnd.session, outsider.sign(statement)) for m in others),
    )


@pytest.mark.parametrize("signatures", ["own half", "both halves mixed", "forged and copied"])
def test_split_survivor_views_are_refused(signatures):
    """Members 1-3 are told everyone survived, 4-6 that member 1 dropped, the coordinator hoping
    for member 1's seed shares from one half and its key shares from the other. Neither half
    (3 signers < 4) can prove its view: every member refuses and nothing is released."""
    rnd, v = split_views(6, target=1, half_a=[1, 2, 3])
    everyone = tuple(v["sig"][m] for m in sorted(v["sig"]))
    for half, dropped in (("a", ()), ("b", (1,))):
        sigs = {
            "own half": tuple(v["sig"][m] for m in v[half]),
            "both halves mixed": everyone,
            "forged and copied": padded_signatures(rnd, v, half),
        }[signatures]
        view = v[f"view_{half}"]
        req = UnmaskRequest(rnd.r, rnd.session, view, dropped, sigs, rnd.attestations(view))
        send_to_all(rnd, v[half], Rule.INCONSISTENT_SURVIVORS, req)
    for p in rnd.parts.values():
        assert p.rounds[rnd.r].released_seed == p.rounds[rnd.r].released_key == ()


def test_split_views_with_colluding_members_still_hide_the_target():
    """n = N = 10, so c = ceil(10/3) - 1 = 3 colluders are tolerated, T = max((N + c)//2 + 1,
    ceil(2N/3)) = 7 signatures and t = max(ceil(2*9/3), c + 1) = 6 shares. Members 8-10 collude:
    they sign both views and hand over every share they hold. View A (1-4 and the colluders: 7
    signers) is proven, so 2-4 release member 1's seed shares; view B (5-7 and the colluders: 6)
    is not, so member 1's key shares stay with 5-7. Without the signature check the coordinator
    would hold 6 seed AND 6 key shares of member 1, and read its input."""
    rnd, v = split_views(10, target=1, half_a=[1, 2, 3, 4])
    target, colluders, honest_b = 1, [8, 9, 10], [5, 6, 7]
    assert rnd.params.collusion_bound == len(colluders) == 3
    assert rnd.params.consistency_threshold() == 7 and rnd.params.shamir_threshold(9) == 6
    loot_seed = held_shares(rnd, target, colluders, keys.SEED)
    loot_key = held_shares(rnd, target, colluders, keys.KEY)
    oracle_key = held_shares(rnd, target, honest_b, keys.KEY)
    sig_a = [v["sig"][m] for m in v["a"]] + [rnd.sign_as(m, v["view_a"]) for m in colluders]
    sig_b = [v["sig"][m] for m in honest_b] + [rnd.sign_as(m, v["view_b"]) for m in colluders]

    req_a = UnmaskRequest(rnd.r, rnd.session, v["view_a"], (), tuple(sig_a), rnd.attestations(v["view_a"]))
    responses = [rnd.parts[m].unmask(req_a) for m in v["a"]]  # a proven view: answered
    req_b = UnmaskRequest(rnd.r, rnd.session, v["view_b"], (target,), tuple(sig_b), rnd.attestations(v["view_b"]))
    send_to_all(rnd, honest_b, Rule.INCONSISTENT_SURVIVORS, req_b)

    assert_no_peer_has_both_shares_released(responses)
    seeds, keyz = released(responses)
    seed_pool = {**seeds[target], **loot_seed}
    key_pool = {**keyz.get(target, {}), **loot_key}
    assert len(seed_pool) >= 6 > len(key_pool)
    assert unmask_individual(rnd, target, seed_pool, key_pool) is None
    assert np.array_equal(unmask_individual(rnd, target, seed_pool, {**key_pool, **oracle_key}), rnd.xs[target])


BAD_SURVIVOR_REQUESTS: dict[str, tuple[Callable[[tuple[int, ...]], tuple], Rule]] = {
    # name -> (C1 as masked -> (C1, C2) sent to member 1, rule)
    "C1 shrunk after masking": (lambda c1: (c1[:-1], c1[:-1]), Rule.INCONSISTENT_SURVIVORS),
    "C1 grown after masking": (lambda c1: ((*c1, 99), c1), Rule.INCONSISTENT_SURVIVORS),
    "survivor outside C1": (lambda c1: (c1, (*c1[:-1], 99)), Rule.SET_NOT_SUBSET),
    "this member omitted": (lambda c1: (c1, c1[1:]), Rule.NOT_A_PARTICIPANT),
    "below consistency threshold": (lambda c1: (c1, c1[:3]), Rule.THRESHOLD),
    "below minimum cohort": (lambda c1: (c1, c1[:2]), Rule.COHORT_TOO_SMALL),
    "member listed twice": (lambda c1: (c1, (*c1, c1[-1])), Rule.DUPLICATE_MEMBER),
}


@pytest.mark.parametrize("case", list(BAD_SURVIVOR_REQUESTS))
def test_bad_survivor_request_is_refused(case):
    """Rule 5: the C1 signed is the C1 masked with; C2 is a subset of it, holds this member and
    reaches both the consistency threshold and the minimum cohort."""
    fed = federation(6)  # consistency threshold 4, min_cohort 3
    rnd = Round(fed).until("mask")
    make, rule = BAD_SURVIVOR_REQUESTS[case]
    shared, survivors = make(rnd.mreq.shared)
    assert rnd.mreq.shared[0] == 1
    send_to_all(rnd, [1], rule, SurvivorRequest(rnd.r, rnd.session, shared, survivors))


@pytest.mark.parametrize("case", ["survivors differ from signed", "dropped outside C1 - C2", "no signatures"])
def test_bad_unmask_request_is_refused(case):
    """Rule 6: the survivors are the ones signed, dropped members shared but did not survive,
    and enough members signed that same view."""
    fed = federation(6)
    rnd = Round(fed)
    rnd.until("receive")
    rnd.mask(members=[1, 2, 3, 4, 5])
    rnd.sign()
    r, s, sigs, atts = rnd.r, rnd.session, rnd.ureq.signatures, rnd.ureq.attestations
    req, rule = {
        "survivors differ from signed": (
            UnmaskRequest(r, s, (1, 2, 3, 4), (5, 6), sigs, atts),
            Rule.INCONSISTENT_SURVIVORS,
        ),
        "dropped outside C1 - C2": (
            UnmaskRequest(r, s, (1, 2, 3, 4, 5), (6, 7), sigs, atts),
            Rule.SET_NOT_SUBSET,
        ),
        "no signatures": (
            UnmaskRequest(r, s, (1, 2, 3, 4, 5), (6,), (), atts),
            Rule.INCONSISTENT_SURVIVORS,
        ),
    }[case]
    send_to_all(rnd, [1, 2, 3, 4, 5], rule, req)


# ============================================================================= 6. replays
def test_messages_of_the_previous_round_are_replays():
    """Every request of round 1 replayed as it was during round 2 is refused as a replay, and
    round 2 goes on undisturbed; so is an AdvertiseRequest for a round already advertised, and
    any request of a round so old that its state is gone."""
    fed = federation(6)
    old = Round(fed, 1).until("unmask")
    old.coord.finish()
    new = Round(fed, 2)
    parts = fed.participants

    def replay(msg_of: Callable[[int], Message]) -> None:
        for m, p in parts.items():
            refuse(Rule.REPLAY, p.handle, msg_of(m), new.xs[m], 1, new.digest)

    new.advertise()
    replay(lambda m: old.bset)
    new.share()
    replay(lambda m: old.deliveries[m])
    new.receive()
    replay(lambda m: old.mreq)
    new.mask()
    replay(lambda m: old.sreq)
    new.sign()
    replay(lambda m: old.ureq)
    new.unmask()
    assert np.array_equal(new.coord.finish().total, ring_sum(new.xs, parts, fed.params))
    replay(lambda m: AdvertiseRequest(1))
    replay(lambda m: AdvertiseRequest(2))
    for r in (3, 4, 5):  # round 1 leaves the window: no state left for it, still a replay
        for p in parts.values():
            p.advertise(AdvertiseRequest(r))
    assert all(1 not in p.rounds for p in parts.values())
    for msg in (old.bset, old.mreq, old.ureq):
        replay(lambda m, msg=msg: msg)


def rewritten(case: str, old: Round, new: Round) -> tuple[Message, Rule]:
    """A message of round 1 (member 1's), its round number rewritten to round 2."""
    r, s1 = new.r, old.session
    if case == "bundle set":
        return BundleSet(r, old.bset.bundles), Rule.WRONG_ROUND
    if case == "bundle set, bundles re-dated":
        return BundleSet(r, tuple(dataclasses.replace(b, round=r) for b in old.bset.bundles)), Rule.BAD_SIGNATURE
    if case == "share delivery":
        return ShareDelivery(r, s1, old.deliveries[1].shares), Rule.WRONG_SESSION
    if case == "mask request":
        return dataclasses.replace(old.mreq, round=r), Rule.WRONG_SESSION
    if case == "survivor request":
        return SurvivorRequest(r, s1, old.sreq.shared, old.sreq.survivors), Rule.WRONG_SESSION
    if case == "unmask request":
        return dataclasses.replace(old.ureq, round=r), Rule.WRONG_SESSION
    # round 2's session and sets, with round 1's signatures re-dated to round 2
    sigs = tuple(dataclasses.replace(s, round=r, session=new.session) for s in old.ureq.signatures)
    return dataclasses.replace(new.ureq, signatures=sigs), Rule.INCONSISTENT_SURVIVORS


@pytest.mark.parametrize(
    "case, last",
    [
        ("bundle set", "advertise"),
        ("bundle set, bundles re-dated", "advertise"),
        ("share delivery", "share"),
        ("mask request", "receive"),
        ("survivor request", "mask"),
        ("unmask request", "sign"),
        ("unmask request, signatures re-dated", "sign"),
    ],
)
def test_round_number_rewritten_to_the_new_round(case, last):
    """Round 1's messages re-dated to round 2: their bundles, session or signatures give them
    away (WRONG_ROUND / BAD_SIGNATURE / WRONG_SESSION / no valid signatures)."""
    fed = federation(4)
    old = Round(fed, 1).until("unmask")
    old.coord.finish()
    new = Round(fed, 2).until(last)
    msg, rule = rewritten(case, old, new)
    send_to_all(new, [1], rule, msg)


# ============================================================================= 7. stage order
def _cohort(rnd: Round) -> tuple[int, ...]:
    return rnd.coord.cohort


STAGE_ATTACKS: dict[str, tuple[str, Callable[[Round], Message], Rule]] = {
    # name -> (last stage completed, the request member 1 gets, rule)
    "shares delivered before sharing": (
        "advertise",
        lambda rnd: ShareDelivery(rnd.r, rnd.session, ()),
        Rule.OUT_OF_ORDER,
    ),
    "mask before receiving shares": (
        "share",
        lambda rnd: MaskRequest(rnd.r, rnd.session, _cohort(rnd)),
        Rule.OUT_OF_ORDER,
    ),
    "survivors before masking": (
        "receive",
        lambda rnd: SurvivorRequest(rnd.r, rnd.session, _cohort(rnd), _cohort(rnd)),
        Rule.OUT_OF_ORDER,
    ),
    "unmask before signing": (
        "mask",
        lambda rnd: UnmaskRequest(rnd.r, rnd.session, _cohort(rnd), (), ()),
        Rule.OUT_OF_ORDER,
    ),
    "advertise again": ("share", lambda rnd: AdvertiseRequest(rnd.r), Rule.REPLAY),
    "bundle set again": ("receive", lambda rnd: rnd.bset, Rule.REPLAY),
    "delivery again": ("receive", lambda rnd: rnd.deliveries[1], Rule.REPLAY),
    "mask request again": ("mask", lambda rnd: rnd.mreq, Rule.REPLAY),
    "survivor request again": ("sign", lambda rnd: rnd.sreq, Rule.REPLAY),
}
NEXT_REQUEST: dict[str, Callable[[Round], Message]] = {
    "advertise": lambda rnd: rnd.bset,
    "share": lambda rnd: rnd.deliveries[1],
    "receive": lambda rnd: rnd.mreq,
    "mask": lambda rnd: rnd.sreq,
    "sign": lambda rnd: rnd.ureq,
}


@pytest.mark.parametrize("attack", list(STAGE_ATTACKS))
def test_wrong_stage_aborts_the_round_and_wipes_its_secrets(attack):
    """Rule 3 (stages in order, each once) and rule 7 (any broken rule aborts the round for
    this member and wipes its secrets): the request it was due next is refused too."""
    fed = federation(4)
    last, make, rule = STAGE_ATTACKS[attack]
    rnd = Round(fed).until(last)
    send_to_all(rnd, [1], rule, make(rnd))
    refuse(Rule.OUT_OF_ORDER, fed.participants[1].handle, NEXT_REQUEST[last](rnd), rnd.xs[1], 1, rnd.digest)


# ========================================================================= 8. malicious members
BAD_DEALINGS: dict[str, dict] = {
    "garbage ciphertexts": {"garble": True},
    "share values not signed by the dealer": {"value_signer": Ed25519PrivateKey.from_private_bytes(bytes(range(32)))},
    # signed, but no field elements (>= 2^521 - 1 in 66 bytes): rule 4, checked at once. Held,
    # they would be in every honest holder's unmask response, each then rejected: round lost.
    "share values outside the field": {
        "seed_values": {h: (shamir.PRIME + h).to_bytes(shamir.ELEMENT_BYTES, "little") for h in range(9)}
    },
}


@pytest.mark.parametrize("dealing", list(BAD_DEALINGS))
def test_bad_shares_convict_their_dealer(dealing):
    """A malicious dealer (3) deals bad shares under the right key digests: every holder
    complains, the coordinator checks the revealed keys, convicts the dealer, leaves it out of
    C1, and the round ends with the exact sum of the others."""
    fed = federation(6)
    rnd = Round(fed)
    rnd.advertise()
    dealer = 3
    rnd.share(edit=lambda m, sb: redeal(rnd, sb, **BAD_DEALINGS[dealing]) if m == dealer else sb)
    rnd.receive()
    assert rnd.coord.faults == {dealer: Rule.BAD_SHARE.value}
    assert rnd.mreq.shared == (1, 2, 4, 5, 6)
    result = rnd.finish_from("mask")
    assert result.complaints == {h: (dealer,) for h in (1, 2, 4, 5, 6)}
    assert np.array_equal(result.total, ring_sum(rnd.xs, (1, 2, 4, 5, 6), fed.params))


@pytest.mark.parametrize("key", ["true key", "wrong key"])
def test_false_complaint(key):
    """A malicious holder (2) complains about an honest dealer (4) (and, to be consistent, does
    not list 4's shares as held). With the true key the share is seen to be valid: the holder
    alone is convicted. With a key that does not match the dealer's signed digest the complaint
    cannot be judged, and an honest holder never makes one (it just does not hold such a share):
    again only the complainer is convicted, so one member's word never excludes another. Either
    way the round ends with the exact sum of the rest (n = 8: t = 5 of 7 holders, T = 6)."""
    fed = federation(8)
    rnd = Round(fed).until("share")
    holder, dealer = 2, 4
    k = share_key(rnd, dealer, holder, secret_of=holder) if key == "true key" else bytes(range(32))

    def complain(m: int, rc: ShareReceipt) -> ShareReceipt:
        if m != holder:
            return rc
        held = tuple(d for d in rc.held if d != dealer)
        return dataclasses.replace(rc, complaints=(*rc.complaints, Complaint(dealer, k)), held=held)

    rnd.receive(edit=complain)
    excluded = {holder}
    assert set(rnd.coord.faults) == excluded
    assert rnd.mreq.shared == tuple(m for m in fed.participants if m not in excluded)
    result = rnd.finish_from("mask")
    assert np.array_equal(result.total, ring_sum(rnd.xs, rnd.mreq.shared, fed.params))


def _altered_value(resp: UnmaskResponse, held: dict[int, HeldShare]) -> UnmaskResponse:
    s = resp.seed_shares[0]
    forged = shamir.encode_share((shamir.decode_share(s.value) + 1) % shamir.PRIME)
    return dataclasses.replace(resp, seed_shares=(dataclasses.replace(s, value=forged), *resp.seed_shares[1:]))


def _relabelled(resp: UnmaskResponse, held: dict[int, HeldShare]) -> UnmaskResponse:
    first, second, *rest = resp.seed_shares
    return dataclasses.replace(resp, seed_shares=(dataclasses.replace(second, dealer=first.dealer), *rest))


def _key_share_of_a_survivor(resp: UnmaskResponse, held: dict[int, HeldShare]) -> UnmaskResponse:
    d = resp.seed_shares[0].dealer  # a survivor: its genuine, signed key share must not count
    return dataclasses.replace(resp, key_shares=(RevealedShare(d, held[d].key, held[d].key_sig),))


@pytest.mark.parametrize(
    "forge",
    [_altered_value, _relabelled, _key_share_of_a_survivor],
    ids=["altered value", "relabelled dealer", "key share of a survivor"],
)
def test_forged_share_revealed_at_unmask(forge):
    """A malicious survivor (5) reveals a forged share: the coordinator rejects its whole
    response (BAD_SHARE, blamed on 5) and still finishes from the honest members' shares."""
    fed = federation(6)
    rnd = Round(fed).until("sign")
    liar = 5
    held = dict(rnd.state(liar).held)
    for m in rnd.ureq.survivors:
        resp = fed.participants[m].unmask(rnd.ureq)
        if m == liar:
            err = refuse(Rule.BAD_SHARE, rnd.coord.add_unmask, forge(resp, held))
            assert str(liar) in err.detail
            assert rnd.coord.faults == {liar: Rule.BAD_SHARE.value}
        else:
            rnd.coord.add_unmask(resp)
    assert np.array_equal(rnd.coord.finish().total, ring_sum(rnd.xs, fed.participants, fed.params))


@pytest.mark.parametrize("kind", [keys.SEED, keys.KEY])
@pytest.mark.parametrize("how", ["shares of another secret", "points on no polynomial"])
def test_inconsistent_shares_abort_and_name_the_dealer(kind, how):
    """A malicious dealer (3) deals validly signed and encrypted shares that do not reconstruct
    what it committed to (its seed commitment, or its advertised masking key, when it drops).
    No holder can tell; the coordinator finds out when it reconstructs, aborts, names it."""
    fed = federation(6)
    rnd = Round(fed)
    rnd.advertise()
    dealer = 3
    gen = random.Random(7)

    def cheat(m: int, sb: ShareBundle) -> ShareBundle:
        if m != dealer:
            return sb
        holders = sorted(rnd.coord.neighbours[dealer])
        if how == "shares of another secret":
            t = fed.params.shamir_threshold(len(holders))
            values = shamir.split(bytes(range(32)), holders, t, seeded_randomness(b"cheat"))
        else:
            values = {h: gen.randrange(shamir.PRIME) for h in holders}
        return redeal(rnd, sb, **{f"{kind}_values": values})

    rnd.share(edit=cheat)
    rnd.receive()
    assert not rnd.coord.faults  # each share is signed by its dealer: nobody complains
    rnd.mask(None if kind == keys.SEED else [m for m in rnd.mreq.shared if m != dealer])
    rnd.sign()
    rnd.unmask()
    err = refuse(Rule.BAD_SHARE, rnd.coord.finish)
    assert err.culprits == (dealer,)
    assert rnd.coord.aborted and rnd.coord.stage is Stage.UNMASK


def test_tampered_delivery_does_not_leak_shares_through_complaints():
    """The coordinator flips bits in member 1's ciphertexts on their way to its holders. Each
    holder, unable to tell that member 1 did not send them so, complains and reveals the share
    key, which also opens member 1's GENUINE ciphertext (the coordinator kept it): t seed shares
    and t key shares of member 1, whose masked input the coordinator then reads."""
    fed = federation(6)
    rnd = Round(fed).until("share")
    target = 1
    receipts = {}
    for h, dl in rnd.deliveries.items():
        items = tuple(
            dataclasses.replace(it, ciphertext=bytes(b ^ 1 for b in it.ciphertext)) if it.dealer == target else it
            for it in dl.shares
        )
        receipts[h] = fed.participants[h].receive(dataclasses.replace(dl, shares=items))
    genuine = {it.holder: it for it in rnd.share_bundles[target].shares}
    seeds, keyz = {}, {}
    for h, rc in receipts.items():
        for c in rc.complaints:
            ad = keys.share_associated_data(rnd.ctx, rnd.r, rnd.session, target, h)
            pt = aead_open(c.key, genuine[h].nonce, genuine[h].ciphertext, ad) if c.dealer == target else None
            if pt is not None:
                loot = parse_share_plaintext(pt)
                seeds[h], keyz[h] = shamir.decode_share(loot.seed), shamir.decode_share(loot.key)
    # C1 is the coordinator's call: it keeps member 1 in, and member 1 masks
    rnd.mreq = MaskRequest(rnd.r, rnd.session, tuple(fed.participants), (), rnd.tr, rnd.digest)
    rnd.masked[target] = fed.participants[target].mask(rnd.mreq, rnd.xs[target], 1, rnd.digest)
    assert unmask_individual(rnd, target, seeds, keyz) is None


# ============================================================================= 9. inputs
def _input(*values: float, dtype: type = np.float64) -> np.ndarray:
    return np.array([*values, *[0.0] * (D - len(values))], dtype=dtype)


@pytest.mark.parametrize(
    "x, weight, rule",
    [
        (np.zeros(D + 1), 1, Rule.INPUT_LENGTH),
        (np.zeros(D - 1), 1, Rule.INPUT_LENGTH),
        (np.zeros((2, D)), 1, Rule.INPUT_LENGTH),
        (np.zeros(D, dtype=np.int64), 1, Rule.INPUT_LENGTH),
        (_input(np.nan), 1, Rule.INPUT_NONFINITE),
        (_input(1.0, np.inf), 1, Rule.INPUT_NONFINITE),
        (_input(-np.inf, dtype=np.float32), 1, Rule.INPUT_NONFINITE),
        (np.zeros(D), -1, Rule.INPUT_WEIGHT),
        (np.zeros(D), 0, Rule.INPUT_WEIGHT),  # weights start at 1: a zero would shrink the sum unseen
        (np.zeros(D), 656, Rule.INPUT_WEIGHT),  # max_weight is 655
    ],
    ids=[
        "long",
        "short",
        "2-d",
        "integers",
        "nan",
        "inf",
        "-inf f32",
        "negative weight",
        "zero weight",
        "weight > max",
    ],
)
def test_bad_input_is_refused_before_masking(x, weight, rule):
    """A member's own input is checked before it is masked; a bad one aborts its round."""
    fed = federation(4)
    rnd = Round(fed).until("receive")
    refuse(rule, fed.participants[1].mask, rnd.mreq, x, weight, rnd.digest)
    assert_aborted_and_wiped(fed.participants[1], rnd.r)
