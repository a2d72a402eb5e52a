"""Flower's own tooling accepts fedloom as an app: `flwr run .` on a local simulation connection.

`flwr run` exits 0 even when the run it streamed failed (issue 17: a ClientApp import race made the
simulation exit with Flower's code 700): the test reads Flower's own exit status from the log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedloom.processes import flower_exit_code, free_port

ROOT = Path(__file__).resolve().parents[1]
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


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


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


def test_flwr_run_local_simulation(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    out = tmp_path / "out"
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        RAY_USAGE_STATS_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        # our own local SuperLink, not one another `flwr run` on this machine left on the default 39091
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    cmd = [
        "flwr",
        "run",
        ".",
        "local",
        "--run-config",
        f'rounds=2 participants=3 out-dir="{out}"',
        "--federation-config",
        "num-supernodes=3",
        "--stream",
    ]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]
        _assert_flower_succeeded(output)
        assert (out / "summary.json").exists(), f"no summary.json; Flower's log ends:\n{_flower_error(output)}"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds_completed"] == 2 and summary["participants_connected"] == 3
        assert summary["final"]["accuracy"] is not None
        # fedloom's own INFO lines (stages, rounds, the end) reach the stream, as README says
        assert "fedloom: round 1 · train + mask: asked 3" in output, output[-3000:]
        assert "fedloom: round 2 done in " in output
        assert "fedloom: done: 2 of 2 rounds completed" in output
    finally:
        # `flwr run` leaves its auto-started SuperLink running: stop the one under this FLWR_HOME
        for pid in _processes_mentioning(str(home)):
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 20
        while _processes_mentioning(str(home)) and time.time() < deadline:
            time.sleep(0.5)
        for pid in _processes_mentioning(str(home)):
            os.kill(pid, signal.SIGKILL)
    assert not _processes_mentioning(str(home))
