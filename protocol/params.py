"""Parameters a federation chooses for secure aggregation, and the checks that make them sound.

The ring check is what keeps the secure sum exact: with n members, inputs quantized to `bits`
(values in [-L, L], L = 2^(bits-1) - 1) and integer weights up to `max_weight`, the weighted sum
lies in [-n*W*L, n*W*L] and must fit the signed range of Z_(2^ring_bits), or it would wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ProtocolError, Rule

FULL_GRAPH_MAX = 32  # "auto" degree: everyone is everyone's neighbour up to this many members


@dataclass(frozen=True)
class ProtocolParams:
    """Secure-aggregation parameters of one plan (all members and the coordinator share them)."""

    vector_length: int  # d: model parameters per input (the weight is appended as element d)
    bits: int = 16  # quantization bits per coordinate
    clip: float = 1.0  # inputs are clipped to [-clip, clip] before quantization
    ring_bits: int = 32  # masks and sums live in Z_(2^ring_bits): 32 or 64
    max_weight: int = 655  # integer weight bound per member
    threshold_fraction: float = 2 / 3  # Shamir and consistency thresholds, as a share of the cohort
    neighbours: int = 0  # graph degree; 0 = auto (full graph up to 32, else 2*ceil(log2 n))
    min_cohort: int = 3  # fewer members than this and nobody unmasks anything
    max_share: float = 1.0  # public weights: no survivor may carry more than this share of the sum
    max_members: int = 100  # the largest cohort the ring is checked for (the roster size)
    _checked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check()

    # -- derived quantities -------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.ring_bits == 32 else np.uint64)

    @property
    def level(self) -> int:
        """Largest quantized magnitude L."""
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        return self.level / self.clip

    @property
    def step(self) -> float:
        """One quantization step in input units: the exactness bound of a secure sum."""
        return 1.0 / self.scale

    @property
    def masked_length(self) -> int:
        return self.vector_length + 1

    def degree(self, cohort: int) -> int:
        """Neighbours per member for a cohort of this size."""
        if self.neighbours:
            k = self.neighbours
        elif cohort <= FULL_GRAPH_MAX:
            k = cohort - 1
        else:
            k = 2 * math.ceil(math.log2(cohort))
        return min(k, cohort - 1)

    def shamir_threshold(self, holders: int) -> int:
        return max(1, math.ceil(self.threshold_fraction * holders))

    def consistency_threshold(self, cohort: int) -> int:
        """Signatures on one survivor set needed before any share is released (> half)."""
        return max(cohort // 2 + 1, math.ceil(self.threshold_fraction * cohort), self.min_cohort)

    # -- validation -----------------------------------------------------------------------
    def check(self) -> None:
        def bad(msg: str) -> ProtocolError:
            return ProtocolError(Rule.PARAMETERS, msg)

        if self.vector_length < 1:
            raise bad("vector_length must be at least 1")
        if self.ring_bits not in (32, 64):
            raise bad("ring_bits must be 32 or 64")
        if not 2 <= self.bits <= self.ring_bits - 2:
            raise bad(f"bits must be in 2..{self.ring_bits - 2}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise bad("clip must be a positive finite number")
        if not 1 <= self.max_weight < (1 << 31):
            raise bad("max_weight must be in 1..2^31-1")
        if not 0.5 <= self.threshold_fraction < 1.0:
            raise bad("threshold_fraction must be in [0.5, 1)")
        if self.neighbours < 0 or self.neighbours % 2:
            raise bad("neighbours must be 0 (auto) or a positive even number")
        if not 0 < self.max_share <= 1:
            raise bad("max_share must be in (0, 1]")
        if self.min_cohort < 2:
            raise bad("min_cohort must be at least 2: a 'sum' of one member is that member's input")
        if self.max_members < self.min_cohort:
            raise bad("max_members must be at least min_cohort")
        bound = self.max_members * self.max_weight * self.level
        if bound >= 1 << (self.ring_bits - 1):
            raise bad(
                f"the sum can overflow: {self.max_members} members x weight {self.max_weight} x "
                f"level {self.level} = {bound} >= 2^{self.ring_bits - 1}; lower bits or max_weight, "
                "or use ring_bits = 64"
            )

    @classmethod
    def for_federation(
        cls, vector_length: int, members: int, *, bits: int = 16, max_weight: int | None = None, **kw: object
    ) -> ProtocolParams:
        """Parameters for a roster of `members`: the 32-bit ring when it can hold the sum.

        Without an explicit `max_weight`, the largest weight that keeps a 32-bit ring (at most
        65535) is chosen, so FedAvg example counts fit for most federations.
        """
        level = (1 << (bits - 1)) - 1
        if max_weight is None:
            max_weight = max(1, min(65535, ((1 << 31) - 1) // (members * level)))
        ring = cls.fitting_ring(members, max_weight, bits)
        return cls(
            vector_length=vector_length, bits=bits, max_weight=max_weight, max_members=members, ring_bits=ring, **kw
        )  # type: ignore[arg-type]

    @staticmethod
    def fitting_ring(max_members: int, max_weight: int, bits: int) -> int:
        """The smallest supported ring that holds the sum (32 when it fits: half the traffic)."""
        level = (1 << (bits - 1)) - 1
        return 32 if max_members * max_weight * level < 1 << 31 else 64
