"""Parameters a federation chooses for secure aggregation, and the checks that make them sound.

The ring check is what keeps the secure sum exact: with n members, inputs quantized to `bits`
(values in [-L, L], L = 2^(bits-1) - 1) and integer weights up to `max_weight`, the weighted sum
lies in [-n*W*L, n*W*L] and must fit the signed range of Z_(2^ring_bits), or it would wrap.

Thresholds depend only on the plan (roster size N = `max_members`, collusion bound c =
`colluders`), never on the cohort a coordinator chooses to show (SECURITY.md, claims C3 and C5):
- consistency T: survivors who must sign one survivor set before anything is released, with
  2T > N + c, so at most one set per round can gather T signatures while honest members sign once;
- Shamir t for a dealer with k holders: t > c, so colluders alone never hold t shares; a cohort
  whose k is below t is refused. The graph is always complete (k = n0 - 1): a sparse graph's
  randomness would come from bundles the coordinator chooses to include, so it could steer it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ProtocolError, Rule

MAX_EXACT_BITS = 53  # quantized magnitudes stay exact float64 integers: L < 2^53


def _bad(msg: str) -> ProtocolError:
    """A refusal under the PARAMETERS rule, so every parameter check reports the same way."""
    return ProtocolError(Rule.PARAMETERS, msg)


@dataclass(frozen=True)
class ProtocolParams:
    """Secure-aggregation parameters of one plan (all members and the coordinator share them)."""

    vector_length: int  # d: model parameters per input (the weight is appended as element d)
    bits: int = 16  # quantization bits per coordinate
    clip: float = 1.0  # inputs are clipped to [-clip, clip] before quantization
    ring_bits: int = 32  # masks and sums live in Z_(2^ring_bits): 32 or 64
    max_weight: int = 655  # integer weight bound per member
    threshold_fraction: float = 2 / 3  # Shamir and consistency thresholds, as a share of holders / roster
    neighbours: int = 0  # must be 0: the graph is complete (sparse graphs were removed, see module doc)
    min_cohort: int = 3  # fewer members than this and nobody unmasks anything
    max_share: float = 1.0  # public weights: no survivor may carry more than this share of the sum
    max_members: int = 100  # N: the roster size (the ring and every threshold are computed for it)
    colluders: int = -1  # c: members that may collude with the coordinator; -1 = auto, ceil(N/3) - 1
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

    @property
    def max_message_bytes(self) -> int:
        """An upper bound on any protocol message's encoding: a masked input's ring elements plus
        1 MiB for its fields and for the other messages (share bundles stay far below it even for
        1,000 members). A receiver refuses a longer one before allocating for it."""
        return self.masked_length * self.dtype.itemsize + (1 << 20)

    @property
    def collusion_bound(self) -> int:
        """c: how many members may collude with the coordinator without any claim failing."""
        if self.colluders >= 0:
            return self.colluders
        return max(0, math.ceil(self.max_members / 3) - 1)

    @property
    def public_scale(self) -> float:
        """Scale for inputs pre-multiplied by their public weight fraction (which sum to at most 1):
        the same ring budget as private weights, so the weighted mean keeps about one step."""
        return self.scale * self.max_members

    def fedavg_weight(self, examples: int) -> int:
        """A member's FedAvg weight in the sum: its example count, at least 1, capped at max_weight
        (the ring is sized for that cap). Members, the coordinator's report and the simulation's
        exactness check all use this one rule."""
        return max(1, min(int(examples), self.max_weight))

    def degree(self, cohort: int) -> int:
        """Holders per dealer: the graph is complete, every other member of the cohort."""
        return max(0, cohort - 1)

    def shamir_threshold(self, holders: int) -> int:
        """t for a dealer with this many holders: above the collusion bound whatever the cohort."""
        return max(1, math.ceil(self.threshold_fraction * holders), self.collusion_bound + 1)

    def consistency_threshold(self, cohort: int = 0) -> int:
        """T, survivors who must sign one survivor set before any share is released. It depends on
        the roster (N), not on `cohort`, which the coordinator chooses: 2T > N + c makes the set
        unique. (`cohort` is accepted and ignored, so callers need not know this.)"""
        n, c = self.max_members, self.collusion_bound
        return max((n + c) // 2 + 1, math.ceil(self.threshold_fraction * n), self.min_cohort)

    # -- validation -----------------------------------------------------------------------
    def check(self) -> None:
        """Refuse unsound parameters, one rule at a time in a fixed order (the first failure is reported)."""
        self._check_encoding()
        self._check_policy()
        self._check_thresholds()
        self._check_ring()

    def _check_encoding(self) -> None:
        """Vector, ring and quantization settings: the rest of the checks compute with them."""
        if self.vector_length < 1:
            raise _bad("vector_length must be at least 1")
        if self.ring_bits not in (32, 64):
            raise _bad("ring_bits must be 32 or 64")
        top_bits = min(self.ring_bits - 2, MAX_EXACT_BITS)
        if not 2 <= self.bits <= top_bits:
            raise _bad(f"bits must be in 2..{top_bits} (quantized values must stay exact in float64)")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise _bad("clip must be a positive finite number")
        if not 1 <= self.max_weight < (1 << 31):
            raise _bad("max_weight must be in 1..2^31-1")

    def _check_policy(self) -> None:
        """Threshold share, graph, weight share and cohort sizes: each one a plan may get wrong on its own."""
        if not 0.5 <= self.threshold_fraction < 1.0:
            raise _bad("threshold_fraction must be in [0.5, 1)")
        if self.neighbours:
            raise _bad(
                "neighbours must be 0: the neighbour graph is complete (a sparse graph seeded by the bundles "
                "a coordinator includes can be steered by it; see protocol/SECURITY.md)"
            )
        if not 0 < self.max_share <= 1:
            raise _bad("max_share must be in (0, 1]")
        if self.min_cohort < 2:
            raise _bad("min_cohort must be at least 2: a 'sum' of one member is that member's input")
        if self.max_members < self.min_cohort:
            raise _bad("max_members must be at least min_cohort")

    def _check_thresholds(self) -> None:
        """T and t against the collusion bound: what keeps claims C3 and C5 true (module doc)."""
        c = self.collusion_bound
        if 2 * self.consistency_threshold() <= self.max_members + c:
            raise _bad(f"2T must exceed N + c ({self.max_members} + {c})")  # unreachable by the formula; a guard
        if self.consistency_threshold() > self.max_members:
            raise _bad(
                f"no cohort can satisfy the thresholds: T = {self.consistency_threshold()} signers needed from "
                f"{self.max_members} members (lower colluders or threshold_fraction, or raise the roster)"
            )
        if self.consistency_threshold() - c < 2:
            raise _bad(
                f"with {c} colluders a sum of T = {self.consistency_threshold()} members could hold a single honest "
                "input: lower colluders or raise min_cohort"
            )
        if self.shamir_threshold(self.consistency_threshold() - 1) > self.consistency_threshold() - 1:
            raise _bad(
                f"tolerating {c} colluders needs every dealer to have more than {c} holders, but a cohort of "
                f"T = {self.consistency_threshold()} gives {self.consistency_threshold() - 1}: lower colluders"
            )

    def _check_ring(self) -> None:
        """The ring must hold the largest weighted sum, or the secure sum would wrap (module doc)."""
        # public weights: sum of q_i over at most N members, each |q_i| <= alpha_i * N * L + 1, sum(alpha) <= 1
        public_bound = self.max_members * self.level + self.max_members
        bound = max(self.max_members * self.max_weight * self.level, public_bound)
        if bound >= 1 << (self.ring_bits - 1):
            raise _bad(
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
        bound = max(max_members * max_weight * level, max_members * (level + 1))
        return 32 if bound < 1 << 31 else 64
