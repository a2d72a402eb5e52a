"""The neighbour graph: complete. Every member of the cohort holds shares of every other.

A sparse graph (SecAgg+, Bell et al. 2020) needs randomness nobody can steer. Seeded by the hash of
the bundles a coordinator chose to include, it could be steered: leaving out chosen honest bundles
(they look like dropouts) and re-hashing until a target's neighbours are mostly colluders took well
under a second for 50 members. Until the graph's seed comes from somewhere no party controls, the
graph is complete (Bonawitz et al. 2017); its cost is in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence


def neighbours(members: Sequence[int]) -> dict[int, frozenset[int]]:
    """Each member's neighbours: everyone else in the cohort."""
    everyone = frozenset(members)
    return {m: everyone - {m} for m in members}


def neighbours_of(member: int, members: Sequence[int]) -> frozenset[int]:
    """`neighbours(members)[member]`."""
    if member not in members:
        raise KeyError(member)
    return frozenset(members) - {member}
