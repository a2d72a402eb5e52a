"""The one exception type the protocol raises, naming the rule that was broken.

Every refusal is a `ProtocolError` whose `rule` is one of the `Rule` values below, so a caller
(the Flower adapter, a test, an auditor reading logs) can tell *why* without parsing prose.
"""

from __future__ import annotations

from enum import StrEnum


class Rule(StrEnum):
    """Rules of the protocol. The value is the stable, machine-readable name."""

    # wire format
    ENCODING = "encoding.malformed"
    VERSION = "encoding.version"
    # membership and authentication
    UNKNOWN_MEMBER = "roster.unknown-member"
    DUPLICATE_MEMBER = "roster.duplicate-member"
    BAD_SIGNATURE = "signature.invalid"
    OWN_BUNDLE_ALTERED = "bundle.own-altered"
    BAD_KEY = "bundle.low-order-key"
    WRONG_CONTEXT = "context.mismatch"
    # ordering and freshness
    OUT_OF_ORDER = "stage.out-of-order"
    REPLAY = "round.replay"
    WRONG_ROUND = "round.mismatch"
    WRONG_SESSION = "session.mismatch"
    NOT_A_PARTICIPANT = "round.not-participant"
    # cohort and consistency
    COHORT_TOO_SMALL = "cohort.too-small"
    SET_NOT_SUBSET = "sets.not-subset"
    SURVIVOR_DROPPED_OVERLAP = "sets.survivor-dropped-overlap"
    BOTH_SHARES = "shares.both-requested"
    INCONSISTENT_SURVIVORS = "survivors.inconsistent"
    NEIGHBOURS = "graph.neighbours"
    # shares and reconstruction
    BAD_SHARE = "shares.invalid"
    THRESHOLD = "threshold.not-met"
    # inputs and parameters
    INPUT_LENGTH = "input.length"
    INPUT_NONFINITE = "input.nonfinite"
    INPUT_WEIGHT = "input.weight"
    WEIGHTS = "weights.invalid"
    WEIGHT_CAPTURE = "weights.capture"
    PARAMETERS = "parameters.invalid"
    # contributions and results
    REPEAT_CONTRIBUTION = "contribution.repeat"  # a training round (or model) this member already masked for
    MODEL_MISMATCH = "model.mismatch"  # the request names another model than the one received
    ATTESTATION = "attestation.invalid"  # a survivor's mask attestation is missing or does not match
    AGGREGATE_RANGE = "aggregate.out-of-range"  # a sum no honest cohort can produce
    COMPLAINTS = "complaints.invalid"  # more complaints than dealers, or about non-neighbours


class ProtocolError(Exception):
    """A protocol rule was broken. `rule` says which; `culprits` names members to blame, if known."""

    def __init__(self, rule: Rule, detail: str, culprits: tuple[int, ...] = ()) -> None:
        super().__init__(f"[{rule.value}] {detail}")
        self.rule = rule
        self.detail = detail
        self.culprits = culprits
