"""Nothing a simulation starts listens beyond loopback (issue 12, item 3).

Ray runs code for whoever connects to it, and on Linux it listens on every interface unless it is
put in single-machine mode (`fedloom.localray`). Each test runs a real small simulation through one
of the three ways fedloom starts Ray, samples the listening sockets of the whole process tree while
it runs (Ray's gcs_server, raylet, agents and workers included) and requires every one on loopback.
The children get the test's environment WITHOUT the Ray variables fedloom sets, so what is checked
is that fedloom sets them itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import sockets

from fedloom.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY_VARIABLES = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")  # what fedloom.localray sets
SMALL_SCENARIO = (
    'name = "loopback"\nparticipants = 3\nrounds = 1\n[task]\nname = "digits"\n[training]\nepochs = 1\n'
    "[secure]\nenabled = true\nmin_cohort = 3\n"
)


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus what fedloom itself must set (the test process imported fedloom)."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARIABLES}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_watched(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float, extra_roots: Iterable[str] = ()
) -> tuple[int, list[sockets.Listener]]:
    """Run `cmd`, sampling its tree's listeners (and those of processes mentioning `extra_roots`) until it exits."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout

        def roots() -> list[int]:
            return [proc.pid, *(pid for text in extra_roots for pid in sockets.processes_mentioning(text))]

        try:
            seen = sockets.watch(roots, lambda: proc.poll() is None and time.monotonic() < deadline)
        finally:
            if proc.poll() is None:  # out of time: end Ray's processes too (some sit in sessions of their own)
                kill_tree(proc.pid)
            proc.wait()
    return proc.returncode, seen


def kill_tree(root: int) -> None:
    """SIGKILL `root` and every descendant, found before any of them is reparented."""
    for pid in reversed(sockets.descendants(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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
def test_fedloom_simulate_listens_on_loopback_only(tmp_path):
    (tmp_path / "s.toml").write_text(SMALL_SCENARIO)
    cmd = [sys.executable, "-m", "console.cli", "simulate", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")]
    log = tmp_path / "simulate.log"
    rc, seen = run_watched(cmd, child_env(), log, timeout=400)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    assert_loopback_only(seen, log, ("gcs_server", "raylet", "ray::RuntimeEnvAgent"))


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
def test_flwr_run_local_simulation_listens_on_loopback_only(tmp_path):
    """`flwr run . local`: Flower's own local SuperLink (detached, so found by its FLWR_HOME) and the
    Ray its simulation process starts."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    env = child_env(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        # not Flower's fixed 39091/39093: other runs of the suite may hold those
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
    )
    out = tmp_path / "out"
    cmd = [str(BIN / "flwr"), "run", ".", "local", "--run-config", f'rounds=1 participants=3 out-dir="{out}"']
    cmd += ["--federation-config", "num-supernodes=3", "--stream"]
    log = tmp_path / "flwr.log"
    try:
        rc, seen = run_watched(cmd, env, log, timeout=400, extra_roots=[str(home)])
    finally:
        stop_mentioning(str(home))
    assert rc == 0 and (out / "summary.json").exists(), log.read_text(errors="replace")[-3000:]
    assert_loopback_only(seen, log, ("flower-superlink", "flwr-simulation", "gcs_server", "raylet"))


def stop_mentioning(text: str) -> None:
    """`flwr run` leaves its local SuperLink running: stop the processes of this test's FLWR_HOME."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in sockets.processes_mentioning(text):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.time() + 20
        while sockets.processes_mentioning(text) and time.time() < deadline:
            time.sleep(0.5)
    assert not sockets.processes_mentioning(text)
