"""Flower runs that several test modules assert on, started once per test session.

Starting Flower (Ray, and for `flwr run` a local SuperLink) costs tens of seconds on a 2-core CI
box, so a run that one module checks for its outputs is the same run another checks for what it
listened on. Each run samples the listening sockets of its whole process tree while it runs, and
gets the test's environment WITHOUT the Ray variables fedloom sets (so fedloom must set them itself).
conftest.py makes the fixtures below visible to every module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sockets

from fedloom.appbundle import stage_app_bundle
from fedloom.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY_VARIABLES = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")  # what fedloom.localray sets
E2E_SCENARIO = (
    'name = "e2e"\nparticipants = 4\nrounds = 3\n[task]\nname = "digits"\npartition = "dirichlet"\nalpha = 0.5\n'
    "[training]\nepochs = 2\n[secure]\nenabled = false\n"
)
FLWR_ROUNDS, FLWR_PARTICIPANTS = 2, 3
# `flwr run` gives its local SuperLink a fixed 15 s to start (Flower 1.41); a loaded 2-core box can miss it
SUPERLINK_SLOW_START = "Failed to start local SuperLink within"


@dataclass(frozen=True)
class WatchedRun:
    """A finished run: its exit code, its combined stdout/stderr, where it wrote, what it listened on."""

    returncode: int
    log: Path
    out: Path
    listeners: list[sockets.Listener]
    leftovers: list[int]  # processes of the run still alive after it was cleaned up (should be none)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


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


def stop_mentioning(text: str) -> list[int]:
    """`flwr run` leaves its local SuperLink running: stop the processes of this run's FLWR_HOME;
    returns those still alive afterwards."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in sockets.processes_mentioning(text):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 20
        while sockets.processes_mentioning(text) and time.time() < deadline:
            time.sleep(0.5)
    return sockets.processes_mentioning(text)


@pytest.fixture(scope="session")
def simulate_run(tmp_path_factory) -> WatchedRun:
    """`fedloom simulate --baseline`: 4 members, 3 plaintext rounds on Flower's Simulation Engine
    (tests/test_simulation_e2e.py checks its outputs, tests/test_loopback_only.py its sockets)."""
    root = tmp_path_factory.mktemp("simulate-run")
    (root / "s.toml").write_text(E2E_SCENARIO)
    out, log = root / "run", root / "simulate.log"
    cmd = [sys.executable, "-m", "console.cli", "simulate", str(root / "s.toml"), "--baseline", "--out", str(out)]
    rc, seen = run_watched(cmd, child_env(), log, timeout=900)  # a safety net, generous for a loaded box
    return WatchedRun(rc, log, out, seen, [])


@pytest.fixture(scope="session")
def flwr_local_run(tmp_path_factory) -> WatchedRun:
    """`flwr run APP local --stream` on a private FLWR_HOME (APP: the checkout's bundle files, what
    `flwr run .` bundles): Flower's own tooling running fedloom, 3 members, 2 rounds
    (tests/test_flwr_run.py checks the run, tests/test_loopback_only.py its sockets)."""
    root = tmp_path_factory.mktemp("flwr-run")
    home = root / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    env = child_env(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        # our own local SuperLink, not one another `flwr run` on this machine left on Flower's fixed 39091/39093
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
    )
    out, log = root / "out", root / "flwr.log"
    config = f'rounds={FLWR_ROUNDS} participants={FLWR_PARTICIPANTS} out-dir="{out}"'
    # the checkout's bundle files, as `flwr run .` bundles them, without the virtualenv Flower would walk
    app = root / "app"
    stage_app_bundle(ROOT, app)
    cmd = [str(BIN / "flwr"), "run", str(app), "local", "--run-config", config]
    cmd += ["--federation-config", f"num-supernodes={FLWR_PARTICIPANTS}", "--stream"]
    for attempt in (1, 2):
        try:
            rc, seen = run_watched(cmd, env, log, timeout=400, extra_roots=[str(home)])
        finally:
            leftovers = stop_mentioning(str(home))
        if attempt == 2 or SUPERLINK_SLOW_START not in log.read_text(errors="replace"):
            break
        log.rename(log.with_suffix(".first-try.log"))  # kept for the record; the run itself is retried once
    return WatchedRun(rc, log, out, seen, leftovers)
