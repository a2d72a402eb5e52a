"""Governed contributions: a quality floor and an anti-capture cap, without seeing any update.

Every member scores its own local model on a public probe set named (by hash) in the plan and
reports the score (the task's loss on the probe, lower is better) with its upload. Before the next
round's masked upload the coordinator assigns PUBLIC integer weights from public facts only —
declared example counts (or equal shares) and the latest scores:

  1. members whose latest probe loss is above the floor are left out of C1 (the protocol's normal
     exclusion path: they do not mask, nothing of theirs is in the sum);
  2. the rest get shares proportional to their declared examples, capped at `cap` and the excess
     renormalised over the uncapped ones (water-filling), so no member can dominate the base;
  3. shares become integer weights in 1..max_weight (equal shares get equal weights, so ties are
     treated alike), nudged so rounding never lifts a realized share above the cap.
The weight table travels in the MaskRequest, is bound into the signed survivor statement, and every
member refuses to sign a sum in which one survivor exceeds the cap (see protocol/participant.py).

Scores lag one round (round r's weights use the scores reported in round r-1): weights must be
fixed before anyone masks, and asking for scores first would cost a fourth round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Assignment:
    weights: dict[int, int]  # members in the aggregate -> public integer weight
    excluded: dict[int, str]  # members left out -> why
    shares: dict[int, float]  # intended shares of the sum (before integer rounding)
    skipped: str | None = None  # no member qualifies: the round is skipped
    scores: dict[int, float] = field(default_factory=dict)


def capped_shares(raw: Mapping[int, float], cap: float) -> dict[int, float]:
    """Shares proportional to `raw`, none above `cap`, the excess spread over the others.

    If `cap` is below 1/n nobody can satisfy it: everyone gets 1/n (the most even split possible).
    """
    members = sorted(raw)
    n = len(members)
    if n == 0:
        return {}
    if cap * n <= 1 + 1e-12:
        return {m: 1.0 / n for m in members}
    fixed: set[int] = set()
    while True:
        free = [m for m in members if m not in fixed]
        remaining = 1.0 - cap * len(fixed)
        total = sum(raw[m] for m in free)
        shares = {m: (raw[m] / total * remaining if total > 0 else remaining / len(free)) for m in free}
        over = [m for m in free if shares[m] > cap + 1e-12]
        if not over:
            return {**{m: cap for m in fixed}, **shares}
        fixed.update(over)


def integer_weights(shares: Mapping[int, float], max_weight: int, cap: float = 1.0) -> dict[int, int]:
    """Integer weights in 1..max_weight in the proportions of `shares` (the largest gets max_weight),
    then nudged down where rounding pushed a realized share above `cap` (members check it exactly)."""
    if not shares:
        return {}
    top = max(shares.values())
    weights = {m: max(1, round(s / top * max_weight)) for m, s in shares.items()}
    if cap < 1 and cap * len(weights) > 1:
        for _ in range(10 * max_weight):
            total = sum(weights.values())
            over = [m for m in sorted(weights) if weights[m] > cap * total and weights[m] > 1]
            if not over:
                break
            for m in over:
                weights[m] -= 1
    return weights


def assign(
    members: Sequence[int],
    declared: Mapping[int, int],
    scores: Mapping[int, float],
    *,
    floor: float,
    cap: float,
    weighting: str,
    max_weight: int,
) -> Assignment:
    """Public weights for `members` (those ready to mask), from public declarations and scores.

    `floor` <= 0 disables the quality floor; `cap` >= 1 disables the anti-capture cap.
    """
    excluded = {
        m: f"probe loss {scores[m]:.4f} above the quality floor {floor:g}"
        for m in members
        if floor > 0 and m in scores and scores[m] > floor
    }
    eligible = [m for m in sorted(members) if m not in excluded]
    known = {m: scores[m] for m in members if m in scores}
    if not eligible:
        return Assignment({}, excluded, {}, skipped="every member is below the quality floor", scores=known)
    if weighting == "equal":
        raw = {m: 1.0 for m in eligible}
    else:
        raw = {m: float(max(1, declared.get(m, 1))) for m in eligible}
    shares = capped_shares(raw, cap)
    weights = integer_weights(shares, max_weight, cap)
    return Assignment(weights, excluded, shares, scores=known)
