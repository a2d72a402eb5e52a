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
    return plan.protocol_params(vector_length, members)


def session_context(plan: Plan) -> SessionContext:
    """The federation and plan digest every protocol transcript is bound to."""
    return SessionContext(plan.federation, plan.digest())
