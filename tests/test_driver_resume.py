"""What a resumed coordinator keeps of the rounds before its crash (the metrics rows and summary), and that it
resumes only from a checkpoint the signed ledger vouches for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator import checkpoint
from coordinator.driver import PENDING_ROW, _pending_row, model_hash
from coordinator.summary import FinalEval, RunSummary
from fedloom.ledger import LedgerWriter


def test_the_row_pending_at_the_crash_keeps_its_training_part(tmp_path):
    (tmp_path / PENDING_ROW).write_text(json.dumps({"round": 2, "wall_seconds": 12.5, "aggregated": [1, 2, 3]}))
    assert _pending_row(tmp_path, 2)["aggregated"] == [1, 2, 3]
    assert _pending_row(tmp_path, 3) == {"round": 3, "wall_seconds": 0.0}  # a stale file is ignored
    assert _pending_row(tmp_path, 0) == {"round": 0, "wall_seconds": 0.0}


BLANK = {  # a summary of the rounds after the resume (only the lists and exactness matter here)
    **dict.fromkeys(("scenario", "task", "strategy", "plan_hash", "out_dir", "ended_at"), ""),
    **dict.fromkeys(("rounds_planned", "rounds_completed", "participants", "participants_connected"), 0),
    **{key: [] for key in ("rounds_skipped", "dropped", "refusals", "resent", "faults", "weights_capped")},
    **dict.fromkeys(("centralized_baseline", "exactness", "adversary", "started_at"), None),
    "secure_aggregation": True,
    "final": FinalEval(),
    "wall_seconds": 0.0,
    "model_parameters": 0,
    "versions": {},
}


def test_a_resumed_summary_includes_the_rounds_before_the_crash():
    rows = [
        {"round": 0, "wall_seconds": 0.0},
        {
            "round": 1,
            "aggregated": [1, 2],
            "dropped": [{"member": 3, "stage": "mask"}],
            "refusals": [],
            "resent": [{"member": 1, "node": 7, "trip": "train", "times": 1}],
            "skipped": None,
            "exactness": 2e-5,
        },
        {
            "round": 2,
            "aggregated": [],
            "dropped": [],
            "refusals": [{"member": 2, "round": 2, "reason": "policy"}],
            "skipped": "too few",
            "exactness": None,
        },
        {"round": 3, "aggregated": [1, 2, 3], "dropped": [], "refusals": [], "skipped": None, "exactness": 1e-5},
    ]
    resumed = RunSummary(**{**BLANK, "resent": [{"round": 3, "member": 2, "node": 8, "trip": "secagg", "times": 2}]})
    resumed.exactness = 1e-5
    resumed.add_rounds_before(rows, first=3)  # rounds 1 and 2 ran before the crash
    summary = resumed.to_json()
    assert summary["dropped"] == [{"round": 1, "member": 3, "stage": "mask"}]
    assert summary["refusals"] == [{"member": 2, "round": 2, "reason": "policy"}]
    assert summary["rounds_skipped"] == [{"round": 2, "reason": "too few"}]
    assert [(r["round"], r["member"]) for r in summary["resent"]] == [(1, 1), (3, 2)]  # earlier rounds first
    assert summary["exactness"] == 2e-5 and summary["resumed_after_round"] == 2


# ------------------------------------------------------------------ a checkpoint is resumed only if the ledger signs it

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
PLAN = "ab" * 32


def models_for(rounds: int) -> list[np.ndarray]:
    return [np.random.default_rng(r).standard_normal(64).astype(np.float32) for r in range(rounds + 1)]


def round_entry(r: int, model: np.ndarray) -> dict:
    return {
        "round": r,
        "plan_hash": PLAN,
        "asked": [1, 2],
        "aggregated": [1, 2],
        "dropped": [],
        "refusals": [],
        "skipped": None,
        "model_hash": model_hash(model),
        "metrics": {},
    }


def run_rounds(state: Path, models: list[np.ndarray], rounds: range, checkpoint_last: bool = True) -> None:
    """What the driver writes: each round's ledger entry, then its checkpoint."""
    genesis = {
        "federation": "t",
        "plan_hash": PLAN,
        "roster_hash": "cd" * 32,
        "initial_model_hash": model_hash(models[0]),
    }
    with LedgerWriter.open(state / "ledger.jsonl", KEY, genesis) as w:
        for r in rounds:
            w.append("round", round_entry(r, models[r]))
            if r != rounds[-1] or checkpoint_last:
                checkpoint.save(state, PLAN, r, 0, models[r], {"m": np.zeros(3, np.float32)}, r)


