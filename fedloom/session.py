"""What a plan means to the protocol, derived the same way on every side.

The coordinator, the participants and the simulated adversary must agree on the protocol's
parameters and on the session context every signature binds; a mapping kept on one side drifts.
"""

from __future__ import annotations

from fedloom.plan import Plan
from protocol.crypto import SessionContext
from protocol.params import ProtocolParams


def protocol_params(plan: Plan, vector_length: int, members: int) -> ProtocolParams:
    """The plan's secure-aggregation parameters for a model of `vector_length` parameters."""
    s = plan.secure
    return ProtocolParams.for_federation(
        vector_length,
        members,
        bits=s.bits,
        max_weight=s.max_weight or None,
        clip=s.clip,
        threshold_fraction=s.threshold,
        neighbours=s.neighbours,
        colluders=s.colluders,
        min_cohort=s.min_cohort,
        max_share=plan.contribution.cap if plan.contribution.enabled else 1.0,
    )


def session_context(plan: Plan) -> SessionContext:
    """The federation and plan digest every protocol transcript is bound to."""
    return SessionContext(plan.federation, plan.digest())
