"""Task "charlm": UDHR byte corpus, windows, language-group partitions, the byte transformer, bpc."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tasks
from tasks import TokenDataset, TrainConfig
from tasks.base import ADAMW_BETAS, Dataset, make_optimizer, minibatches
from tasks.charlm import (
    BUNDLE_FILE,
    DATA_DIR,
    LANGUAGES,
    CharLMTask,
    bits_per_char,
    language_bpc,
    language_index,
    language_subset,
    read_corpus,
    read_manifest,
    write_corpus_bundle,
)
from tasks.partition import by_groups, partition
from tasks.text import PAD, char_boundary, split_bytes

CPU = torch.device("cpu")
TASK = CharLMTask()
CTX = CharLMTask.context
SCENARIO = (
    ("arb", "tzm", "zgh"),
    ("kri", "tem", "men"),
    ("spa", "cat", "eus", "glg"),
    ("eng", "jam"),
    ("fra",),
    ("por",),
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits() -> tuple[Dataset, Dataset]:
    return tasks.load_splits("charlm")


def _raw(code: str) -> bytes:
    return (DATA_DIR / f"{code}.txt").read_bytes()


# ---------------------------------------------------------------- corpus


def test_fourteen_languages_in_manifest_order() -> None:
    assert len(LANGUAGES) == 14
    assert tuple(read_manifest()["languages"]) == LANGUAGES
    assert LANGUAGES[:3] == ("arb", "tzm", "zgh")
    assert [language_index(c) for c in LANGUAGES] == list(range(14))
    with pytest.raises(ValueError, match="unknown language 'xxx'"):
        language_index("xxx")
    assert "charlm" in tasks.task_names()
    assert isinstance(tasks.get_task("charlm"), CharLMTask)


def test_json_bundle_matches_text_files_byte_for_byte() -> None:
    bundle = DATA_DIR / BUNDLE_FILE
    assert bundle.is_file(), "regenerate with tasks.charlm.write_corpus_bundle()"
    texts = json.loads(bundle.read_text(encoding="utf-8"))["languages"]
    assert list(texts) == list(LANGUAGES)
    for code in LANGUAGES:
        assert texts[code].encode("utf-8") == _raw(code), code
    assert read_corpus() == texts


def test_loader_falls_back_to_text_files_and_rejects_a_stale_bundle(tmp_path: Path) -> None:
    shutil.copytree(DATA_DIR, tmp_path / "udhr", ignore=shutil.ignore_patterns(BUNDLE_FILE))
    data = tmp_path / "udhr"
    from_txt = read_corpus(data)  # no corpus.json: reads the .txt files
    assert from_txt == read_corpus()
    path = write_corpus_bundle(data)
    assert path == data / BUNDLE_FILE and read_corpus(data) == from_txt
    for txt in data.glob("*.txt"):  # the FAB ships only JSON
        txt.unlink()
    assert read_corpus(data) == from_txt
    stale = json.loads(path.read_text(encoding="utf-8"))
    stale["languages"]["eng"] += "x"
    path.write_text(json.dumps(stale), encoding="utf-8")
    with pytest.raises(ValueError, match="'eng' does not match"):
        read_corpus(data)


# ---------------------------------------------------------------- splits and windows


def test_split_is_a_90_10_cut_at_a_character_boundary() -> None:
    for code, (head, tail) in TASK.split_texts().items():
        raw = _raw(code)
        assert head + tail == raw
        assert abs(len(tail) / len(raw) - 0.1) < 0.001, code
        head.decode("utf-8"), tail.decode("utf-8")  # strict: both halves are whole characters
    assert char_boundary("aé".encode(), 2) == 3  # inside "é" moves forward to the boundary
    assert split_bytes(b"abcdefghij", 0.1) == (b"abcdefghi", b"j")
    with pytest.raises(ValueError, match="test_fraction"):
        split_bytes(b"abc", 1.0)


def test_windows_shapes_dtypes_and_disjoint_coverage(splits) -> None:
    train, test = splits
    for ds in (train, test):
        assert isinstance(ds, TokenDataset)
        assert ds.x.dtype == np.uint8 and ds.x.shape[1] == CTX + 1
        assert ds.y.dtype == np.int64 and ds.y.ndim == 1 and len(ds.y) == len(ds.x)
    assert set(np.unique(train.y)) == set(np.unique(test.y)) == set(range(14))
    assert PAD not in train.x  # training windows are never padded
    for code, (head, tail) in TASK.split_texts().items():
        label = language_index(code)
        tr, te = train.x[train.y == label], test.x[test.y == label]
        # training windows: stride context // 2 over the head only, the last one aligned to its end
        assert len(tr) == math.ceil((len(head) - CTX - 1) / (CTX // 2)) + 1
        assert tr[0].tobytes() == head[: CTX + 1] and tr[-1].tobytes() == head[-CTX - 1 :]
        assert all(w.tobytes() in head for w in tr[:: max(1, len(tr) // 20)])
        # test windows: stride context, so their targets spell the tail minus its first byte exactly once
        assert len(te) == math.ceil((len(tail) - 1) / CTX)
        rebuilt = te[0, :1].tobytes() + b"".join(w[1:].tobytes() for w in te)
        assert rebuilt.rstrip(bytes([PAD])) == tail


def test_token_dataset_keeps_integers_and_dataset_still_coerces() -> None:
    ds = TokenDataset(np.arange(12, dtype=np.uint8).reshape(4, 3), np.array([0, 1, 1, 0], dtype=np.int32))
    assert ds.x.dtype == np.uint8 and ds.y.dtype == np.int64
    sub = ds.subset(np.array([1, 3]))
    assert isinstance(sub, TokenDataset) and sub.x.dtype == np.uint8 and sub.y.tolist() == [1, 0]
    with pytest.raises(ValueError, match="token ids"):
        TokenDataset(np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="disagree"):
        TokenDataset(np.zeros((2, 3), dtype=np.uint8), np.zeros(3, dtype=np.int64))
    plain = Dataset(np.arange(6).reshape(3, 2), np.arange(3))
    assert plain.x.dtype == np.float32 and type(plain.subset(np.array([0]))) is Dataset


# ---------------------------------------------------------------- language-group partitions


def test_by_groups_and_its_errors() -> None:
    labels = np.array([0, 1, 2, 3, 1, 0, 4, 2])
    parts = by_groups(labels, [[0, 1], [2], [4]])
    assert [p.tolist() for p in parts] == [[0, 1, 4, 5], [2, 7], [6]]  # label 3 is in no group: left out
    assert [p.tolist() for p in partition(labels, 3, "groups", groups=[[0, 1], [2], [4]])] == [
        p.tolist() for p in parts
    ]
    for groups, message in [
        ([], "at least one group"),
        ([[0], []], "group 1 is empty"),
        ([[0, 1], [1, 2]], "label 1 is in both group 0 and group 1"),
        ([[0], [9]], r"group 1 \(labels \[9\]\) selects no samples"),
        ([[0], ["a"]], "must be integers"),
    ]:
        with pytest.raises(ValueError, match=message):
            by_groups(labels, groups)
    with pytest.raises(ValueError, match="needs groups="):
        partition(labels, 2, "groups")
    with pytest.raises(ValueError, match="2 groups for 3 partitions"):
        partition(labels, 3, "groups", groups=[[0], [1]])


def test_load_partition_by_language_codes(splits, tmp_path: Path) -> None:
    train, _ = splits
    n = len(SCENARIO)
    seen = 0
    for pid, group in enumerate(SCENARIO):
        part = tasks.load_partition("charlm", pid, n, scheme="groups", groups=SCENARIO, seed=0)
        assert isinstance(part, TokenDataset)
        assert {LANGUAGES[i] for i in np.unique(part.y)} == set(group)
        assert len(part) == int(np.isin(train.y, [language_index(c) for c in group]).sum())
        seen += len(part)
    assert seen == len(train)  # the scenario covers all 14 languages
    # codes, indices and lists give the same (cached) partition
    as_ints = tasks.resolve_groups("charlm", [list(g) for g in SCENARIO])
    assert as_ints == TASK.language_groups(SCENARIO) and as_ints[0] == (0, 1, 2)
    by_codes = tasks.partition_indices("charlm", n, "groups", groups=SCENARIO)
    by_ints = tasks.partition_indices(TASK, n, "groups", groups=as_ints)
    assert all(np.array_equal(a, b) for a, b in zip(by_codes, by_ints, strict=True))
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        tasks.load_partition("charlm", 0, 1, scheme="groups", groups=[["xx"]])
    with pytest.raises(ValueError, match="no named labels"):
        tasks.resolve_groups("digits", [["eng"]])
    # deployment files: one .npz per member that load_local reads back
    paths = tasks.export_partitions("charlm", tmp_path, 2, "groups", groups=[["eng", "jam"], ["zgh"]])
    back = TASK.load_local(paths[1])
    assert isinstance(back, TokenDataset) and back.x.dtype == np.uint8
    assert set(back.y.tolist()) == {language_index("zgh")}
    assert len(TASK.load_local(tmp_path / tasks.TEST_FILE)) == len(splits[1])


def test_load_local_rejects_bad_files(tmp_path: Path) -> None:
    good_x = np.zeros((3, CTX + 1), dtype=np.uint8)
    for x, y, message in [
        (good_x.astype(np.float32), np.zeros(3, dtype=np.int64), "integer byte values"),
        (good_x[:, :10], np.zeros(3, dtype=np.int64), rf"shape \(N, {CTX + 1}\)"),
        (good_x.astype(np.int64) + 300, np.zeros(3, dtype=np.int64), r"\[0, 255\]"),
        (good_x, np.full(3, 14), "language labels"),
        (good_x, np.zeros(2, dtype=np.int64), "same, non-zero number"),
    ]:
        path = tmp_path / "bad.npz"
        np.savez(path, x=x, y=y)
        with pytest.raises(ValueError, match=message):
            TASK.load_local(path)


# ---------------------------------------------------------------- model


def test_model_size_init_and_parameter_vector_round_trip() -> None:
    torch.manual_seed(0)
    a = TASK.build_model()
    torch.manual_seed(0)
    b = TASK.build_model()
    torch.manual_seed(1)
    c = TASK.build_model()
    vec = tasks.model_to_vector(a)
    # tied output head: the token embedding is counted (and shipped) once
    assert tasks.num_parameters(a) == sum(p.numel() for p in a.parameters()) == 120_576 == vec.size
    assert np.array_equal(vec, tasks.model_to_vector(b))
    assert not np.array_equal(vec, tasks.model_to_vector(c))
    tasks.vector_to_model(c, vec)
    idx = torch.randint(1, 256, (2, CTX))
    with torch.no_grad():
        assert torch.equal(a(idx), c(idx))
        assert a(idx).shape == (2, CTX, 256)
        # causal: changing a later byte never changes earlier predictions
        later = idx.clone()
        later[:, 40:] = 7
        assert torch.equal(a(idx)[:, :40], a(later)[:, :40])
    with pytest.raises(ValueError, match="context is 64"):
        a(torch.zeros(1, CTX + 1, dtype=torch.int64))


# ---------------------------------------------------------------- training


def test_train_config_steps_and_optimizer_validation() -> None:
    assert TrainConfig().steps == 0 and TrainConfig().optimizer == "sgd"  # old behaviour by default
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adamw"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        TrainConfig(steps=-1)
    params = [nn.Parameter(torch.zeros(2))]
    adamw = make_optimizer(params, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == ADAMW_BETAS
    assert adamw.defaults["weight_decay"] == 0.1
    sgd = make_optimizer(params, TrainConfig(momentum=0.5))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5


def test_minibatches_steps_versus_epochs() -> None:
    epochs = list(minibatches(10, TrainConfig(epochs=2, batch_size=4)))
    assert [b.numel() for b in epochs] == [4, 4, 2, 4, 4, 2]
    steps = list(minibatches(10, TrainConfig(steps=5, batch_size=4, epochs=9)))  # epochs ignored
    assert [b.numel() for b in steps] == [4] * 5
    assert np.bincount(torch.cat(steps).numpy(), minlength=10).tolist() == [2] * 10  # two whole passes
    assert [b.numel() for b in minibatches(3, TrainConfig(steps=2, batch_size=8))] == [3, 3]
    same = list(minibatches(10, TrainConfig(steps=5, batch_size=4, seed=0)))
    other = list(minibatches(10, TrainConfig(steps=5, batch_size=4, seed=1)))
    assert all(torch.equal(a, b) for a, b in zip(steps, same, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(steps, other, strict=True))


def test_train_steps_epochs_and_determinism(splits) -> None:
    train, _ = splits
    small = language_subset(train, "eng")
    torch.manual_seed(0)
    model = TASK.build_model()
    start = tasks.model_to_vector(model)
    res = TASK.train(model, small, TrainConfig(steps=7, batch_size=8, optimizer="adamw", lr=1e-3), CPU)
    assert res.steps == 7 and res.num_examples == len(small) and 0 < res.loss < 6
    after = tasks.model_to_vector(model)
    tasks.vector_to_model(model, start)
    TASK.train(model, small, TrainConfig(steps=7, batch_size=8, optimizer="adamw", lr=1e-3), CPU)
    assert np.array_equal(after, tasks.model_to_vector(model))  # no dropout: bit-reproducible
    tiny = small.subset(np.arange(20))
    res = TASK.train(model, tiny, TrainConfig(epochs=2, batch_size=8), CPU)
    assert res.steps == 2 * math.ceil(20 / 8)
    with pytest.raises(ValueError, match="empty"):
        TASK.train(model, small.subset(np.arange(0)), TrainConfig(), CPU)


def test_short_training_lowers_held_out_bpc(splits) -> None:
    train, test = splits
    langs = [language_index("spa"), language_index("eng")]
    tr = train.subset(np.flatnonzero(np.isin(train.y, langs)))
    te = test.subset(np.flatnonzero(np.isin(test.y, langs)))
    torch.manual_seed(0)
    model = TASK.build_model()
    before = bits_per_char(model, te, CPU)
    assert set(before) == {"spa", "eng"} and all(7.5 < v < 8.5 for v in before.values())
    cfg = TrainConfig(steps=150, batch_size=32, optimizer="adamw", lr=3e-3, seed=0)
    res = TASK.train(model, tr, cfg, CPU)
    after = bits_per_char(model, te, CPU)
    assert res.steps == 150 and res.loss < 2.5
    assert all(v < 4.0 for v in after.values()), after


# ---------------------------------------------------------------- evaluation


class _Uniform(nn.Module):
    """Predicts every byte with probability 1/256: exactly 8 bits per scored byte."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, 256) + self.dummy