def resume(state: Path, initial: np.ndarray | None = None):
    return checkpoint.load_attested(state, PLAN, state / "ledger.jsonl", PUB, initial)


def model_bytes(path: Path) -> tuple[int, int]:
    """Where the "model" tensor's data lies in a safetensors file: (start, end)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + n])["model"]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_an_untouched_checkpoint_resumes(tmp_path):
    models = models_for(2)
    run_rounds(tmp_path, models, range(1, 3))
    ckpt, signed = resume(tmp_path)
    assert ckpt is not None and ckpt.round == 2 and np.array_equal(ckpt.model, models[2])
    assert signed[2] == model_hash(models[2])


def test_one_flipped_byte_of_model_data_is_refused_naming_the_file_and_both_hashes(tmp_path):
    models = models_for(2)
    run_rounds(tmp_path, models, range(1, 3))
    newest = tmp_path / "checkpoints" / "round-000002.safetensors"
    start, end = model_bytes(newest)
    raw = bytearray(newest.read_bytes())
    raw[(start + end) // 2] ^= 0x01
    newest.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError) as exc:
        resume(tmp_path)
    text = one_line_error(exc)
    tampered = np.frombuffer(bytes(raw[start:end]), dtype=np.float32)
    assert str(newest) in text and model_hash(models[2]) in text
    assert model_hash(tampered) in text and "refusing to resume" in text


@pytest.mark.parametrize("damage", ["header", "header length", "cut off", "pointer"])
def test_a_corrupt_checkpoint_is_one_line_not_a_traceback(tmp_path, damage):
    run_rounds(tmp_path, models_for(2), range(1, 3))
    newest = tmp_path / "checkpoints" / "round-000002.safetensors"
    raw = newest.read_bytes()
    if damage == "header":
        newest.write_bytes(raw[:8] + b"#" + raw[9:])
    elif damage == "header length":
        newest.write_bytes(b"\xff" * 8 + raw[8:])
    elif damage == "cut off":
        newest.write_bytes(raw[: len(raw) // 2])
    else:
        (tmp_path / checkpoint.POINTER).write_text('{"round": 2, "epo')
    with pytest.raises(checkpoint.CheckpointError) as exc:
        resume(tmp_path)
    text = one_line_error(exc)
    assert "corrupt" in text and (str(newest) in text or checkpoint.POINTER in text)


def test_a_checkpoint_of_another_round_or_a_cut_off_ledger_is_refused(tmp_path):
    models = models_for(3)
    run_rounds(tmp_path, models, range(1, 4))
    lines = (tmp_path / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "ledger.jsonl").write_bytes(b"".join(lines[:3]))  # still verifies: genesis, rounds 1 and 2
    with pytest.raises(checkpoint.CheckpointError) as exc:
        resume(tmp_path)
    assert "ends after round 2" in one_line_error(exc)


def test_lost_checkpoints_are_refused(tmp_path):
    models = models_for(3)
    run_rounds(tmp_path, models, range(1, 4))
    (tmp_path / checkpoint.POINTER).unlink()
    with pytest.raises(checkpoint.CheckpointError) as exc:
        resume(tmp_path, models[0])
    assert "records rounds up to 3" in one_line_error(exc)


def test_a_crash_between_the_ledger_entry_and_the_checkpoint_resumes_from_the_previous_round(tmp_path):
    models = models_for(2)
    run_rounds(tmp_path, models, range(1, 3), checkpoint_last=False)
    ckpt, signed = resume(tmp_path)
    assert ckpt is not None and ckpt.round == 1 and max(signed) == 2  # the driver's resume entry takes round 2 back
    fresh = tmp_path / "fresh"
    run_rounds(fresh, models, range(1, 2), checkpoint_last=False)  # crashed before round 1's checkpoint
    assert resume(fresh, models[0])[0] is None
    with pytest.raises(checkpoint.CheckpointError) as exc:  # ... but not from another initial model
        resume(fresh, models[1])
    assert "after round 0" in one_line_error(exc)


def test_coordinator_start_refuses_a_tampered_checkpoint_in_one_line(tmp_path):
    """The real command on a state directory whose newest checkpoint lost its match with the signed ledger:
    one line on stderr, exit 2, and nothing started (no SuperLink, no run)."""
    import subprocess

    from deployment import FEDLOOM, ROOT, Federation, env

    from fedloom.kits import load_coordinator_kit

    fed = Federation(tmp_path, ["ines", "jon", "kai"])
    fed.provision('rounds = 3\n[plan.task]\nname = "digits"\n[plan.secure]\nenabled = false\n')
    kit = load_coordinator_kit(fed.kits / "coordinator")
    state, models = tmp_path / "state", models_for(2)
    genesis = {"federation": kit.plan.federation, "plan_hash": kit.plan.hash, "roster_hash": kit.roster.digest().hex()}
    with LedgerWriter.open(state / "ledger.jsonl", kit.ledger_key, genesis) as w:
        for r in (1, 2):
            w.append("round", round_entry(r, models[r]) | {"plan_hash": kit.plan.hash})
            checkpoint.save(state, kit.plan.hash, r, 0, models[r], {}, r)
    newest = state / "checkpoints" / "round-000002.safetensors"
    start, _end = model_bytes(newest)
    raw = bytearray(newest.read_bytes())
    raw[start + 5] ^= 0x80
    newest.write_bytes(bytes(raw))
    cmd = [*FEDLOOM, "coordinator", "start", "--kit", str(fed.kits / "coordinator"), "--state-dir", str(state)]
    cmd += ["--app", str(ROOT), "--bind", fed.address, "--node-wait", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(COLUMNS="40"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: checkpoint "), proc.stderr
    assert str(newest) in proc.stderr and model_hash(models[2]) in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (state / "service.json").exists()


def test_a_deployment_start_builds_the_initial_model_once(tmp_path, monkeypatch):
    """A fresh start pins the initial model's hash in a new ledger and starts round 1 from that same vector (at full
    fine-tuning each build loads the base: seconds at 1.35e8, minutes at 7e9); a restart before any checkpoint
    builds it once more, to check it against the genesis."""
    from deployment import Federation

    from coordinator import driver, server_app

    fed = Federation(tmp_path, ["ines", "jon", "kai"])
    fed.provision('rounds = 3\n[plan.task]\nname = "digits"\n[plan.secure]\nenabled = false\n')
    built = []

    def counted(plan):
        built.append(plan.hash)
        return real(plan)

    real = driver.initial_model
    monkeypatch.setattr(driver, "initial_model", counted)
    monkeypatch.setattr(server_app, "initial_model", counted)
    config = {"kit": str(fed.kits / "coordinator"), "state-dir": str(tmp_path / "state")}
    for start in ("fresh", "restart"):
        settings = server_app.deployment_settings(config)
        ckpt, signed, model = driver._starting_point(settings)
        settings.ledger.close()
        assert len(built) == 1, start
        assert ckpt is None and signed == {0: model_hash(model)} and settings.initial is None
        np.testing.assert_array_equal(model, real(settings.plan))
        built.clear()
