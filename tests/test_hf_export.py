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
