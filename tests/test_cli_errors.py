"""User mistakes get one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from console.cli import app

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


def test_several_scenarios_are_all_checked_before_any_starts(tmp_path):
    """`fedloom simulate A B`: a bad B or a name given twice is one line before A starts (no outputs)."""
    result = run("simulate", "attack-overlap", "no-such-scenario", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "unknown scenario 'no-such-scenario'" in result.output
    result = run("simulate", "attack-overlap", "attack-replay", "attack-overlap", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "scenario name(s) given twice: attack-overlap (each run writes OUT/<name>)" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.json"))


def test_real_process_exit_code_and_single_line(tmp_path):
    """The installed console script, as a user runs it."""
    bad = scenario(tmp_path, "[task]\nalpha = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "console.cli", "simulate", bad], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


CRASHING_CLI = """
import sys
import time
import console.cli as cli

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


# --- refused before anything starts (issue 13 item 2): one line, exit 2, fast, no Ray, no SuperLink ---------


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if the command gets as far as starting Ray (a simulation) or a SuperLink (a coordinator)."""
    import coordinator.service
    import simulations.runner

    def started(*args, **kwargs):
        raise AssertionError("a user error must be refused before anything starts")

    monkeypatch.setattr(simulations.runner, "run_scenario", started)
    monkeypatch.setattr(simulations.runner, "start_ray", started, raising=False)
    monkeypatch.setattr(coordinator.service, "start", started)


def refused(*args: str, needle: str) -> None:
    t0 = time.monotonic()
    result = run(*args)
    elapsed = time.monotonic() - t0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert elapsed < 20, f"{elapsed:.1f} s: a refusal must not wait for anything"  # loaded CI box: generous


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("participants = 3\n[secure]\nclip = inf\n", "secure.clip must be a finite number (got inf)"),
        ("participants = 3\n[secure]\nclip = nan\n", "secure.clip must be a finite number (got nan)"),
        ("[training]\nlr = inf\n", "training.lr must be a finite number"),
        ("participants = 4\n[secure]\nneighbours = 3\n", "secure.neighbours must be 0"),
        ("participants = 4\n[secure]\nneighbours = 2\n", "secure.neighbours must be 0"),
        ("participants = 3\n[secure]\nmax_weight = -5\n", "secure.max_weight must be 0"),
        ('[task]\nname = "json:dumps"\n', "dumps needs arguments"),
        ('[task]\nname = "collections:OrderedDict"\n', "OrderedDict is not a Task subclass"),
        ('[task]\nname = "os:sep"\n', "is not a Task, class or factory"),
        ("rounds = 1000000000\n", "rounds must be at most 100000"),
    ],
)
def test_impossible_plans_are_refused_before_ray_starts(tmp_path, nothing_starts, text, needle):
    refused("simulate", scenario(tmp_path, text), "--out", str(tmp_path / "out"), needle=needle)


def test_rounds_override_beyond_the_bound(tmp_path, nothing_starts):
    refused("simulate", "--rounds", "100001", "--out", str(tmp_path / "out"), needle="rounds must be at most 100000")


def test_out_that_is_a_file(tmp_path, nothing_starts):
    (tmp_path / "afile").write_text("x")
    refused("simulate", "--out", str(tmp_path / "afile"), needle="is not a directory")


def test_out_that_cannot_be_created(tmp_path, nothing_starts):
    (tmp_path / "afile").write_text("x")
    refused("simulate", "--out", str(tmp_path / "afile" / "run"), needle="cannot create the output directory")


def test_out_without_write_permission(nothing_starts):
    """An existing directory nobody may write into, root included (root ignores a chmod'ed test
    directory's mode bits, but the kernel refuses it a new entry in a process's /proc directory)."""
    locked = Path("/proc/self")
    assert locked.is_dir() and not os.access(locked, os.W_OK), "this test needs a Linux /proc"
    refused("simulate", "--out", str(locked), needle="cannot write to the output directory")


@pytest.mark.parametrize("bind", ["notaport", "host:", ":8443", "host:http", "host:0", "host:70000"])
def test_coordinator_bind_that_is_not_host_port(tmp_path, nothing_starts, bind):
    refused("coordinator", "start", "--kit", str(tmp_path), "--bind", bind, needle="--bind must be HOST:PORT")
