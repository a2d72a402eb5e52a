"""Partitioners: disjoint, covering, deterministic, skewed when asked, and strict about input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from tasks.partition import dirichlet, iid, label_shards, label_skew, partition

# 10 balanced classes, shuffled so that no partitioner can rely on the input being sorted.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 200))


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    for p in parts:
        assert p.dtype.kind == "i"
        assert np.all(np.diff(p) > 0), "each partition must be sorted and duplicate-free"
    joined = np.concatenate(parts)
    assert joined.size == np.unique(joined).size, "partitions overlap"
    assert np.array_equal(np.sort(joined), np.arange(n)), "partitions do not cover the input"


def test_iid_sizes_balanced_and_cover() -> None:
    parts = iid(1003, 10, seed=0)
    assert len(parts) == 10
    assert {p.size for p in parts} == {100, 101}
    assert_disjoint_cover(parts, 1003)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_scheme_is_disjoint_and_covers(scheme: str) -> None:
    parts = partition(LABELS, 10, scheme, seed=1)
    assert len(parts) == 10
    assert all(p.size > 0 for p in parts)
    assert_disjoint_cover(parts, LABELS.size)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_deterministic_by_seed(scheme: str) -> None:
    a = partition(LABELS, 8, scheme, seed=7)
    b = partition(LABELS, 8, scheme, seed=7)
    c = partition(LABELS, 8, scheme, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_small_alpha_is_clearly_skewed() -> None:
    iid_skew = label_skew(LABELS, partition(LABELS, 10, "iid", seed=0))
    dir_skew = label_skew(LABELS, partition(LABELS, 10, "dirichlet", alpha=0.1, seed=0))
    big_alpha = label_skew(LABELS, partition(LABELS, 10, "dirichlet", alpha=1000.0, seed=0))
    assert iid_skew < 0.15
    assert big_alpha < 0.15  # alpha -> infinity approaches IID
    assert dir_skew > 0.4
    assert dir_skew > 3 * iid_skew


def test_dirichlet_sizes_vary_and_respect_min_size() -> None:
    parts = dirichlet(LABELS, 20, alpha=0.1, seed=3, min_size=25)
    sizes = [p.size for p in parts]
    assert min(sizes) >= 25
    assert max(sizes) > 2 * min(sizes)


@pytest.mark.parametrize("shards_per_partition", [1, 2, 3])
def test_shards_hold_at_most_shards_per_partition_labels(shards_per_partition: int) -> None:
    parts = label_shards(LABELS, 10, shards_per_partition, seed=5)
    assert_disjoint_cover(parts, LABELS.size)
    assert max(np.unique(LABELS[p]).size for p in parts) <= shards_per_partition
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= shards_per_partition  # shards are nearly equal


def test_shards_with_unbalanced_classes() -> None:
    labels = np.array([0] * 500 + [1] * 30 + [2] * 7 + [3] * 1)
    parts = label_shards(labels, 5, 2, seed=0)
    assert_disjoint_cover(parts, labels.size)
    assert max(np.unique(labels[p]).size for p in parts) <= 2


def test_label_skew_values() -> None:
    labels = np.array([0, 0, 1, 1])
    assert label_skew(labels, [np.array([0, 2]), np.array([1, 3])]) == 0.0
    assert label_skew(labels, [np.array([0, 1]), np.array([2, 3])]) == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        label_skew(labels, [np.array([], dtype=np.int64)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid(10, 0, seed=0), "num_partitions"),
        (lambda: partition(LABELS, 0, "dirichlet"), "num_partitions"),
        (lambda: iid(5, 6, seed=0), "cannot split 5 samples"),
        (lambda: partition(LABELS[:5], 6, "shards"), "cannot split 5 samples"),
        (lambda: dirichlet(LABELS, 4, alpha=0.0, seed=0), "alpha"),
        (lambda: partition(LABELS, 4, "dirichlet", alpha=-1.0), "alpha"),
        (lambda: partition(LABELS, 4, "random"), "unknown partition scheme 'random'"),
        (lambda: dirichlet(LABELS[:50], 10, alpha=1.0, seed=0, min_size=10), "min_size=10"),
        (lambda: label_shards(LABELS, 2, 2, seed=0), "at least one shard per class"),
        (lambda: label_shards(LABELS[:30], 10, 4, seed=0), "40 non-empty shards"),
        (lambda: label_shards(LABELS, 2, 0, seed=0), "shards_per_partition"),
        (lambda: partition(LABELS.reshape(2, -1), 2, "iid"), "1-D"),
        (lambda: partition(LABELS.astype(float), 2, "iid"), "integers"),
    ],
)
def test_bad_input_raises_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_dirichlet_gives_up_after_bounded_tries() -> None:
    # Two classes and a tiny alpha put each class almost entirely into one partition, so at most
    # two of the five partitions can ever reach min_size.
    labels = np.repeat([0, 1], 100)
    with pytest.raises(ValueError, match="tries"):
        dirichlet(labels, 5, alpha=1e-3, seed=0, min_size=10)


@settings(max_examples=examples(60))
@given(
    n=st.integers(1, 300),
    num_classes=st.integers(1, 12),
    k_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_property_disjoint_and_covering(
    n: int, num_classes: int, k_frac: float, seed: int, data: st.DataObject
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)
    k = max(1, round(k_frac * n))
    assert_disjoint_cover(iid(n, k, seed), n)
    assert_disjoint_cover(dirichlet(labels, k, alpha=0.5, seed=seed, min_size=0), n)
    s = data.draw(st.integers(1, 4))
    if np.unique(labels).size <= k * s <= n:
        parts = label_shards(labels, k, s, seed)
        assert_disjoint_cover(parts, n)
        assert all(p.size > 0 for p in parts)
        assert max(np.unique(labels[p]).size for p in parts) <= s
