"""Flower's own tooling accepts fedloom as an app: `flwr run .` on a local simulation connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds_completed"] == 2 and summary["participants_connected"] == 3
        assert summary["final"]["accuracy"] is not None
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
