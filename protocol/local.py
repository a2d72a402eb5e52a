"""An in-memory transport for whole rounds: tests, benchmarks and the attack harness use it.

It is the simplest honest "network": every reply goes straight to the coordinator, every request
straight to the participant, except for members told to drop at a given stage. It also shows the
order of calls an adapter (like fedloom's Flower round driver) has to make.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import keys
from .coordinator import AggregateResult, CoordinatorRound
from .crypto import Randomness, SessionContext, ed25519_public_bytes
from .errors import ProtocolError
from .messages import EncryptedShare, ShareBundle
from .params import ProtocolParams
from .participant import Participant
from .roster import Member, Roster
from .stages import Stage

_T = TypeVar("_T")


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
    drop: Mapping[Stage, set[int]] | None = None,
    public_weights: bool = False,
    training_round: int | None = None,
    model_digest: bytes | None = None,
) -> RoundOutcome:
    """Run one round; members in drop[stage] never answer that stage (nor any later one).
    With `public_weights`, the weights travel in the MaskRequest (a contribution policy's way).
    The training round defaults to the protocol round, the model digest to one derived from it."""
    tround = coordinator.round if training_round is None else training_round
    digest = model_digest if model_digest is not None else stand_in_model_digest(tround)
    net = _LocalExchange(drop or {})
    try:
        req = coordinator.advertise_request()
        net.stage(Stage.ADVERTISE, participants, lambda m: participants[m].advertise(req), coordinator.add_bundle)
        bset = coordinator.bundle_set()
        net.stage(Stage.SHARE, coordinator.cohort, lambda m: participants[m].share(bset), coordinator.add_shares)
        deliveries = coordinator.deliveries()
        net.stage(Stage.RECEIVE, deliveries, lambda m: participants[m].receive(deliveries[m]), coordinator.add_receipt)
        mreq = coordinator.mask_request(
            weights=dict(weights or {}) if public_weights else None, training_round=tround, model_digest=digest
        )
        net.stage(
            Stage.MASK,
            mreq.shared,
            lambda m: participants[m].mask(mreq, inputs[m], (weights or {}).get(m, 1), digest),
            coordinator.add_masked,
        )
        sreq = coordinator.survivor_request()
        net.stage(Stage.SIGN, sreq.survivors, lambda m: participants[m].sign_survivors(sreq), coordinator.add_signature)
        ureq = coordinator.unmask_request()
        net.stage(Stage.UNMASK, ureq.survivors, lambda m: participants[m].unmask(ureq), coordinator.add_unmask)
        return RoundOutcome(coordinator.finish(), None, net.refusals)
    except ProtocolError as err:
        return RoundOutcome(None, err, net.refusals)


@dataclass
class _LocalExchange:
    """Who still takes part in a round run by `run_round`: a member dropped at a stage, or refused
    by a check, answers nothing from then on."""

    drop: Mapping[Stage, set[int]]
    gone: set[int] = field(default_factory=set)
    refusals: dict[int, ProtocolError] = field(default_factory=dict)

    def alive(self, stage: Stage, members: Iterable[int]) -> list[int]:
        """The members still answering at `stage` (its drops count from this stage on)."""
        self.gone.update(self.drop.get(stage, set()))
        return [m for m in members if m not in self.gone and m not in self.refusals]

    def ask(self, member: int, call: Callable[[], _T]) -> _T | None:
        """Run one call for `member`; a refusal is recorded against that member instead of ending the round."""
        try:
            return call()
        except ProtocolError as err:
            self.refusals[member] = err
            return None

    def stage(
        self, stage: Stage, members: Iterable[int], answer: Callable[[int], _T], accept: Callable[[_T], object]
    ) -> None:
        """One request/reply stage: each live member answers, then the coordinator takes that answer."""
        for m in self.alive(stage, members):
            reply = self.ask(m, lambda m=m: answer(m))
            if reply is not None:
                self.ask(m, lambda reply=reply: accept(reply))


def stand_in_model_digest(training_round: int) -> bytes:
    """A model digest for rounds run without a model (tests, benchmarks): one per training round."""
    return hashlib.sha256(b"fedloom/stand-in-model" + training_round.to_bytes(8, "little")).digest()


# ---------------------------------------------------------------------------- test federations
def seeded_randomness(seed: bytes) -> Randomness:
    """A reproducible randomness source (AES-CTR under a key derived from `seed`).

    For tests and benchmarks only: production code uses os.urandom, the default everywhere.
    """
    key = hashlib.sha256(b"fedloom/test-randomness" + seed).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return lambda n: enc.update(bytes(n))


@dataclass
class LocalFederation:
    """A roster with every member's identity key and a Participant each (one process)."""

    roster: Roster
    context: SessionContext
    params: ProtocolParams
    identities: dict[int, Ed25519PrivateKey]
    participants: dict[int, Participant]

    def coordinator(self, round_: int, workers: int = 1) -> CoordinatorRound:
        return CoordinatorRound(round_, self.roster, self.context, self.params, workers=workers)

    def next_round(self) -> int:
        return max(p.latest for p in self.participants.values()) + 1


def make_federation(
    n: int, params: ProtocolParams, seed: int = 0, federation_id: str = "test-federation"
) -> LocalFederation:
    """n members with ids 1..n, deterministic keys (from `seed`), honest participants."""
    rand = seeded_randomness(seed.to_bytes(8, "little"))
    ids = {i: Ed25519PrivateKey.from_private_bytes(rand(32)) for i in range(1, n + 1)}
    roster = Roster.of(Member(i, f"member-{i}", ed25519_public_bytes(k)) for i, k in ids.items())
    ctx = SessionContext(federation_id, hashlib.sha256(b"plan" + seed.to_bytes(8, "little")).digest())
    parts = {
        i: Participant(i, k, roster, ctx, params, randomness=seeded_randomness(b"p%d-%d" % (seed, i)))
        for i, k in ids.items()
    }
    return LocalFederation(roster, ctx, params, ids, parts)


# ---------------------------------------------------------------------------- a cheating dealer
def garble_share_bundle(bundle: ShareBundle, identity: Ed25519PrivateKey, context: SessionContext) -> ShareBundle:
    """A malicious dealer's bundle (tests and simulations only): every ciphertext turned to garbage.

    The dealer re-signs each item and the bundle with its OWN identity key (they are its own
    messages), so the coordinator accepts the bundle; each holder then complains with the true
    share key, which matches the digest the dealer signed, and the coordinator convicts the dealer.
    """
    r, session, dealer = bundle.round, bundle.session, bundle.member
    items = []
    for it in bundle.shares:
        ct = bytes(b ^ 0x5A for b in it.ciphertext)
        statement = keys.share_item_transcript(context, r, session, dealer, it.holder, it.key_digest, it.nonce, ct)
        items.append(EncryptedShare(dealer, it.holder, it.key_digest, it.nonce, ct, identity.sign(statement)))
    statement = keys.share_bundle_transcript(context, r, session, dealer, bundle.commitment, items)
    return ShareBundle(r, dealer, session, bundle.commitment, tuple(items), identity.sign(statement))
