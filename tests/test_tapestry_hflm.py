"""The Tapestry report and the HF exports on the Hugging Face LM tasks (tiny random Llama base):
token-aware bits per character, exports that transformers loads and that compute what the task
model computes (LoRA merged into a copy of the shared base, or full), and the whole command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tasks
import tasks.hflm_base as hb
from participant.models import vector_hash
from simulations.scenario import parse_scenario
from simulations.tapestry import pooled, unit_counts
from tasks.hf_export import LINEAGE_FILE, ExportCard, save_pretrained_dir

CPU = torch.device("cpu")

TINY_LM = """
name = "tiny-lm-tapestry"
rounds = 2
[task]
name = "tiny-llama-lora"
partition = "groups"
groups = ["eng+jam", "spa+cat", "kri"]
[[members]]
name = "jamaica"
country = "JM"
[[members]]
name = "spain"
country = "ES"
[[members]]
name = "sierra-leone"
[training]
steps = 2
optimizer = "adamw"
lr = 0.003
batch_size = 8
keep_optimizer_state = true
[secure]
enabled = true
[contribution]
enabled = true
probe = "fra"
floor = 6.0            # nats per token; the tiny byte-level base starts near ln 256 = 5.55
cap = 0.5
[report]
sovereign_steps = 2
workers = 1
unheld = false         # score only the members' own languages
"""


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _trained(name: str, steps: int = 2):
    """A task model that moved away from its initialisation (LoRA adapters no longer zero)."""
    task = tasks.get_task(name)
    torch.manual_seed(0)
    model = task.build_model()
    train, _ = task.load()
    task.train(model, train.subset(np.arange(64)), tasks.TrainConfig(steps=steps, optimizer="adamw", lr=0.01), CPU)
    return task, model


def test_the_token_loss_converts_exactly_to_the_reports_bits_per_char():
    """unit_counts (the task's scored_units: tokens, characters) turns the federation's nats per
    token into the pooled bpc that bits_per_char gives per language."""
    plan = parse_scenario(TINY_LM.encode()).plan
    task, model = _trained("tiny-llama-lora")
    from participant.local_data import simulated

    parts = [simulated(plan.task, i, 3).test for i in range(3)]
    evs = [task.evaluate(model, p, CPU) for p in parts]
    loss = sum(e.loss * e.num_examples for e in evs) / sum(e.num_examples for e in evs)
    counts = unit_counts(plan)
    held = ["eng", "jam", "spa", "cat", "kri"]
    units, chars = sum(counts[c][0] for c in held), sum(counts[c][1] for c in held)
    assert units == sum(e.num_examples for e in evs)  # the units ARE the scored tokens evaluate counts
    bpc = task.bits_per_char(model, tasks.load_test(plan.task.ref), CPU)
    assert loss * units / chars / np.log(2) == pytest.approx(pooled(bpc, held, counts), rel=1e-9)


@pytest.mark.parametrize("name", ["tiny-llama-lora", "tiny-llama-full"])
def test_an_export_loads_with_the_auto_classes_and_computes_the_task_models_logits(tmp_path, name):
    task, model = _trained(name)
    card = ExportCard(
        title="t", kind="shared base", task=name, mode=task.mode, base="tiny", base_sha256=task.source().sha256,
        sha256=vector_hash(tasks.model_to_vector(model)), rounds=1, secure_aggregation=True,
    )  # fmt: skip
    out = save_pretrained_dir(task.transformers_model(model), task.hf_tokenizer(), tmp_path / "m", card)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = AutoTokenizer.from_pretrained(out)("Tots els éssers humans", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == list("Tots els éssers humans".encode())
    with torch.no_grad():
        mine, theirs = model.eval()(ids), loaded(ids).logits
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5)
    assert json.loads((out / LINEAGE_FILE).read_text())["base_sha256"] == hb.tiny_sha256()
    if task.mode == "lora":
        # the adapters moved the model, and exporting left the process's shared frozen base alone
        assert not torch.allclose(hb.load_fresh(task.source())(ids).logits, theirs, atol=1e-3)
        torch.manual_seed(0)
        fresh = task.build_model().eval()  # LoRA B starts at zero: exactly the base
        with torch.no_grad():
            assert torch.equal(fresh(ids), hb.load_fresh(task.source())(ids).logits)


@pytest.mark.slow
def test_tiny_lm_tapestry_end_to_end_writes_the_report_and_hf_models(tmp_path):
    """The real command on tiny-llama-lora (3 members, 2 secure rounds): the report in bits per
    character and N+1 HF directories whose cards state the lineage and that compute the models."""
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY_LM)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "console.cli", "simulate", str(scenario), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["secure_aggregation"] and summary["rounds_completed"] == 2
    report = json.loads((out / "report.json").read_text())
    kinds = sorted(r["kind"] for r in report["models"])
    assert kinds == ["alone"] * 3 + ["base", "centralized", "initial"] + ["sovereign"] * 3
    held = {"eng", "jam", "spa", "cat", "kri"}
    assert all(set(r["bpc"]) == held and all(0 < v < 20 for v in r["bpc"].values()) for r in report["models"])
    assert report["unheld_languages"] == [] and "base_improves_every_members_languages" in report["checks"]
    assert [p["round"] for p in report["curve"]] == [0, 1, 2]
    base_row = next(r for r in report["models"] if r["kind"] == "base")
    assert report["curve"][-1]["pooled_bpc"] == pytest.approx(base_row["pooled_held"], abs=2e-4)  # token-aware
    assert set(summary["hf_models"]) == {"shared-base", "jamaica", "spain", "sierra-leone"}
    final = load_file(str(out / "model.safetensors"))["vector"]
    task = tasks.get_task("tiny-llama-lora")
    model = task.build_model()
    tasks.vector_to_model(model, final)
    loaded = AutoModelForCausalLM.from_pretrained(out / "hf" / "shared-base").eval()
    ids = torch.tensor([list(b"Todos los seres humanos")])
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids), loaded(ids).logits, atol=1e-5, rtol=1e-5)
    facts = json.loads((out / "hf" / "shared-base" / LINEAGE_FILE).read_text())
    assert facts["sha256"] == vector_hash(final) == facts["lineage"][-1] and len(facts["lineage"]) == 3
    assert facts["base_sha256"] == hb.tiny_sha256() and facts["secure_aggregation"] and facts["rounds"] == 2
    assert facts["members"] == ["jamaica", "spain", "sierra-leone"]
    assert "bpc mean over these languages" in facts["metrics"]
    spain = json.loads((out / "hf" / "spain" / LINEAGE_FILE).read_text())
    assert spain["kind"] == "sovereign" and spain["member"] == "spain" and spain["languages"] == ["spa", "cat"]
    assert spain["lineage"] == facts["lineage"] and spain["sha256"] != facts["sha256"]
    assert "secure aggregation | on" in (out / "hf" / "spain" / "README.md").read_text()
