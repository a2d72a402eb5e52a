"""User mistakes get one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloom.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def scenario(tmp_path: Path, text: str) -> str:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[task]\nname = "no-such-task"\n', "unknown task 'no-such-task'"),
        ("participants = 0\n", "participants must be at least 1"),
        ("[task]\nalpha = 0.0\n", "task.alpha must be > 0"),
        ("[task]\nalpha = -1\n", "task.alpha must be > 0"),
        ("participants = 5000\n", "5000 participants but only 1437 training samples"),
        ("[training]\nepoch = 3\n", "unknown key 'epoch' in [training]"),
        ('rounds = "ten"\n', "rounds must be an integer"),
        ("rounds = [\n", "invalid TOML"),
        ('[strategy]\nname = "sgd"\n', "strategy.name must be one of"),
        ("participants = 2\n[secure]\nenabled = true\n", "needs at least secure.min_cohort = 3 participants"),
    ],
)
def test_bad_scenarios_are_one_line_errors(tmp_path, text, needle):
    result = run("simulate", scenario(tmp_path, text))
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_missing_scenario_file(tmp_path):
    result = run("simulate", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "scenario file not found" in result.output


def test_unknown_builtin_scenario():
    result = run("simulate", "no-such-scenario")
    assert result.exit_code == 2
    assert "unknown scenario 'no-such-scenario'" in result.output and "default" in result.output


def test_impossible_override():
    result = run("simulate", "--participants", "0")
    assert result.exit_code == 2
    assert "participants must be at least 1" in result.output


def test_real_process_exit_code_and_single_line(tmp_path):
    """The installed console script, as a user runs it."""
    bad = scenario(tmp_path, "[task]\nalpha = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedloom.cli", "simulate", bad], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
