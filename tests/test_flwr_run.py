"""Flower's own tooling accepts fedloom as an app: `flwr run .` on a local simulation connection.

`flwr run` exits 0 even when the run it streamed failed (issue 17: a ClientApp import race made the
simulation exit with Flower's code 700): the test reads Flower's own exit status from the log.
"""

from __future__ import annotations

import json
import re

import pytest
from shared_runs import FLWR_PARTICIPANTS, FLWR_ROUNDS
from sockets import assert_loopback_only

from fedloom.processes import flower_exit_code

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What `flwr run --stream` printed when the ServerApp raised (trimmed; Flower 1.41, run by hand)
FAILED_RUN_LOG = """\
\x1b[92mINFO \x1b[0m:      Starting Flower Simulation
\x1b[91mERROR \x1b[0m:     Simulation raised an exception
Traceback (most recent call last):
  File "/tmp/home/apps/fedloom.fedloom.0.1.0.905ce879/simulations/scenario.py", line 130, in load_scenario
    raise UserError(
fedloom.errors.UserError: unknown scenario 'no-such-scenario': not a file, and built-in scenarios are default
\x1b[91mERROR \x1b[0m:     Exit Code: 700

An unhandled exception occurred when running the simulation.

For more information, visit: <https://flower.ai/docs/framework/1.41/en/ref-exit-codes/700.html>
"""


def _flower_error(output: str, limit: int = 6000) -> str:
    """Flower's error as it logged it: from its first ERROR line on (the traceback, then the exit code)."""
    text = ANSI.sub("", output)
    start = text.find("ERROR")
    return (text[start:] if start >= 0 else text)[-limit:]


def _assert_flower_succeeded(output: str) -> None:
    code, detail = flower_exit_code(output)
    reason = " ".join(line.strip() for line in detail if line.strip())
    assert code is None, f"Flower exit code {code} ({reason}):\n{_flower_error(output)}"


def test_flower_exit_status_is_read_from_the_log():
    code, detail = flower_exit_code(FAILED_RUN_LOG)
    assert code == 700 and "An unhandled exception occurred when running the simulation." in detail
    assert flower_exit_code(FAILED_RUN_LOG.split("\x1b[91mERROR")[0]) == (None, [])
    try:
        _assert_flower_succeeded(FAILED_RUN_LOG)
    except AssertionError as err:
        assert "Flower exit code 700" in str(err) and "UserError: unknown scenario" in str(err)
    else:
        raise AssertionError("a log with Flower's exit code 700 passed as a success")


@pytest.mark.slow
def test_flwr_run_local_simulation(flwr_local_run):
    """The session's `flwr run APP local --stream` (tests/shared_runs.py): exit 0, Flower's own status
    in the log says success, the run finished with every member, and nothing of it is left running."""
    run = flwr_local_run
    output = run.output
    assert run.returncode == 0, output[-3000:]
    _assert_flower_succeeded(output)
    assert (run.out / "summary.json").exists(), f"no summary.json; Flower's log ends:\n{_flower_error(output)}"
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["rounds_completed"] == FLWR_ROUNDS and summary["participants_connected"] == FLWR_PARTICIPANTS
    assert summary["final"]["accuracy"] is not None
    # fedloom's own INFO lines (stages, rounds, the end) reach the stream, as README says
    assert f"fedloom: round 1 · train + mask: asked {FLWR_PARTICIPANTS}" in output, output[-3000:]
    assert f"fedloom: round {FLWR_ROUNDS} done in " in output
    assert f"fedloom: done: {FLWR_ROUNDS} of {FLWR_ROUNDS} rounds completed" in output
    assert not run.leftovers  # `flwr run` leaves its local SuperLink running: the fixture stopped it


@pytest.mark.slow
def test_flwr_run_local_simulation_listens_on_loopback_only(flwr_local_run):
    """`flwr run . local` (the session's run, tests/shared_runs.py): Flower's own local SuperLink
    (detached, so found by its FLWR_HOME) and the Ray its simulation process starts."""
    run = flwr_local_run
    assert run.returncode == 0 and (run.out / "summary.json").exists(), run.output[-3000:]
    assert not run.leftovers
    assert_loopback_only(run.listeners, run.log, ("flower-superlink", "flwr-simulation", "gcs_server", "raylet"))