def test_bits_per_char_counts_characters_not_bytes(splits) -> None:
    _, test = splits
    bpc = bits_per_char(_Uniform(), test, CPU)
    assert list(bpc) == list(LANGUAGES)
    for code, (_, tail) in TASK.split_texts().items():
        scored = tail[1:]  # the first test byte is context only
        chars = sum(1 for b in scored if b & 0xC0 != 0x80)
        assert bpc[code] == pytest.approx(8 * len(scored) / chars, rel=1e-6)
    assert bpc["eus"] == pytest.approx(8.0)  # pure ASCII
    assert bpc["zgh"] > 2.0 * 8 and bpc["arb"] > 1.5 * 8  # Tifinagh: 3 bytes/char, Arabic: ~2
    ev = TASK.evaluate(_Uniform(), test, CPU)
    assert ev.loss == pytest.approx(math.log(256))
    assert ev.num_examples == sum(len(tail) - 1 for _, tail in TASK.split_texts().values())


def test_bpc_helpers_agree_for_a_real_model(splits) -> None:
    _, test = splits
    torch.manual_seed(0)
    model = TASK.build_model()
    bpc = TASK.bits_per_char(model, test, CPU)
    assert set(bpc) == set(LANGUAGES) and all(v > 0 for v in bpc.values())
    assert language_bpc(model, test, "kri", CPU) == pytest.approx(bpc["kri"])
    with pytest.raises(ValueError, match="no windows of language 'kri'"):
        language_bpc(model, language_subset(test, "eng"), "kri", CPU)
    ev = TASK.evaluate(model, test, CPU)
    assert 0 <= ev.accuracy <= 1 and ev.loss > 0
