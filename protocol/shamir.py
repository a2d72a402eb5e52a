"""Shamir secret sharing over the prime field GF(2^521 - 1).

Why this prime: it is a Mersenne prime (M521), larger than any 32-byte secret we share (self-mask
seeds and X25519 private keys), so a secret maps to exactly one field element with no reduction.
Share x-coordinates are member ids (never 0). Coefficients come from the injected secret
randomness by rejection sampling, so they are exactly uniform over the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .crypto import Randomness
from .errors import ProtocolError, Rule

PRIME = (1 << 521) - 1
ELEMENT_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def _random_element(randomness: Randomness) -> int:
    while True:
        v = int.from_bytes(randomness(ELEMENT_BYTES), "little") & PRIME  # keep 521 bits
        if v < PRIME:
            return v


def split(secret: bytes, holders: Sequence[int], threshold: int, randomness: Randomness) -> dict[int, int]:
    """Shares of `secret` for each holder id; any `threshold` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} impossible with {len(holders)} holders")
    if len(set(holders)) != len(holders) or any(not 0 < h < PRIME for h in holders):
        raise ValueError("holder ids must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "little")] + [_random_element(randomness) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """Lagrange interpolation at 0 from the first `threshold` shares (by holder id)."""
    if len(shares) < threshold:
        raise ProtocolError(Rule.THRESHOLD, f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    xs = [x for x, _ in points]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ProtocolError(Rule.BAD_SHARE, "reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "little")


def encode_share(value: int) -> bytes:
    return value.to_bytes(ELEMENT_BYTES, "little")


def decode_share(data: bytes) -> int:
    if len(data) != ELEMENT_BYTES:
        raise ProtocolError(Rule.ENCODING, "share has the wrong length")
    v = int.from_bytes(data, "little")
    if v >= PRIME:
        raise ProtocolError(Rule.BAD_SHARE, "share is not a field element")
    return v
