"""The neighbour graph, derived from public inputs no single party chooses.

Seed = the session id (a hash of every signed key bundle of the round, which contains every
member's fresh ephemeral keys). Members are ordered by a keyed permutation of their ids, then
joined in a Harary-style ring lattice of even degree k: each member is linked to the k/2 members
before and after it. With k >= n - 1 it is the complete graph (Bonawitz et al. 2017); below, it is
the sparse SecAgg+ graph of Bell et al. 2020. Every participant recomputes it and so checks it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _permutation(members: Sequence[int], seed: bytes) -> list[int]:
    """Order members by SHA-256(seed, id): a permutation nobody can steer without the seed."""
    return sorted(members, key=lambda m: hashlib.sha256(seed + m.to_bytes(8, "little")).digest())


def neighbours(members: Sequence[int], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each member's neighbours (never itself) in the seeded ring lattice of the given degree."""
    n = len(members)
    if n < 2:
        return {m: frozenset() for m in members}
    if degree >= n - 1:
        everyone = frozenset(members)
        return {m: everyone - {m} for m in members}
    order = _permutation(members, seed)
    half = degree // 2
    out: dict[int, frozenset[int]] = {}
    for pos, m in enumerate(order):
        around = {order[(pos + off) % n] for off in range(-half, half + 1) if off}
        out[m] = frozenset(around)
    return out


def neighbours_of(member: int, members: Sequence[int], degree: int, seed: bytes) -> frozenset[int]:
    """`neighbours(members, degree, seed)[member]`, without building every other member's set."""
    n = len(members)
    if member not in members:
        raise KeyError(member)
    if n < 2:
        return frozenset()
    if degree >= n - 1:
        return frozenset(members) - {member}
    order = _permutation(members, seed)
    pos = order.index(member)
    half = degree // 2
    return frozenset({order[(pos + off) % n] for off in range(-half, half + 1) if off})
