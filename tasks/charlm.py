"""Task "charlm": a small causal transformer over UTF-8 bytes, trained on the UDHR in 14 languages.

Data. ``tasks/data/udhr`` holds the Universal Declaration of Human Rights as one ``<code>.txt`` per
language, listed in ``manifest.json`` (see ``ATTRIBUTION.md``). The Flower app bundle ships only
``*.json`` data, so the same texts are also bundled as ``corpus.json`` = ``{"languages": {code:
text}}``, written by :func:`write_corpus_bundle` (``python -c "import tasks.charlm as c;
c.write_corpus_bundle()"``); the loader prefers it and checks every text against the manifest's
SHA-256. Per language the last 10 % of the UTF-8
bytes (cut at a character boundary) is the test split. Examples are windows of ``context + 1``
bytes (a :class:`~tasks.base.TokenDataset`, ``x`` uint8): training windows start every
``context // 2`` bytes (the last one aligned to the end of the text), test windows every
``context`` bytes so each test byte after the first is predicted exactly once (the last window is
padded with :data:`~tasks.text.PAD`, which is never a target). ``y`` is the language's index in
:data:`LANGUAGES`, so label partitioners split by language (scheme ``"groups"`` with language codes).

Model. Token embedding (256 -> d) plus learned positions, ``layers`` pre-LayerNorm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm and an output head tied to the token
embedding. No dropout, so federated runs are deterministic; initial weights depend only on the torch
RNG state.

Metrics. :meth:`CharLMTask.evaluate` reports nats per predicted byte and next-byte accuracy.
:func:`bits_per_char` reports, per language, the total bits over the test windows divided by the
number of characters whose first byte is predicted, so scripts with multi-byte UTF-8 (Arabic,
Tifinagh) compare fairly with Latin ones. The first byte of every window is context only and is not
scored; each window is scored from its own bytes only (at most ``context`` bytes of history).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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
from tasks.registry import register_task
from tasks.text import PAD, VOCAB_SIZE, is_lead_byte, split_bytes, windows

DATA_DIR = Path(__file__).parent / "data" / "udhr"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILE = "corpus.json"


def read_manifest(data_dir: str | Path = DATA_DIR) -> dict:
    """The corpus manifest (languages in a fixed order, each with its SHA-256 and size)."""
    return json.loads((Path(data_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))


LANGUAGES: tuple[str, ...] = tuple(read_manifest()["languages"])
"""ISO 639-3 codes in manifest order; a window's label ``y`` is its language's index here."""


def language_index(code: str) -> int:
    """The label of language ``code`` (its position in :data:`LANGUAGES`)."""
    try:
        return LANGUAGES.index(code)
    except ValueError:
        raise ValueError(f"unknown language {code!r}; charlm knows {', '.join(LANGUAGES)}") from None


def read_text_files(data_dir: str | Path = DATA_DIR) -> dict[str, str]:
    """Every manifest language's ``<code>.txt``, decoded as strict UTF-8."""
    data_dir = Path(data_dir)
    return {
        code: (data_dir / f"{code}.txt").read_bytes().decode("utf-8") for code in read_manifest(data_dir)["languages"]
    }


