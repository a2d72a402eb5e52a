"""The plan (hashing, strict parsing) and the outer optimizers' arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.optimizers import DiLoCo, FedAdam, FedAvg, FedAvgM, make_optimizer
from fedloom.errors import UserError
from fedloom.plan import Plan, StrategySpec
from simulations.scenario import load_scenario, parse_scenario


def test_plan_hash_is_stable_and_sensitive():
    a, b = Plan(), Plan()
    assert a.hash == b.hash and len(a.hash) == 64
    assert Plan.from_json(a.canonical_json()) == a
    assert a.with_overrides(rounds=a.rounds + 1).hash != a.hash


def test_default_scenario_loads():
    sc = load_scenario(None)
    assert sc.name == "default" and sc.plan.participants == 10 and sc.plan.rounds == 20
    assert sc.plan.task.name == "digits" and sc.plan.task.partition == "dirichlet" and sc.plan.task.alpha == 0.3


def test_nested_unknown_key_is_named():
    with pytest.raises(UserError, match=r"unknown key 'clipp' in \[secure\]"):
        parse_scenario(b"[secure]\nclipp = 2.0\n")


def test_int_accepted_for_float_but_not_bool():
    sc = parse_scenario(b"[training]\nlr = 1\n")
    assert sc.plan.training.lr == 1.0
    with pytest.raises(UserError, match="must be a number"):
        parse_scenario(b"[training]\nlr = true\n")


def test_fedavg_applies_the_mean_update():
    model = np.ones(5, np.float32)
    upd = np.arange(5, dtype=np.float32)
    assert np.allclose(FedAvg().step(model, upd), model + upd)
    assert np.allclose(FedAvg(0.5).step(model, upd), model + 0.5 * upd)


def test_fedavgm_accumulates_momentum():
    opt = FedAvgM(lr=1.0, momentum=0.5)
    m0 = np.zeros(3, np.float32)
    u = np.ones(3, np.float32)
    m1 = opt.step(m0, u)  # momentum = -u -> model + u
    assert np.allclose(m1, 1.0)
    m2 = opt.step(m1, u)  # momentum = 0.5*(-u) - u = -1.5u
    assert np.allclose(m2, 2.5)
    state = opt.state_dict()
    clone = FedAvgM(lr=1.0, momentum=0.5)
    clone.load_state_dict(state)
    assert np.allclose(clone.step(m2, u), opt.step(m2, u))


def test_fedadam_first_step_moves_by_lr_in_the_update_direction():
    opt = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-9)
    out = opt.step(np.zeros(4, np.float32), np.array([1.0, -2.0, 0.5, -0.1], np.float32))
    # with bias correction, Adam's first step is lr * sign(update)
    assert np.allclose(out, 0.1 * np.sign([1.0, -2.0, 0.5, -0.1]), atol=1e-5)


def test_diloco_is_nesterov_on_the_pseudo_gradient():
    opt = DiLoCo(lr=0.7, momentum=0.9)
    u = np.ones(2, np.float32)
    m1 = opt.step(np.zeros(2, np.float32), u)
    # momentum = -u; nesterov step = -u + 0.9 * (-u) = -1.9u; model - 0.7 * that
    assert np.allclose(m1, 0.7 * 1.9)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "diloco"])
def test_every_strategy_can_be_built(name):
    assert make_optimizer(StrategySpec(name=name)).name == name
