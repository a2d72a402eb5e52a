"""Nothing a simulation starts listens beyond loopback (issue 12, item 3).

Ray runs code for whoever connects to it, and on Linux it listens on every interface unless it is
put in single-machine mode (`fedloom.localray`). Each test runs a real small simulation through one
of the three ways fedloom starts Ray, samples the listening sockets of the whole process tree while
it runs (Ray's gcs_server, raylet, agents and workers included) and requires every one on loopback.
The children get the test's environment WITHOUT the Ray variables fedloom sets, so what is checked
is that fedloom sets them itself. The `fedloom simulate` and `flwr run` runs are checked the same way
beside the other checks of those runs (tests/test_simulation_e2e.py, tests/test_flwr_run.py): each
is started once, and xdist keeps a file's tests on one worker.
"""

from __future__ import annotations

import os
import sys

import pytest
from shared_runs import child_env, run_watched
from sockets import assert_loopback_only


def test_ray_keeps_a_loopback_node_address():
    """The lever itself: with fedloom imported, Ray no longer rewrites 127.0.0.1 to the machine's address."""
    from ray._private import services

    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"


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
