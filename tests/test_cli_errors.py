"""User mistakes get one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import os
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


CRASHING_CLI = """
import sys
import fedloom.cli as cli

def crash():
    private_key_pem = "SENTINEL-" + "9f3c" * 4  # a secret in a local variable of the failing frame
    raise RuntimeError("an unexpected failure")

cli.app.command("crash")(crash)
cli.coordinator_app.command("crash")(crash)
sys.argv = ["fedloom", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.parametrize("argv", [["crash"], ["coordinator", "crash"]])
def test_an_unexpected_error_does_not_print_local_variables(argv):
    """Typer's rich traceback shows locals by default: here that would print a private key."""
    env = {k: v for k, v in os.environ.items() if "TYPER" not in k}
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_CLI, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "an unexpected failure" in out, out[-3000:]
    assert "SENTINEL" not in out, out[-3000:]
    debug = subprocess.run(
        [sys.executable, "-c", CRASHING_CLI, "--debug", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert "SENTINEL" in debug.stdout + debug.stderr  # --debug is the developer's explicit choice
