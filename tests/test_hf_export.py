"""HF model directories: what fedloom exports loads with transformers' Auto classes and generates
exactly what the exported model computes; the card states the lineage."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tasks.hf_export import LINEAGE_FILE, ExportCard, byte_tokenizer, save_pretrained_dir

CARD = ExportCard(
    title="fedloom shared base",
    kind="shared base",
    task="tiny-llama-full",
    mode="full",
    base="tiny",
    base_sha256="ab" * 32,
    sha256="cd" * 32,
    rounds=2,
    secure_aggregation=True,
    members=("amara", "bo"),
    languages=("cat", "spa"),
    lineage=("01" * 32, "02" * 32),
)


def test_the_byte_tokenizer_ids_are_the_utf8_bytes_and_decode_back():
    tok = byte_tokenizer()
    text = "Tots els éssers humans ⵜⴰ"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_an_export_loads_with_the_auto_classes_and_generates_what_the_model_computes(tmp_path):
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    out = save_pretrained_dir(model, byte_tokenizer(), tmp_path / "export", CARD)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", LINEAGE_FILE} <= {
        p.name for p in out.iterdir()
    }
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Tots els", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        mine = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        theirs = loaded.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(mine, theirs) and theirs.shape[1] == ids.shape[1] + 8
    facts = json.loads((out / LINEAGE_FILE).read_text())
    assert facts["base_sha256"] == CARD.base_sha256 and facts["lineage"] == list(CARD.lineage)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers")
    assert CARD.base_sha256 in readme and "secure aggregation | on" in readme and "02" * 32 in readme


# ------------------------------------------------------------------ a deployed member's own export
LM_FEDERATION = """
[federation]
name = "lm-federation"
address = "127.0.0.1:9092"
sans = ["127.0.0.1"]
[[members]]
name = "amara"
[[members]]
name = "bo"
[[members]]
name = "chen"
[plan]
rounds = 2
[plan.task]
name = "{task}"
"""


def _kit(tmp_path, task: str = "tiny-llama-lora"):
    from typer.testing import CliRunner

    from console.cli import app

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "federation.toml").write_text(LM_FEDERATION.format(task=task))
    result = CliRunner().invoke(app, ["provision", str(tmp_path / "federation.toml"), "--out", str(tmp_path / "kits")])
    assert result.exit_code == 0, result.output
    return tmp_path / "kits" / "amara"


def _export(*args: str):
    from typer.testing import CliRunner

    from console.cli import app

    return CliRunner().invoke(app, ["participant", "export", *args])


def test_a_member_exports_its_kept_models_as_hf_directories_with_their_lineage(tmp_path):
    """`fedloom participant export`: the last shared base it received and its local model, each a
    directory transformers loads that computes what the member's model computes; cards carry the
    vectors' SHA-256 (the ledger's model_hash for the base) and the lineage the member kept."""
    import numpy as np

    import tasks
    from fedloom.kits import load_member_kit
    from participant.models import ModelKeeper, vector_hash

    kit = _kit(tmp_path)
    plan = load_member_kit(kit).plan
    task = tasks.get_task(plan.task.ref)
    torch.manual_seed(0)
    model = task.build_model()
    initial = tasks.model_to_vector(model)
    rng = np.random.default_rng(0)
    local, after_1 = (initial + rng.normal(0, 0.05, initial.size).astype(np.float32) for _ in range(2))
    keeper = ModelKeeper(tmp_path / "state" / "models", plan.task.name, plan.hash, "amara", model)
    lineage = keeper.keep_base(initial, 0)
    keeper.keep_local(local, 1, lineage, {"steps": 1})
    keeper.keep_base(after_1, 1)  # the base after round 1, as the next trip brought it

    result = _export("--kit", str(kit), "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    for name, vector in (("shared-base", after_1), ("amara", local)):
        out = tmp_path / "hf" / name
        facts = json.loads((out / LINEAGE_FILE).read_text())
        assert facts["sha256"] == vector_hash(vector) and facts["plan_hash"] == plan.hash
        assert facts["members"] == ["amara", "bo", "chen"] and facts["base_sha256"] == task.source().sha256
        received = [vector_hash(initial)] + ([vector_hash(after_1)] if name == "shared-base" else [])
        assert facts["lineage"] == received  # the local model's card: the bases before it was trained
        mine = task.build_model()
        tasks.vector_to_model(mine, vector)
        reference = task.transformers_model(mine).eval()
        loaded = AutoModelForCausalLM.from_pretrained(out).eval()
        ids = AutoTokenizer.from_pretrained(out)("Tots els", return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            assert torch.allclose(reference(ids).logits, loaded(ids).logits, atol=1e-5)
    args = ("--kit", str(kit), "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path / "hf"))
    again = _export(*args)
    assert again.exit_code == 2 and "already exist; give --force" in again.output
    forced = _export(*args, "--force")
    assert forced.exit_code == 0, forced.output


def test_participant_export_refuses_in_one_line_what_it_cannot_export(tmp_path):
    lm_kit = _kit(tmp_path / "lm")
    empty = _export("--kit", str(lm_kit), "--state-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"))
    assert empty.exit_code == 2 and "has not finished a training round yet" in empty.output
    digits_kit = _kit(tmp_path / "digits", task="digits")
    digits = _export("--kit", str(digits_kit), "--out", str(tmp_path / "o"))
    assert digits.exit_code == 2 and "'digits' is not a language-model task" in digits.output
    assert "Traceback" not in empty.output + digits.output and not (tmp_path / "o").exists()
