"""Issue 11 item 10: under secure aggregation with private weights a member's data sizes never
leave it in clear (its weight exists only inside its masked vector); they do when the plan makes
weights public by declared examples, and in plaintext mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tasks
from fedloom import records as rec
from fedloom.plan import ContributionSpec, Plan, SecureSpec
from fedloom.policy import Policy
from participant.client_app import _eval, _who
from participant.local_data import simulated
from participant.node import NodeView, sizes_are_public

SECURE = Plan(participants=4, rounds=1)
PLAIN = dataclasses.replace(SECURE, secure=SecureSpec(enabled=False))
PUBLIC = dataclasses.replace(SECURE, contribution=ContributionSpec(enabled=True, weighting="examples"))
EQUAL = dataclasses.replace(SECURE, contribution=ContributionSpec(enabled=True, weighting="equal"))


def view(plan: Plan) -> NodeView:
    data = simulated(plan.task, 0, plan.participants)
    return NodeView(plan, 1, None, Policy(require_secure_aggregation=False), 1, data, True, "cpu")


@pytest.mark.parametrize(("plan", "public"), [(SECURE, False), (EQUAL, False), (PUBLIC, True), (PLAIN, True)])
def test_example_counts_travel_only_when_the_plan_makes_them_public(plan, public):
    v = view(plan)
    assert sizes_are_public(plan) is public
    who = _who(v)
    assert ("examples" in who) is public
    if public:
        assert int(who["examples"]) == len(v.data.train) > 1
    model = tasks.model_to_vector(tasks.get_task(plan.task.name).build_model())
    _, _, ev = _eval(v, np.asarray(model, dtype=np.float32))
    reported = int(ev[rec.NUM_EXAMPLES])
    assert reported == (len(v.data.test) if public else 1)  # private: one member's evaluation, size withheld
