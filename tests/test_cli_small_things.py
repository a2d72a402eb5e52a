"""Small things a user notices (issue 13, item 6): versions, -h, argument help, built-in scenarios in
help, a progress bar that counts rounds, a readable hand-out table, data scaled unlike the task expects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.text import Text

import tasks
from fedloom.plan import Plan
from tasks.base import Dataset, range_warning

ROOT = Path(__file__).resolve().parents[1]
FEDLOOM = [sys.executable, "-m", "console.cli"]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDLOOM, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="80", **env)
    )


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    from importlib.metadata import version

    proc = cli(flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"fedloom {version('fedloom')} (flwr {version('flwr')}, torch ")
    assert "python 3." in proc.stdout


@pytest.mark.parametrize("args", [["-h"], ["simulate", "-h"], ["coordinator", "start", "-h"], ["status", "-h"]])
def test_h_is_help(args):
    proc = cli(*args)
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr


def test_positional_arguments_are_described_and_builtin_scenarios_listed():
    simulate = " ".join(cli("simulate", "-h").stdout.split())
    assert "Scenario TOML file(s), or built-ins:" in simulate
    for name in ("default", "faults", "tapestry", "attack-replay"):
        assert name in simulate
    assert "The federation file" in " ".join(cli("provision", "-h").stdout.split())
    assert "A ledger file, or a directory" in " ".join(cli("ledger", "verify", "-h").stdout.split())


def test_the_progress_bar_counts_rounds_not_rounds_plus_one():
    from console.cli import RichObserver

    plan = Plan(rounds=3)
    observer = RichObserver()
    observer.started(plan, 3)
    shown = []
    for r in range(plan.rounds + 1):  # row 0 is the initial model's evaluation
        observer.round_done({"round": r, "eval_accuracy": 0.5, "skipped": "[cohort.too-small] x" if r == 2 else None})
        shown.append(Text.from_markup(observer.progress.tasks[0].description).plain)
    task = observer.progress.tasks[0]
    observer.finished({})
    assert task.total == 3 and task.completed == 3
    assert "(round skipped: [cohort.too-small] x)" in shown[2]  # escaped: rich does not eat the rule name


def test_provision_hand_out_table_is_readable_at_80_columns(tmp_path):
    fed = tmp_path / "federation.toml"
    members = "".join(f'[[members]]\nname = "hospital-of-lima-{i}"\ncountry = "PE"\n' for i in range(3))
    fed.write_text(f'[federation]\nname = "t"\naddress = "127.0.0.1:9092"\n{members}[plan]\nrounds = 1\n')
    out = tmp_path / "a" / "rather" / "deep" / "place" / "for" / "the" / "kits"
    proc = cli("provision", str(fed), "--out", str(out), "--app", str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = [line for line in proc.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= 80 for line in table)
    assert "…" not in proc.stdout  # nothing cut off
    cells = " ".join(proc.stdout.split())
    assert f"kits in {out}" in cells
    for i in range(3):
        assert f"hospital-of-lima-{i}/" in cells


def test_data_far_outside_the_expected_range_gets_a_warning():
    task = tasks.get_task("digits")
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    y = np.arange(20) % 10
    assert range_warning(task, Dataset(x, y), "train.npz") is None
    warning = range_warning(task, Dataset(x * 255, y), "train.npz")
    assert warning is not None and "expects 0 to 1" in warning and "train.npz" in warning


def test_participant_start_says_so_in_its_log(tmp_path, caplog):
    import logging

    from participant.local_data import LocalData
    from participant.service import _warn_about_scale

    x = np.full((10, 1, 8, 8), 200.0, dtype=np.float32)
    local = LocalData(Dataset(x, np.arange(10) % 10), Dataset(x[:2] / 255, np.arange(2)))
    with caplog.at_level(logging.WARNING, logger="fedloom.participant"):
        _warn_about_scale("digits", local, tmp_path / "data")
    assert "(training data): inputs range from 200 to 200" in caplog.text
    assert "(test data)" not in caplog.text


def test_member_data_export_matches_what_participant_start_and_compose_take(tmp_path):
    """README's rehearsal command: <out>/<member>/train.npz + test.npz, which `--data DIR` loads."""
    from participant.local_data import from_path

    dirs = tasks.export_member_data("digits", tmp_path / "data", ["morocco", "peru", "vietnam"])
    assert [d.name for d in dirs] == ["morocco", "peru", "vietnam"]
    sizes = []
    for d in dirs:
        local = from_path("digits", str(d))
        assert len(local.train) > 0 and len(local.test) > 0
        assert range_warning(tasks.get_task("digits"), local.train, str(d)) is None
        sizes.append(len(local.train))
    assert sum(sizes) == 1437  # the digits training pool, split without overlap
    readme = (ROOT / "README.md").read_text()
    assert "tasks.export_member_data('digits', 'data', ['morocco', 'peru', 'vietnam'])" in readme
    assert "participant-<i>.npz" not in readme and "export_partitions('digits', 'data'" not in readme
