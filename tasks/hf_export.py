"""Models as Hugging Face model directories: what the ecosystem loads and serves.

A consortium's models leave fedloom the way every open-weight model travels: a directory that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read (config.json,
generation_config.json, model.safetensors, the tokenizer files) and a README.md model card. The card
states the lineage a member or an auditor checks against the signed ledger: the base model's
SHA-256 (the plan's pin), the rounds, the SHA-256 of the exported parameter vector and of every
shared base received (the ledger's ``model_hash`` values), the members, and whether secure
aggregation was on. OpenAI-compatible servers that read HF directories (vLLM, SGLang, TGI, llama.cpp
after conversion) serve it as is.

Only sans-Flower, sans-plan code here (tasks layer): the caller passes a merged ``transformers``
model (LoRA adapters folded into the weights) and an :class:`ExportCard` it filled in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
LINEAGE_FILE = "fedloom.json"  # the card's facts, machine-readable


@dataclass(frozen=True)
class ExportCard:
    """What the model card says about one exported model."""

    title: str  # e.g. "fedloom shared base" or "spain: sovereign model"
    kind: str  # "shared base" | "local" | "sovereign" | "centralized" ...
    task: str
    mode: str  # "lora" (adapters merged into the weights) | "full"
    base: str  # where the base came from (a label: "smollm2", a directory, "tiny")
    base_sha256: str  # the plan's pin
    sha256: str  # SHA-256 of the float32 parameter vector that travelled (ledger `model_hash` for a shared base)
    rounds: int
    secure_aggregation: bool
    plan_hash: str = ""
    member: str = ""  # whose model ("" for the shared base)
    members: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    lineage: tuple[str, ...] = ()  # SHA-256 of every shared base received, in order
    ledger_head: str = ""  # hash of the ledger's last entry, when known
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. held-out bits per character


def save_pretrained_dir(model: Any, tokenizer: Any, out: Path, card: ExportCard) -> Path:
    """Write ``model`` (a transformers PreTrainedModel, float32 weights) with ``tokenizer`` and the
    card to ``out`` (created; existing files in it are replaced). Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / LINEAGE_FILE).write_text(json.dumps(asdict(card), indent=2) + "\n", encoding="utf-8")
    (out / CARD_FILE).write_text(model_card(card), encoding="utf-8")
    return out


def model_card(card: ExportCard) -> str:
    """README.md: Hub-style YAML front matter, then the lineage in words and as a table."""
    tags = [
        "fedloom",
        "federated-learning",
        "secure-aggregation" if card.secure_aggregation else "plaintext-aggregation",
    ]
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    front += [f"- {t}" for t in tags]
    if card.languages:
        front += ["language:"] + [f"- {code}" for code in card.languages]
    front.append("---")
    secure = (
        "with secure aggregation: the coordinator saw only the masked sum of the members' updates"
        if card.secure_aggregation
        else "WITHOUT secure aggregation (the coordinator saw each member's update)"
    )
    who = f"{card.member}'s {card.kind}" if card.member else card.kind
    lines = [
        *front,
        "",
        f"# {card.title}",
        "",
        f"The {who} of a fedloom consortium run: task `{card.task}` ({card.mode} fine-tuning"
        + (", LoRA adapters merged into the weights" if card.mode == "lora" else "")
        + f"), {card.rounds} round(s), {secure}.",
        "",
        "| fact | value |",
        "|---|---|",
        f"| base model | {card.base} |",
        f"| base SHA-256 (the plan's pin) | `{card.base_sha256}` |",
        f"| parameter vector SHA-256 | `{card.sha256}` |",
        f"| plan hash | `{card.plan_hash or '-'}` |",
        f"| rounds | {card.rounds} |",
        f"| members | {', '.join(card.members) or '-'} |",
        f"| secure aggregation | {'on' if card.secure_aggregation else 'off'} |",
    ]
    if card.ledger_head:
        lines.append(f"| ledger head | `{card.ledger_head}` |")
    for name, value in card.metrics.items():
        lines.append(f"| {name} | {value:.4f} |")
    if card.lineage:
        lines += [
            "",
            "## Lineage",
            "",
            "SHA-256 of each shared base received, in order (the ledger's `model_hash`):",
            "",
        ]
        lines += [f"{i}. `{digest}`" for i, digest in enumerate(card.lineage, 1)]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("THIS_DIR")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")',
        "```",
        "",
        f"The same facts, machine-readable: `{LINEAGE_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def byte_tokenizer() -> Any:
    """A Hugging Face fast tokenizer whose token ids ARE the UTF-8 bytes (0..255): the tokenizer of
    fedloom's tiny test base, so its exports load and generate like any other model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _byte_level_alphabet().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which the ByteLevel pre-tokenizer and decoder use:
    printable bytes stand for themselves, the others for characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
