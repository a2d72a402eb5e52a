"""Split a training pool among participants, IID or with controlled label skew.

Every partitioner is deterministic in ``seed`` (a numpy Generator drives the shuffling; this is
simulation data layout, not security) and returns one sorted index array per participant. The
arrays are pairwise disjoint and together cover every index: ``label_shards`` keeps each shard
inside one label instead of dropping a remainder, so it covers the input too. The exception is
``by_groups`` (scheme ``"groups"``), which assigns whole labels to participants and leaves out the
labels no group names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEMES = ("iid", "dirichlet", "shards", "groups")
DIRICHLET_MAX_TRIES = 100


def _check_count(num_samples: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions > num_samples:
        raise ValueError(f"cannot split {num_samples} samples into {num_partitions} non-empty partitions")


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def iid(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then cut into ``num_partitions`` parts whose sizes differ by at most one."""
    _check_count(num_samples, num_partitions)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(perm, num_partitions)]


def dirichlet(labels: np.ndarray, num_partitions: int, alpha: float, seed: int, min_size: int = 10) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) split (Hsu et al., 2019): small alpha, strong label skew.

    For each class the class's (shuffled) samples are divided according to proportions drawn
    from Dirichlet(alpha, ..., alpha). The whole draw is repeated, at most
    ``DIRICHLET_MAX_TRIES`` times, until every partition holds at least ``min_size`` samples.
    """
    labels = _as_labels(labels)
    _check_count(labels.size, num_partitions)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if num_partitions * min_size > labels.size:
        raise ValueError(
            f"cannot give {num_partitions} partitions at least min_size={min_size} samples "
            f"each from {labels.size} samples"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(DIRICHLET_MAX_TRIES):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for members in by_class:
            shuffled = rng.permutation(members)
            props = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(props)[:-1] * shuffled.size).astype(np.int64)
            for bucket, piece in zip(buckets, np.split(shuffled, cuts), strict=True):
                bucket.append(piece)
        parts = [np.sort(np.concatenate(b)) for b in buckets]
        if min(p.size for p in parts) >= min_size:
            return parts
    raise ValueError(
        f"dirichlet(alpha={alpha}) found no split giving all {num_partitions} partitions "
        f">= min_size={min_size} samples in {DIRICHLET_MAX_TRIES} tries; "
        "raise alpha or lower num_partitions or min_size"
    )


def _shards_per_class(counts: np.ndarray, total: int) -> np.ndarray:
    """Distribute ``total`` shards over classes proportionally (largest remainder), each >= 1."""
    exact = total * counts / counts.sum()
    alloc = np.maximum(1, np.floor(exact)).astype(np.int64)
    while alloc.sum() < total:  # hand out the rest by largest remainder, never exceeding a count
        gap = np.where(alloc < counts, exact - alloc, -np.inf)
        alloc[int(np.argmax(gap))] += 1
    while alloc.sum() > total:  # undo the ">= 1" bumps, taking from the best-provided classes
        surplus = np.where(alloc > 1, alloc - exact, -np.inf)
        alloc[int(np.argmax(surplus))] -= 1
    return alloc


def label_shards(labels: np.ndarray, num_partitions: int, shards_per_partition: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al., 2017): sort by label, cut shards, deal them.

    Unlike the original recipe (equal contiguous shards over the label-sorted order, remainder
    dropped), a shard here never straddles two labels: each class is cut into a number of shards
    proportional to its size. So every partition holds at most ``shards_per_partition`` labels,
    no sample is dropped, and shard sizes differ only slightly. Needs at least one shard per
    class, i.e. ``num_partitions * shards_per_partition >= number of classes``.
    """
    labels = _as_labels(labels)
    _check_count(labels.size, num_partitions)
    if shards_per_partition < 1:
        raise ValueError(f"shards_per_partition must be >= 1, got {shards_per_partition}")
    total = num_partitions * shards_per_partition
    classes, counts = np.unique(labels, return_counts=True)
    if total > labels.size:
        raise ValueError(f"cannot cut {labels.size} samples into {total} non-empty shards")
    if total < classes.size:
        raise ValueError(
            f"{num_partitions} partitions x {shards_per_partition} shards = {total} shards "
            f"cannot cover {classes.size} classes; need at least one shard per class"
        )
    rng = np.random.default_rng(seed)
    shards: list[np.ndarray] = []
    for c, n_shards in zip(classes, _shards_per_class(counts, total), strict=True):
        members = rng.permutation(np.flatnonzero(labels == c))
        shards.extend(np.array_split(members, n_shards))
    deal = rng.permutation(total).reshape(num_partitions, shards_per_partition)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]


def by_groups(labels: np.ndarray, groups: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Partition ``i`` = every index whose label is in ``groups[i]`` (e.g. a member's languages).

    Deterministic without a seed. Labels that no group names are left out. Raises ValueError if
    there is no group, a group names no label or selects no sample, or a label is in two groups.
    """
    labels = _as_labels(labels)
    if len(groups) < 1:
        raise ValueError("groups must name at least one group of labels")
    owner: dict[int, int] = {}
    for i, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not len(group):
            raise ValueError(f"group {i} is empty or not a sequence of labels: {group!r}")
        for label in group:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise ValueError(f"group {i}: labels must be integers, got {label!r}")
            if int(label) in owner and owner[int(label)] != i:
                raise ValueError(f"label {int(label)} is in both group {owner[int(label)]} and group {i}")
            owner[int(label)] = i
    parts = []
    for i, group in enumerate(groups):
        part = np.flatnonzero(np.isin(labels, np.asarray(group, dtype=np.int64)))
        if part.size == 0:
            raise ValueError(f"group {i} (labels {sorted({int(g) for g in group})}) selects no samples")
        parts.append(part)
    return parts


def partition(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    *,
    alpha: float = 0.3,
    shards_per_partition: int = 2,
    seed: int = 0,
    min_size: int = 10,
    groups: Sequence[Sequence[int]] | None = None,
) -> list[np.ndarray]:
    """Dispatch to :func:`iid`, :func:`dirichlet`, :func:`label_shards` or :func:`by_groups` by ``scheme``.

    Scheme ``"groups"`` needs ``groups`` (one sequence of integer labels per partition, so
    ``len(groups) == num_partitions``); the other schemes ignore it.
    """
    labels = _as_labels(labels)
    if scheme == "groups":
        if groups is None:
            raise ValueError("partition scheme 'groups' needs groups= (one list of labels per partition)")
        if len(groups) != num_partitions:
            raise ValueError(f"scheme 'groups' got {len(groups)} groups for {num_partitions} partitions")
        return by_groups(labels, groups)
    if scheme == "iid":
        return iid(labels.size, num_partitions, seed)
    if scheme == "dirichlet":
        return dirichlet(labels, num_partitions, alpha, seed, min_size=min_size)
    if scheme == "shards":
        return label_shards(labels, num_partitions, shards_per_partition, seed)
    raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each partition's label mix and the global one.

    0 means every partition looks like the whole pool; values near 1 mean partitions see almost
    disjoint label sets. Empty partitions are ignored.
    """
    labels = _as_labels(labels)
    classes, global_counts = np.unique(labels, return_counts=True)
    global_dist = global_counts / global_counts.sum()
    distances = []
    for part in parts:
        if len(part) == 0:
            continue
        counts = np.array([np.count_nonzero(labels[part] == c) for c in classes])
        distances.append(0.5 * np.abs(counts / counts.sum() - global_dist).sum())
    if not distances:
        raise ValueError("label_skew needs at least one non-empty partition")
    return float(np.mean(distances))