def write_corpus_bundle(data_dir: str | Path = DATA_DIR) -> Path:
    """Write ``corpus.json`` (all texts in one JSON file, for the app bundle) from the ``.txt`` files."""
    data_dir = Path(data_dir)
    bundle = {
        "note": f"generated from the *.txt files by tasks.charlm.write_corpus_bundle; see {MANIFEST_FILE} and "
        "ATTRIBUTION.md for sources and licence",
        "languages": read_text_files(data_dir),
    }
    path = data_dir / BUNDLE_FILE
    path.write_text(json.dumps(bundle, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_corpus(data_dir: str | Path = DATA_DIR) -> dict[str, str]:
    """``{code: text}`` in manifest order, from ``corpus.json`` if present, else from the ``.txt`` files.

    Every text must match the manifest's SHA-256, so a stale bundle fails loudly.
    """
    data_dir = Path(data_dir)
    entries = read_manifest(data_dir)["languages"]
    bundle = data_dir / BUNDLE_FILE
    if bundle.is_file():
        texts = json.loads(bundle.read_text(encoding="utf-8"))["languages"]
        source = str(bundle)
    else:
        texts = read_text_files(data_dir)
        source = f"{data_dir}/*.txt"
    missing = [code for code in entries if code not in texts]
    if missing:
        raise ValueError(f"{source}: missing languages {missing}")
    for code, entry in entries.items():
        digest = hashlib.sha256(texts[code].encode("utf-8")).hexdigest()
        if digest != entry["sha256"]:
            raise ValueError(f"{source}: text of {code!r} does not match {MANIFEST_FILE} (regenerate {BUNDLE_FILE})")
    return {code: texts[code] for code in entries}


# ---------------------------------------------------------------- model


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ByteTransformer(nn.Module):
    """Causal byte-level language model: (B, T) byte ids -> (B, T, 256) next-byte logits."""

    def __init__(self, context: int = 64, d_model: int = 64, heads: int = 4, layers: int = 2, mlp_ratio: int = 4):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        # The output head reuses tok.weight (no separate module), so the parameter vector holds it once.
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale the residual projections by depth
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"input has {t} positions but the model's context is {self.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.tok.weight)


# ---------------------------------------------------------------- metrics


def _tokens(data: Dataset, device: torch.device) -> torch.Tensor:
    x = np.asarray(data.x)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"expected byte windows of shape (N, context + 1), got {x.shape}")
    return torch.from_numpy(x.astype(np.int64)).to(device)  # astype copies: never aliases a cached pool


@torch.no_grad()
def window_stats(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per window: ``nats`` (summed over scored bytes), ``bytes`` scored, ``correct`` and ``chars``.

    A target byte is scored unless it is PAD; position 0 of each window is context only.
    """
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.to(device)
    model.eval()
    x = _tokens(data, device)
    nats, nbytes, correct = [], [], []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        logits = model(xb[:, :-1])
        target = xb[:, 1:]
        mask = target != PAD
        nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        nats.append((nll.double() * mask).sum(1).cpu())
        nbytes.append(mask.sum(1).cpu())
        correct.append(((logits.argmax(-1) == target) & mask).sum(1).cpu())
    targets = np.asarray(data.x)[:, 1:]
    chars = np.count_nonzero(is_lead_byte(targets) & (targets != PAD), axis=1).astype(np.int64)
    return {
        "nats": torch.cat(nats).numpy(),
        "bytes": torch.cat(nbytes).numpy().astype(np.int64),
        "correct": torch.cat(correct).numpy().astype(np.int64),
        "chars": chars,
    }


def language_subset(data: Dataset, code: str) -> Dataset:
    """The windows of ``data`` in language ``code``."""
    return data.subset(np.flatnonzero(data.y == language_index(code)))


def bits_per_char(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """``{code: bits per character}`` for every language present in ``data`` (test windows, in order).

    Bits = summed next-byte cross-entropy / ln 2 over every scored byte of the language's windows;
    characters = the scored bytes that start a UTF-8 character. The first byte of each window is
    context only (not scored).
    """
    stats = window_stats(model, data, device, batch_size)
    out = {}
    for label in np.unique(data.y):
        rows = data.y == label
        chars = int(stats["chars"][rows].sum())
        if chars:
            out[LANGUAGES[int(label)]] = float(stats["nats"][rows].sum() / math.log(2) / chars)
    return out


def language_bpc(model: nn.Module, data: Dataset, code: str, device: torch.device, batch_size: int = 256) -> float:
    """Bits per character of ``model`` on the windows of ``data`` in language ``code``."""
    subset = language_subset(data, code)
    if len(subset) == 0:
        raise ValueError(f"no windows of language {code!r} in the data")
    return bits_per_char(model, subset, device, batch_size)[code]


def pooled_bpc(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 256) -> float:
    """Bits per character over all of ``data`` together (languages weighted by their characters)."""
    stats = window_stats(model, data, device, batch_size)
    return float(stats["nats"].sum() / math.log(2) / max(1, int(stats["chars"].sum())))


# ---------------------------------------------------------------- task


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings only (not biases and LayerNorm gains), as in GPT-2 training."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@register_task
class CharLMTask(Task):
    """Byte-level causal transformer on the UDHR corpus; ``y`` = language index.

    Architecture and windowing are class attributes: derive a subclass to change them (an
    unregistered subclass is never confused with "charlm" by the data caches).
    """

    name = "charlm"
    context: ClassVar[int] = 64
    d_model: ClassVar[int] = 64
    heads: ClassVar[int] = 4
    layers: ClassVar[int] = 2
    mlp_ratio: ClassVar[int] = 4
    test_fraction: ClassVar[float] = 0.1
    grad_clip: ClassVar[float] = 1.0
    languages: ClassVar[tuple[str, ...]] = LANGUAGES

    def label_index(self, label: str) -> int:
        return language_index(label)

    def split_texts(self) -> dict[str, tuple[bytes, bytes]]:
        """``{code: (train bytes, test bytes)}``: the last ``test_fraction`` of each text is the test."""
        return {code: split_bytes(text.encode("utf-8"), self.test_fraction) for code, text in read_corpus().items()}

    def load(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(training windows, test windows); the split is positional, so ``seed`` changes nothing."""
        del seed
        train_x, train_y, test_x, test_y = [], [], [], []
        for code, (head, tail) in self.split_texts().items():
            label = language_index(code)
            tr = windows(head, self.context, max(1, self.context // 2), pad_tail=False)
            te = windows(tail, self.context, self.context, pad_tail=True)
            train_x.append(tr)
            test_x.append(te)
            train_y.append(np.full(len(tr), label, dtype=np.int64))
            test_y.append(np.full(len(te), label, dtype=np.int64))
        return (
            TokenDataset(np.concatenate(train_x), np.concatenate(train_y)),
            TokenDataset(np.concatenate(test_x), np.concatenate(test_y)),
        )

    def load_local(self, path: str | Path) -> Dataset:
        """A participant's ``.npz``: ``x`` (N, context + 1) integer bytes in [0, 255], ``y`` language labels."""
        from tasks.npz import _read_xy

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file (expected an .npz with arrays x and y)")
        x, y = _read_xy(path)
        width = self.context + 1
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{path}: x must hold integer byte values, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{path}: x must have shape (N, {width}) (windows of context + 1 bytes), got {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"{path}: x and y must hold the same, non-zero number of windows: {x.shape}, {y.shape}")
        if x.min() < 0 or x.max() >= VOCAB_SIZE:
            raise ValueError(f"{path}: byte values must lie in [0, 255], got [{x.min()}, {x.max()}]")
        if y.min() < 0 or y.max() >= len(LANGUAGES):
            raise ValueError(
                f"{path}: language labels must lie in [0, {len(LANGUAGES) - 1}], got [{y.min()}, {y.max()}]"
            )
        return TokenDataset(x.astype(np.uint8), y)

    def build_model(self) -> torch.nn.Module:
        return ByteTransformer(self.context, self.d_model, self.heads, self.layers, self.mlp_ratio)

    def train(
        self,
        model: torch.nn.Module,
        data: Dataset,
        cfg: TrainConfig,
        device: torch.device,
        optimizer_state: dict | None = None,
    ) -> TrainResult:
        """Next-byte cross-entropy over every position of each window (PAD targets ignored).

        ``cfg.steps > 0``: exactly that many minibatches, loss = mean of the last ~10 % of steps;
        else ``cfg.epochs`` passes, loss = mean over the last pass. Gradients are clipped to norm
        ``grad_clip``.

        ``optimizer_state``: a dict that carries the inner optimizer's state from one call to the
        next (DiLoCo keeps each worker's AdamW moments across rounds instead of restarting them
        every round). A non-empty dict is loaded before training; the dict is then replaced, in
        place, by the optimizer's state after training. ``None``: a fresh optimizer, as before.
        """
        n = len(data)
        if n == 0:
            raise ValueError("cannot train on an empty dataset")
        model.to(device)
        model.train()
        x = _tokens(data, device)
        optimizer = make_optimizer(_param_groups(model, cfg.weight_decay), cfg)
        if optimizer_state:
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:  # the plan's hyper-parameters win over stored ones
                group["lr"] = cfg.lr
        losses: list[torch.Tensor] = []  # stay on device: no sync per step
        sizes: list[int] = []
        for batch in minibatches(n, cfg):
            xb = x[batch.to(device)]
            logits = model(xb[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), xb[:, 1:].reshape(-1), ignore_index=PAD)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            optimizer.step()
            losses.append(loss.detach())
            sizes.append(batch.numel())
        if optimizer_state is not None:
            optimizer_state.clear()
            optimizer_state.update(copy.deepcopy(optimizer.state_dict()))
        steps = len(losses)
        tail = max(1, math.ceil(steps / 10)) if cfg.steps else math.ceil(n / cfg.batch_size)
        weights = torch.tensor(sizes[-tail:], dtype=torch.float32, device=device)
        mean = (torch.stack(losses[-tail:]) * weights).sum() / weights.sum()
        return TrainResult(loss=float(mean.item()), num_examples=n, steps=steps)

    def evaluate(
        self, model: torch.nn.Module, data: Dataset, device: torch.device, batch_size: int = 256
    ) -> EvalResult:
        """Mean nats per scored byte, next-byte accuracy, and the number of scored bytes."""
        return scored_eval_result(window_stats(model, data, device, batch_size), "byte")

    def probe(self, name: str, seed: int = 0) -> Dataset:
        """A public probe set for the contribution policy, named in the plan (and hashed there).

        ``"test"``: the whole held-out split. A language code, or codes joined by ``+`` (e.g.
        ``"fra"``): the held-out windows of those languages. The texts are public (the UDHR), so a
        language no member holds makes a fair probe: every member can score its local model on it
        and nobody's own data is in it.
        """
        from tasks.participants import load_test  # cached per registered task

        test = load_test(self, seed)
        if name == "test":
            return test
        codes = [c for c in name.split("+") if c]
        unknown = [c for c in codes if c not in LANGUAGES]
        if not codes or unknown:
            raise ValueError(
                f"charlm has no probe set {name!r}: use 'test' or language codes joined by '+' ({', '.join(LANGUAGES)})"
            )
        labels = [language_index(c) for c in codes]
        return test.subset(np.flatnonzero(np.isin(test.y, labels)))

    def bits_per_char(self, model: torch.nn.Module, data: Dataset, device: torch.device) -> dict[str, float]:
        """Per-language bits per character; see :func:`bits_per_char`."""
        return bits_per_char(model, data, device)

    def scored_units(self, data: Dataset) -> dict[str, tuple[int, int]]:
        """Per language: (scored bytes, characters) of ``data``, so a loss in nats per byte (what
        :meth:`evaluate` reports) converts to bits per character without the model."""
        targets = np.asarray(data.x)[:, 1:]
        real = targets != PAD
        lead = is_lead_byte(targets) & real
        return {
            LANGUAGES[int(label)]: (int(real[rows].sum()), int(lead[rows].sum()))
            for label in np.unique(data.y)
            for rows in [data.y == label]
        }

    def language_groups(self, groups: Iterable[Iterable[str]]) -> tuple[tuple[int, ...], ...]:
        """Language-code groups as label groups, e.g. ``[["arb", "tzm"], ["eng"]] -> ((0, 1), (10,))``."""
        return tuple(tuple(language_index(code) for code in group) for group in groups)
