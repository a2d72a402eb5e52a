"""One vocabulary for the six protocol stages (`protocol.stages.Stage`), from scenario files to the state machines."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import UserError
from protocol.local import make_federation, run_round
from protocol.params import ProtocolParams
from protocol.stages import REPLY_STAGE, REQUEST_STAGE, Stage
from simulations.scenario import SCENARIO_DIR, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("protocol", "coordinator", "participant", "simulations", "fedloom", "console", "tasks")
NAMES = {s.value for s in Stage}


def _fault(stage: str) -> bytes:
    return f'rounds = 2\n[[faults]]\nrounds = [1]\nstage = "{stage}"\nmembers = [1]\n'.encode()


def test_stages_run_in_protocol_order_not_alphabetical():
    assert [s.value for s in sorted(Stage, reverse=True)][::-1] == [
        "advertise",
        "share",
        "receive",
        "mask",
        "sign",
        "unmask",
    ]
    assert Stage.SIGN < Stage.UNMASK and Stage.MASK > Stage.ADVERTISE  # alphabetically both would be false
    assert [s.index for s in Stage] == list(range(6))
    # every stage has exactly one request and one reply
    assert sorted(REQUEST_STAGE.values()) == list(Stage) == sorted(REPLY_STAGE.values())


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_fault_stage_parses_to_the_enum(path: Path):
    for fault in load_scenario(path).faults.faults:
        assert type(fault.stage) is Stage


def test_the_fault_scenario_drops_at_every_stage_by_its_toml_name():
    faults = load_scenario(SCENARIO_DIR / "faults.toml").faults.faults
    assert {f.stage for f in faults} == set(Stage)
    assert all(isinstance(f.stage, str) and f.stage.value in NAMES for f in faults)  # the TOML's strings


@pytest.mark.parametrize("bad", ["masked", "Mask", "train", ""])
def test_an_unknown_stage_is_refused_in_one_line_listing_the_stages(bad: str):
    with pytest.raises(UserError) as err:
        parse_scenario(_fault(bad))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("faults[0]: unknown stage")
    assert "advertise, share, receive, mask, sign, unmask" in msg


def test_a_fault_plan_drops_by_enum_and_by_the_toml_string():
    plan = parse_scenario(_fault("sign")).faults
    assert plan.drops(1, Stage.SIGN, 1) and plan.drops(1, "sign", 1)
    assert not plan.drops(1, Stage.MASK, 1) and not plan.drops(2, Stage.SIGN, 1)


@pytest.mark.parametrize("stage", list(Stage))
def test_a_member_dropped_at_a_stage_is_reported_at_that_stage(stage: Stage):
    """The in-memory transport drops by Stage; the coordinator's state machine reports the same Stage."""
    params = ProtocolParams(vector_length=4, max_members=6)
    fed = make_federation(6, params, seed=stage.index)
    xs = {m: np.ones(4) for m in fed.participants}
    coord = fed.coordinator(1)
    out = run_round(coord, fed.participants, xs, drop={stage: {2}})
    assert out.error is None and coord.done and not coord.aborted
    if stage is Stage.ADVERTISE:  # never advertised: not in the cohort, nobody to report
        assert 2 not in coord.cohort
    else:
        assert coord.dropouts() == {2: stage}


def _stage_collections(tree: ast.AST) -> list[int]:
    """Lines of tuple/list/set/dict literals holding three or more stage names: a vocabulary of its own."""
    out = []
    for node in ast.walk(tree):
        items = node.keys + node.values if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) or items is None:
            continue
        names = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
        if len(names & NAMES) >= 3:
            out.append(node.lineno)
    return out


def test_no_production_module_keeps_a_stage_vocabulary_of_its_own():
    found = {}
    for top in PRODUCTION:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "protocol/stages.py":
                continue
            lines = _stage_collections(ast.parse(path.read_text(encoding="utf-8")))
            if lines:
                found[rel] = lines
    assert not found, f"stage names listed outside protocol/stages.py: {found}"
