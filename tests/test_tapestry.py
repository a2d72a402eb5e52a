"""Consortium training, Tapestry-style: named members, N+1 models with lineage, sovereign builds,
the per-language report, the probe set, and the inner optimizer state members keep."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from safetensors.numpy import load_file
from typer.testing import CliRunner

import tasks
from console.cli import app as cli_app
from coordinator.driver import model_hash
from coordinator.outputs import save_model
from fedloom.errors import UserError
from fedloom.plan import Plan
from participant.inner_state import load_inner_state, save_inner_state
from participant.models import BASE, LOCAL, ModelKeeper, named_tensors, read_card, read_model, vector_hash
from participant.sovereign import SovereignSpec, build_from_directory, sovereign_build
from participant.trainer import LocalTrainer
from simulations.scenario import parse_scenario
from simulations.tapestry import Job, build_report, compare, rounds_to, run_job
from tasks.charlm import LANGUAGES, CharLMTask, language_bpc
from tasks.probe import dataset_hash, probe_set

CPU = torch.device("cpu")
TASK = CharLMTask()

TINY = """
name = "tiny-tapestry"
rounds = 2
[task]
name = "charlm"
partition = "groups"
groups = ["eng+jam", "spa+glg", "kri"]
[[members]]
name = "jamaica"
country = "JM"
[[members]]
name = "spain"
country = "ES"
[[members]]
name = "sierra-leone"
[training]
steps = 3
optimizer = "adamw"
lr = 0.003
keep_optimizer_state = true
[secure]
enabled = true
[contribution]
enabled = true
probe = "fra"
floor = 5.0
[report]
sovereign_steps = 4
workers = 1
"""


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _vector(seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return tasks.model_to_vector(TASK.build_model())


# ---------------------------------------------------------------- scenario: named members, [report]
def test_named_members_set_the_participants_and_names():
    sc = parse_scenario(TINY.encode())
    assert sc.plan.participants == 3
    assert sc.member_names() == ["jamaica", "spain", "sierra-leone"]
    assert sc.member_countries() == ["JM", "ES", ""]
    assert sc.report.enabled and sc.report.sovereign_steps == 4 and sc.keep_models
    plain = parse_scenario(b"participants = 3\n")
    assert plain.member_names() == ["member-1", "member-2", "member-3"] and not plain.keep_models
    with pytest.raises(UserError, match="give one \\[\\[members\\]\\] table per participant"):
        sc.with_plan(sc.plan.with_overrides(participants=4, task=replace(sc.plan.task, groups=("a", "b", "c", "d"))))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace('name = "spain"', 'name = "jamaica"'), "duplicate member name 'jamaica'"),
        (lambda t: t.replace('name = "spain"', 'name = "Spain!"'), "members[1].name must be"),
        (lambda t: t.replace('country = "ES"', 'country = "Spain"'), "members[1].country must be an ISO 3166"),
        (lambda t: t.replace('country = "ES"', 'country = "ES"\nflag = 1'), "unknown key 'flag'"),
        (lambda t: t.replace("rounds = 2", "rounds = 2\nparticipants = 4"), "names 3 [[members]] but has 4"),
        (lambda t: t.replace("workers = 1", "colour = 1"), "unknown key 'colour' in [report]"),
        (lambda t: t.replace('probe = "fra"', 'probe = "xx"'), "contribution.probe: charlm has no probe set 'xx'"),
        (
            lambda t: (
                t.replace('name = "charlm"', 'name = "digits"').replace('"groups"', '"iid"').replace('"fra"', '"test"')
            ),
            "bits per char",
        ),
    ],
)
def test_bad_member_and_report_tables_are_one_line_user_errors(tmp_path, edit, needle):
    with pytest.raises(UserError) as err:
        parse_scenario(edit(TINY).encode())
    assert needle in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "bad.toml"
    path.write_text(edit(TINY))
    result = CliRunner().invoke(cli_app, ["simulate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert needle in result.output


# ---------------------------------------------------------------- probe set
def test_charlm_probe_sets_are_named_and_hashed_in_the_plan(tmp_path):
    fra = TASK.probe("fra")
    assert set(np.unique(fra.y)) == {LANGUAGES.index("fra")} and len(fra) > 0
    both = TASK.probe("fra+por")
    assert len(both) == len(fra) + len(TASK.probe("por"))
    assert len(TASK.probe("test")) == len(tasks.load_test("charlm"))
    sc = parse_scenario(TINY.encode())
    assert sc.plan.contribution.probe_hash == dataset_hash(probe_set("charlm", "fra"))
    from participant.local_data import simulated

    trainer = LocalTrainer(sc.plan, simulated(sc.plan.task, 0, 3), CPU)
    assert 0 < trainer.probe_loss() < 6
    forged = replace(sc.plan, contribution=replace(sc.plan.contribution, probe_hash="0" * 64))
    with pytest.raises(ValueError, match="does not match the hash in the plan"):
        LocalTrainer(forged, simulated(sc.plan.task, 0, 3), CPU).probe_loss()


# ---------------------------------------------------------------- N+1 models
def test_exported_models_load_back_to_identical_tensors_and_lineage_matches(tmp_path):
    model = TASK.build_model()
    keeper = ModelKeeper(tmp_path, "charlm", "p" * 64, "spain", model)
    bases = [_vector(s) for s in (1, 2, 3)]
    for r, base in enumerate(bases, start=1):
        lineage = keeper.keep_base(base, r - 1)
        keeper.keep_local(base + 0.01 * r, r, lineage, {"steps": 3})
    saved = read_model(tmp_path, BASE, TASK.build_model())
    reference = TASK.build_model()
    tasks.vector_to_model(reference, bases[-1])
    expected = {k: v.numpy() for k, v in reference.state_dict().items() if v.is_floating_point()}
    raw = load_file(str(tmp_path / "base.safetensors"))  # what any safetensors reader sees
    assert raw.keys() == expected.keys()
    for name, tensor in expected.items():
        assert raw[name].dtype == np.float32 and np.array_equal(raw[name], tensor), name
    assert np.array_equal(saved.vector, bases[-1])
    # a named-tensor file goes straight into the torch model
    fresh = TASK.build_model()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in raw.items()})
    assert np.array_equal(tasks.model_to_vector(fresh), bases[-1])
    # the lineage is the hashes of the bases received, in order, and the ledger's model_hash
    card = read_card(tmp_path, BASE)
    assert [e["sha256"] for e in card["lineage"]] == [model_hash(b) for b in bases]
    assert [e["after_round"] for e in card["lineage"]] == [0, 1, 2]
    assert card["sha256"] == vector_hash(bases[-1]) and card["plan_hash"] == "p" * 64
    local = read_model(tmp_path, LOCAL, TASK.build_model())
    assert np.array_equal(local.vector, (bases[-1] + 0.03).astype(np.float32))
    assert local.card["derived_from"] == model_hash(bases[-1]) and local.card["round"] == 3
    # a base resent for the same round replaces its entry; another plan starts a new lineage
    keeper.keep_base(bases[0], 2)
    assert [e["sha256"] for e in read_card(tmp_path, BASE)["lineage"]] == [model_hash(b) for b in bases[:2]] + [
        model_hash(bases[0])
    ]
    ModelKeeper(tmp_path, "charlm", "q" * 64, "spain", model).keep_base(bases[1], 0)
    assert len(read_card(tmp_path, BASE)["lineage"]) == 1
    # a file that does not match its card is refused
    named = named_tensors(model, bases[2])
    from safetensors.numpy import save_file

    save_file(named, str(tmp_path / "base.safetensors"))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        read_model(tmp_path, BASE, TASK.build_model())


def test_sovereign_build_changes_the_model_and_lowers_own_language_bpc(tmp_path):
    plan = parse_scenario(TINY.encode()).plan
    from participant.local_data import simulated

    jamaica = simulated(plan.task, 0, 3)
    base = _vector(0)
    keeper = ModelKeeper(tmp_path, "charlm", plan.hash, "jamaica", TASK.build_model())
    keeper.keep_base(base, 2)
    spec = SovereignSpec.from_plan(plan, steps=40, lr=3e-3)
    vector, card = build_from_directory(tmp_path, TASK, jamaica.train, spec)
    assert not np.array_equal(vector, base)
    test = tasks.load_test("charlm")

    def bpc(v: np.ndarray, code: str) -> float:
        m = TASK.build_model()
        tasks.vector_to_model(m, v)
        return language_bpc(m, test, code, CPU)

    for code in ("eng", "jam"):
        assert bpc(vector, code) < bpc(base, code) - 0.5, code
    saved = read_model(tmp_path, "sovereign", TASK.build_model())
    assert np.array_equal(saved.vector, vector)
    assert card["derived_from"] == model_hash(base) and card["lineage"][-1]["sha256"] == model_hash(base)
    assert saved.card["training"]["steps"] == 40 and saved.card["member"] == "jamaica"
    # deterministic: the same build from the same base gives the same model
    assert np.array_equal(sovereign_build(TASK, base, jamaica.train, spec), vector)


# ---------------------------------------------------------------- inner optimizer state
def test_inner_optimizer_state_is_kept_per_plan_in_the_node_context():
    plan = parse_scenario(TINY.encode()).plan
    from participant.local_data import simulated

    data = simulated(plan.task, 0, 3)
    trainer = LocalTrainer(plan, data, CPU)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert load_inner_state(context, plan) == {}
    state: dict = {}
    base = _vector(0)
    first = trainer.train(base, 1, 1, state)
    assert state["state"] and "exp_avg" in state["state"][0]
    save_inner_state(context, plan, state)
    restored = load_inner_state(context, plan)
    for key, entry in state["state"].items():
        assert torch.equal(restored["state"][key]["exp_avg_sq"], entry["exp_avg_sq"])
    kept = trainer.train(base + first.update, 2, 1, restored)
    fresh = trainer.train(base + first.update, 2, 1, {})
    assert not np.array_equal(kept.update, fresh.update)  # the moments carried over
    other = replace(plan, rounds=3)
    assert load_inner_state(context, other) == {}  # another plan starts fresh
    assert load_inner_state(context, replace(plan, training=replace(plan.training, keep_optimizer_state=False))) is None


def test_inner_optimizer_state_stays_on_the_members_disk_not_in_the_travelling_context(tmp_path):
    """Flower carries the node's Context to the ClientApp and back with every message (in a simulation
    through Ray and the coordinator's process): AdamW's 2 x 4d bytes must not ride along."""
    plan = parse_scenario(TINY.encode()).plan
    from participant.inner_state import INNER_STATE_FILE
    from participant.local_data import simulated

    trainer = LocalTrainer(plan, simulated(plan.task, 0, 3), CPU)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert load_inner_state(context, plan, tmp_path) == {}
    state: dict = {}
    trainer.train(_vector(0), 1, 1, state)
    save_inner_state(context, plan, state, tmp_path)
    assert len(context.state) == 0  # nothing of it travels
    assert (tmp_path / INNER_STATE_FILE).stat().st_mode & 0o777 == 0o600
    restored = load_inner_state(context, plan, tmp_path)
    for key, entry in state["state"].items():
        assert torch.equal(restored["state"][key]["exp_avg"], entry["exp_avg"])
    assert load_inner_state(context, replace(plan, rounds=3), tmp_path) == {}  # another plan starts fresh
    next_run = Context(run_id=2, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert load_inner_state(next_run, plan, tmp_path) == {}  # and so does another run of the same plan


# ---------------------------------------------------------------- the report
def _fake_run(out: Path, plan: Plan, names: list[str]) -> None:
    """What a federated run leaves behind: the final model, members' kept bases, metrics rows."""
    final = _vector(7)
    out.mkdir(parents=True)
    save_model(out / "model.safetensors", final, {"plan_hash": plan.hash})
    for name in names:
        ModelKeeper(out / "members" / name, "charlm", plan.hash, name, TASK.build_model()).keep_base(final, 2)
    rows = [{"round": r, "eval_loss": 3.0 - 0.2 * r, "eval_participants": 3} for r in range(3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_has_every_language_for_every_model_and_states_its_checks(tmp_path):
    sc = parse_scenario(TINY.encode())
    out = tmp_path / "run"
    _fake_run(out, sc.plan, sc.member_names())
    short = build_report(sc, out, {"secure_aggregation": True, "wall_seconds": 1.0})
    report = json.loads((out / "report.json").read_text())
    kinds = sorted(r["kind"] for r in report["models"])
    assert kinds == ["alone"] * 3 + ["base", "centralized", "initial"] + ["sovereign"] * 3
    for row in report["models"]:
        assert set(row["bpc"]) == set(LANGUAGES), row["label"]
        assert all(np.isfinite(v) and v > 0 for v in row["bpc"].values())
    assert report["held_languages"] == ["kri", "spa", "glg", "eng", "jam"]
    assert report["budget"]["steps"] == 6  # rounds x local steps, for alone and centralized alike
    assert {r["steps"] for r in report["models"] if r["kind"] in ("alone", "centralized")} == {6}
    assert set(short["checks"]) == {
        "base_improves_every_members_languages",
        "base_beats_alone_on_other_languages",
        "base_within_10pct_of_centralized",
    }
    assert report["checks"]["base_improves_every_members_languages"]["cells"] == 5  # the members' own languages
    assert report["checks"]["base_beats_alone_on_other_languages"]["cells"] == 3 + 3 + 4  # others' languages
    assert all(m["final_base_matches"] for m in report["members"])
    assert [p["round"] for p in report["curve"]] == [0, 1, 2]
    md = (out / "report.md").read_text()
    assert "| sovereign:spain |" in md and "**" in md and ("PASS" in md or "FAIL" in md)
    assert (out / "tapestry.png").stat().st_size > 20_000
    assert (out / "members" / "spain" / "sovereign.safetensors").exists()
    assert (out / "baselines" / "alone-jamaica.safetensors").exists()
    # the comparison table reads two runs' reports
    table = compare([out, out])
    assert "rounds to <=" in table and len([ln for ln in table.splitlines() if ln.startswith("| run")]) == 3


def test_curve_conversion_is_exact_and_rounds_to():
    plan = parse_scenario(TINY.encode()).plan
    model = TASK.build_model()
    torch.manual_seed(0)
    test = tasks.load_test("charlm")
    from participant.local_data import simulated

    parts = [simulated(plan.task, i, 3).test for i in range(3)]
    evs = [TASK.evaluate(model, p, CPU) for p in parts]
    loss = sum(e.loss * e.num_examples for e in evs) / sum(e.num_examples for e in evs)
    from simulations.tapestry import pooled, unit_counts

    counts = unit_counts(plan)
    held = ["kri", "spa", "glg", "eng", "jam"]
    nbytes, chars = sum(counts[c][0] for c in held), sum(counts[c][1] for c in held)
    via_eval = loss * nbytes / chars / np.log(2)
    bpc = TASK.bits_per_char(model, test, CPU)
    assert via_eval == pytest.approx(pooled(bpc, held, counts), rel=1e-9)
    curve = [{"round": 1, "pooled_bpc": 5.0}, {"round": 2, "pooled_bpc": 4.0}, {"round": 3, "pooled_bpc": 3.5}]
    assert rounds_to(curve, 4.0) == 2 and rounds_to(curve, 3.0) is None


def test_alone_baseline_starts_from_the_federation_initial_model():
    plan = parse_scenario(TINY.encode()).plan
    from coordinator.driver import initial_model

    zero = replace(plan, training=replace(plan.training, lr=1e-12))
    row = run_job(Job("alone", zero.canonical_json(), "jamaica", 0, steps=1))
    assert row["sha256"] != ""
    m = TASK.build_model()
    tasks.vector_to_model(m, initial_model(plan))
    init_bpc = TASK.bits_per_char(m, tasks.load_test("charlm"), CPU)
    assert row["bpc"]["eng"] == pytest.approx(init_bpc["eng"], abs=1e-3)


# ---------------------------------------------------------------- end to end (Flower, secure aggregation)
@pytest.mark.slow
def test_tiny_tapestry_end_to_end(tmp_path):
    """The real command on a 3-member, 2-round tapestry: N+1 models with lineage, the report."""
    import subprocess
    import sys

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "console.cli", "simulate", str(scenario), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report:" in proc.stdout and "base_within_10pct_of_centralized" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["secure_aggregation"] and summary["rounds_completed"] == 2
    final = load_file(str(out / "model.safetensors"))["vector"]
    ledger_like = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("contribution") for r in ledger_like[1:])  # floor, scores and weights per round
    for name in ("jamaica", "spain", "sierra-leone"):
        folder = out / "members" / name
        base = read_model(folder, BASE, TASK.build_model())
        assert np.array_equal(base.vector, final)  # the final base each member kept is the federation's model
        assert [e["after_round"] for e in base.card["lineage"]] == [0, 1, 2]
        assert base.card["lineage"][-1]["sha256"] == model_hash(final) and base.card["member"] == name
        local = read_model(folder, LOCAL, TASK.build_model())
        assert local.card["round"] == 2 and local.card["derived_from"] == base.card["lineage"][1]["sha256"]
        sovereign = read_model(folder, "sovereign", TASK.build_model())
        assert sovereign.card["derived_from"] == model_hash(final)
    report = json.loads((out / "report.json").read_text())
    assert len(report["models"]) == 3 + 3 * 2 and all(len(r["bpc"]) == len(LANGUAGES) for r in report["models"])
    assert [p["round"] for p in report["curve"]] == [0, 1, 2]


# ---------------------------------------------------------------- where a node keeps its models; the CLI
def _kits_and_data(tmp_path: Path):
    from fedloom.kits import provision_members

    plan = parse_scenario(TINY.encode()).plan
    provision_members(plan, tmp_path / "kits", ["jamaica", "spain", "sierra-leone"], ["JM", "ES", ""])
    files = tasks.export_partitions("charlm", tmp_path / "data", 3, "groups", groups=plan.task.group_labels())
    return plan, files


def test_a_node_keeps_its_models_in_its_state_dir_or_where_the_simulation_says(tmp_path):
    from types import SimpleNamespace

    from flwr.app import ConfigRecord

    from participant.node import view_of

    plan, files = _kits_and_data(tmp_path)
    config = {"round": 1, "plan": plan.canonical_json(), "plan-hash": plan.hash, "sim-models": str(tmp_path / "m")}
    msg = SimpleNamespace(content=RecordDict({"config": ConfigRecord(config)}))  # what view_of reads of a Message
    state = tmp_path / "state"
    deployed = Context(
        run_id=1,
        node_id=1,
        node_config={"kit": str(tmp_path / "kits" / "spain"), "data-path": str(files[1]), "state-dir": str(state)},
        state=RecordDict(),
        run_config={},
    )
    view = view_of(msg, deployed)
    assert view.models_dir == state / "models" and view.member_name == "spain"  # sim-models is not honoured
    msg.content["config"]["sim-kits"] = str(tmp_path / "kits")
    simulated = Context(
        run_id=1, node_id=2, node_config={"partition-id": 2, "num-partitions": 3}, state=RecordDict(), run_config={}
    )
    view = view_of(msg, simulated)
    assert view.member_name == "sierra-leone" and view.models_dir == tmp_path / "m" / "sierra-leone"
    assert view.kit is not None and view.kit.member.id == 3


def test_participant_sovereign_command(tmp_path):
    plan, files = _kits_and_data(tmp_path)
    kit, state = tmp_path / "kits" / "jamaica", tmp_path / "state"
    args = ["participant", "sovereign", "--kit", str(kit), "--data", str(files[0]), "--state-dir", str(state)]
    result = CliRunner().invoke(cli_app, [*args, "--steps", "5", "--device", "cpu"])
    assert result.exit_code == 2 and "no shared base" in result.output
    base = _vector(3)
    ModelKeeper(state / "models", "charlm", plan.hash, "jamaica", TASK.build_model()).keep_base(base, 2)
    result = CliRunner().invoke(cli_app, [*args, "--steps", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = read_model(state / "models", "sovereign", TASK.build_model())
    assert saved.card["derived_from"] == model_hash(base) and saved.card["training"]["steps"] == 5
    assert not np.array_equal(saved.vector, base)
