"""Every derived key, transcript and commitment of a round, in one place.

Participant and coordinator must derive byte-identical values; keeping the derivations here
(instead of in each state machine) is what guarantees it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .codec import Writer
from .crypto import SessionContext, hkdf, sha256, transcript
from .masking import MASK_KEY_BYTES
from .messages import EncryptedShare, KeyBundle

SEED = "seed"  # share kinds: the self-mask seed and the pairwise-mask private key
KEY = "key"


def session_id(ctx: SessionContext, round_: int, bundles: Iterable[KeyBundle]) -> bytes:
    """Hash of every signed bundle of the round: seeds the graph, binds all later stages."""
    w = Writer()
    for b in sorted(bundles, key=lambda b: b.member):
        b._write(w)
    return sha256(transcript("session", ctx, round_), w.getvalue())


def bundle_transcript(ctx: SessionContext, b: KeyBundle) -> bytes:
    return transcript("bundle", ctx, b.round, b.member, b.encryption_key, b.masking_key)


def share_bundle_transcript(
    ctx: SessionContext,
    round_: int,
    session: bytes,
    dealer: int,
    commitment: bytes,
    items: Iterable[EncryptedShare],
) -> bytes:
    """What a dealer signs: its seed commitment and every encrypted item (so it cannot deny one)."""
    digest = sha256(*(it.encode() for it in items))
    return transcript("share-bundle", ctx, round_, session, dealer, commitment, digest)


def share_item_transcript(
    ctx: SessionContext,
    round_: int,
    session: bytes,
    dealer: int,
    holder: int,
    key_digest: bytes,
    nonce: bytes,
    ciphertext: bytes,
) -> bytes:
    """What a dealer signs for each encrypted item, so its holder can tell it came from the dealer."""
    return transcript("share-item", ctx, round_, session, dealer, holder, key_digest, nonce, ciphertext)


def item_signed_by_dealer(ctx: SessionContext, roster, round_: int, session: bytes, it: EncryptedShare) -> bool:
    statement = share_item_transcript(
        ctx, round_, session, it.dealer, it.holder, it.key_digest, it.nonce, it.ciphertext
    )
    return roster.verify(it.dealer, it.signature, statement)


def share_key_digest(ctx: SessionContext, round_: int, session: bytes, dealer: int, holder: int, key: bytes) -> bytes:
    return sha256(transcript("share-key-digest", ctx, round_, session, dealer, holder), key)


def share_value_transcript(
    ctx: SessionContext,
    round_: int,
    session: bytes,
    kind: str,
    dealer: int,
    holder: int,
    value: bytes,
) -> bytes:
    return transcript("share-value", ctx, round_, session, kind, dealer, holder, value)


def survivors_transcript(
    ctx: SessionContext,
    round_: int,
    session: bytes,
    shared: tuple[int, ...],
    survivors: tuple[int, ...],
    weights: tuple[int, ...] = (),
    training_round: int = 0,
    model_digest: bytes = bytes(32),
) -> bytes:
    """What members sign before anything is released: who shared, who survived, the public
    weights (so a coordinator cannot show different members different weight tables), and the
    training round and model the inputs were trained for."""
    return transcript("survivors", ctx, round_, session, shared, survivors, weights, training_round, model_digest)


def mask_attestation_transcript(
    ctx: SessionContext,
    round_: int,
    session: bytes,
    member: int,
    shared: tuple[int, ...],
    weights: tuple[int, ...],
    training_round: int,
    model_digest: bytes,
    min_cohort: int,
) -> bytes:
    """What a member signs when it masks: the exact view its masked input was built under. Holders
    release its self-mask shares only for a survivor set consistent with this view."""
    return transcript(
        "mask-attestation", ctx, round_, session, member, shared, weights, training_round, model_digest, min_cohort
    )


def share_encryption_key(
    ctx: SessionContext, round_: int, session: bytes, dealer: int, holder: int, dh: bytes
) -> bytes:
    """AES-256-GCM key for dealer -> holder (direction-specific, so nonces never collide)."""
    return hkdf(dh, 32, transcript("share-key", ctx, round_, session, dealer, holder))


def share_associated_data(ctx: SessionContext, round_: int, session: bytes, dealer: int, holder: int) -> bytes:
    return transcript("share-ad", ctx, round_, session, dealer, holder)


def pair_mask_key(ctx: SessionContext, round_: int, session: bytes, a: int, b: int, dh: bytes) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return hkdf(dh, MASK_KEY_BYTES, transcript("pair-mask", ctx, round_, session, lo, hi))


def self_mask_key(ctx: SessionContext, round_: int, session: bytes, member: int, seed: bytes) -> bytes:
    return hkdf(seed, MASK_KEY_BYTES, transcript("self-mask", ctx, round_, session, member))


def seed_commitment(ctx: SessionContext, round_: int, session: bytes, member: int, seed: bytes) -> bytes:
    return sha256(transcript("seed-commitment", ctx, round_, session, member), seed)
