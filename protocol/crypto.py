"""Thin wrappers over `cryptography`: no home-made primitives, only domain separation.

Everything signed, derived or authenticated goes through `transcript()`, an unambiguous
(length-prefixed) encoding of a label and the context fields, so a signature or key made for one
purpose, federation, plan, round or pair of members can never be replayed for another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .codec import Writer

Randomness = Callable[[int], bytes]
"""Source of secret randomness (`os.urandom` in production; injectable for reproducible tests)."""

PROTOCOL_LABEL = b"fedloom/secagg/v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12


@dataclass(frozen=True)
class SessionContext:
    """What every key, signature and ciphertext of a federation is bound to."""

    federation_id: str
    plan_hash: bytes  # SHA-256 of the plan all members agreed to

    def __post_init__(self) -> None:
        if len(self.plan_hash) != 32:
            raise ValueError("plan_hash must be 32 bytes (SHA-256)")
        if not self.federation_id or len(self.federation_id.encode()) > 256:
            raise ValueError("federation_id must be 1..256 bytes of UTF-8")


def transcript(label: str, ctx: SessionContext, *fields: int | bytes | str | tuple[int, ...]) -> bytes:
    """Unambiguous, domain-separated encoding of `label`, the context and `fields`."""
    w = Writer().var(PROTOCOL_LABEL).text(label).text(ctx.federation_id).fixed(ctx.plan_hash, 32)
    for f in fields:
        if isinstance(f, bool):
            raise TypeError("booleans are not transcript fields")
        if isinstance(f, int):
            w.u8(1).u64(f)
        elif isinstance(f, bytes):
            w.u8(2).var(f)
        elif isinstance(f, str):
            w.u8(3).text(f)
        else:
            w.u8(4).ints(f)
    return w.getvalue()


def hkdf(ikm: bytes, length: int, info: bytes) -> bytes:
    """HKDF-SHA256 with the full transcript as `info` (salt-less: ikm is a fresh DH output)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


# ----------------------------------------------------------------- X25519 (ephemeral, per round)
def x25519_from_random(randomness: Randomness) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(randomness(KEY_BYTES))


def x25519_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw DH output; raises ValueError on a low-order peer key (all-zero shared secret)."""
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public))


# Clamped X25519 scalars are multiples of the cofactor, so a low-order point gives the all-zero
# output with EVERY private key: one fixed key is enough to test a public key.
_LOW_ORDER_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def x25519_key_is_usable(public: bytes) -> bool:
    """False for keys a peer could use to force a known (all-zero) shared secret."""
    try:
        _LOW_ORDER_PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------- Ed25519 (long-term identity)
def ed25519_public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# ----------------------------------------------------------------- AEAD (share transport)
def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, associated)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes | None:
    """Decrypt and authenticate, or None when the ciphertext was forged or garbled."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated)
    except (InvalidTag, ValueError):
        return None
