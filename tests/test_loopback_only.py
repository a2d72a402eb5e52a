"""Nothing a simulation starts listens beyond loopback (issue 12, item 3).

Ray runs code for whoever connects to it, and on Linux it listens on every interface unless it is
put in single-machine mode (`fedloom.localray`). Each test runs a real small simulation through one
of the three ways fedloom starts Ray, samples the listening sockets of the whole process tree while
it runs (Ray's gcs_server, raylet, agents and workers included) and requires every one on loopback.
The children get the test's environment WITHOUT the Ray variables fedloom sets, so what is checked
is that fedloom sets them itself. The `fedloom simulate` and `flwr run` runs are the session's shared
ones (tests/shared_runs.py), whose outputs other modules check.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import sockets
from shared_runs import child_env, run_watched


def assert_loopback_only(seen: list[sockets.Listener], log: Path, components: Iterable[str]) -> None:
    commands = sockets.listening_commands(seen)
    for name in components:  # not vacuous: Ray really ran and was seen listening
        assert name in commands, f"{name} never seen listening; log tail:\n{log.read_text(errors='replace')[-3000:]}"
    exposed = sockets.not_loopback(seen)
    assert not exposed, "listening beyond loopback:\n" + "\n".join(map(str, exposed))


def test_ray_keeps_a_loopback_node_address():
    """The lever itself: with fedloom imported, Ray no longer rewrites 127.0.0.1 to the machine's address."""
    from ray._private import services

    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"


@pytest.mark.slow
def test_fedloom_simulate_listens_on_loopback_only(simulate_run):
    """`fedloom simulate` (the session's run, tests/shared_runs.py): Ray and every simulation component."""
    assert simulate_run.returncode == 0, simulate_run.output[-3000:]
    assert_loopback_only(simulate_run.listeners, simulate_run.log, ("gcs_server", "raylet", "ray::RuntimeEnvAgent"))


@pytest.mark.slow
def test_bench_flower_run_listens_on_loopback_only(tmp_path):
    """The one place `fedloom bench` starts Ray itself: `bench flower`'s run of Flower's own stack, in a child
    process with its own init args (`bench rounds`/`profile` and fedloom's side of `bench flower` go through
    `simulations.runner`, checked above). Plain, n = 3, d = 1000, 2 rounds: the smallest run it makes."""
    code = (
        "from console.bench.flower import run_flower\n"
        "r = run_flower(3, 1000, 2, secure=False, timeout=540)\n"
        "assert r['status'] == 'ok', r\n"
    )
    log = tmp_path / "bench.log"
    rc, seen = run_watched([sys.executable, "-c", code], child_env(), log, timeout=600)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    assert_loopback_only(seen, log, ("gcs_server", "raylet", "console.bench.flower --worker"))


@pytest.mark.slow
def test_flwr_run_local_simulation_listens_on_loopback_only(flwr_local_run):
    """`flwr run . local` (the session's run, tests/shared_runs.py): Flower's own local SuperLink
    (detached, so found by its FLWR_HOME) and the Ray its simulation process starts."""
    run = flwr_local_run
    assert run.returncode == 0 and (run.out / "summary.json").exists(), run.output[-3000:]
    assert not run.leftovers
    assert_loopback_only(run.listeners, run.log, ("flower-superlink", "flwr-simulation", "gcs_server", "raylet"))
