"""`fedloom status STATE_DIR` and `fedloom stop STATE_DIR`: a running coordinator, from another terminal.

Both read only what the coordinator writes in its state directory: status.json (coordinator.journal,
replaced atomically at every event) and service.json (the service's pid and that process's start
time). `stop` sends SIGTERM to that pid only after checking it is still the same process (a pid is
reused once its process is gone) and that it is a `fedloom coordinator start`; the service then stops
the run, the gateway and the SuperLink, and exits 143. Started again, it resumes after the last
checkpointed round.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from fedloom.errors import UserError

from .journal import read_status

SERVICE = "service.json"


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count fields after its ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _state_dir(state_dir: Path) -> Path:
    if not state_dir.is_dir():
        raise UserError(f"{state_dir} is not a directory (give the coordinator's --state-dir, default KIT/state)")
    if not (state_dir / SERVICE).exists() and read_status(state_dir) is None:
        raise UserError(f"{state_dir} is not a coordinator state directory (no {SERVICE}, no status.json)")
    return state_dir


def running_coordinator(state_dir: Path) -> int | None:
    """The pid of the `fedloom coordinator start` serving `state_dir`, if it is still running."""
    try:
        info = json.loads((state_dir / SERVICE).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    started = info.get("pid_started")
    if started is None or process_start_time(pid) != started:
        return None  # gone, or the pid now belongs to another process
    args = _cmdline(pid)
    if "coordinator" not in args or "start" not in args:
        return None
    return pid


def status(state_dir: Path) -> dict[str, Any]:
    """The run's progress as status.json has it, plus whether its coordinator is running now."""
    state_dir = _state_dir(state_dir)
    report = dict(read_status(state_dir) or {"state": "not started"})
    pid = running_coordinator(state_dir)
    report["coordinator_running"] = pid is not None
    if pid is None and report.get("state") in ("starting", "running"):
        report["state"] = "not running (stopped or crashed; start it again to resume)"
    return report


def stop(state_dir: Path, wait: float = 60.0) -> tuple[int, bool]:
    """SIGTERM to the coordinator serving `state_dir`; (its pid, whether it exited within `wait` s)."""
    state_dir = _state_dir(state_dir)
    pid = running_coordinator(state_dir)
    if pid is None:
        raise UserError(f"no coordinator is running for {state_dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process_start_time(pid) is None or _zombie(pid):
            return pid, True
        time.sleep(0.2)
    return pid, False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def status_lines(report: dict[str, Any]) -> list[str]:
    """status.json for people: a few lines."""
    lines = [f"state: {report.get('state')}"]
    if report.get("rounds_planned") is not None:
        lines.append(f"rounds done: {report.get('rounds_done') or 0} of {report['rounds_planned']}")
    if report.get("stage"):
        since = report.get("stage_since")
        ago = f" for {time.time() - since:.0f} s" if isinstance(since, int | float) else ""
        lines.append(f"now: round {report.get('round')} · {report['stage']}{ago}")
        if report.get("awaiting"):
            lines.append(f"awaiting: {', '.join(report['awaiting'])}")
        if report.get("answered"):
            lines.append(f"answered: {', '.join(report['answered'])}")
    for skip in report.get("rounds_skipped", [])[-5:]:
        lines.append(f"round {skip['round']} skipped: {skip['reason']}")
    for ref in report.get("last_refusals", []):
        lines.append(f"round {ref['round']}: {ref['member']} refused: [{ref['rule']}] {ref['reason']}")
    if report.get("message"):
        lines.append(str(report["message"]))
    if report.get("wall_seconds") is not None:
        lines.append(f"wall time so far: {report['wall_seconds']:.0f} s")
    if report.get("out_dir"):
        lines.append(f"outputs: {report['out_dir']}")
    return lines


def finished_run(state: Path, plan_hash: str) -> dict | None:
    """summary.json of a run of this plan that completed in `state` (None: there is work left).

    Started again on a finished state directory the service must not run the final evaluation again
    and overwrite the outputs: it says the run is complete instead."""
    path = state / "outputs" / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if summary.get("plan_hash") != plan_hash or summary.get("interrupted"):
        return None
    return summary


def announce(kit: Path, state_dir: Path) -> list[tuple[str, str]]:
    """Lines (text, style) the console shows before anything starts: plaintext mode, a finished run."""
    from fedloom.plan import Plan

    try:
        plan = Plan.from_json((kit / "plan.json").read_text())
    except (OSError, ValueError):
        return []  # the service names the missing or broken file
    lines = []
    if not plan.secure.enabled:
        lines.append(
            (
                "WARNING: secure aggregation is OFF in this plan: the coordinator sees every member's update "
                "(plaintext mode is for comparison and debugging only)",
                "bold red",
            )
        )
    done = finished_run(state_dir.resolve(), plan.hash)
    if done is not None:
        lines.append((f"the run in {state_dir} is already complete: nothing is run again, no output is rewritten", ""))
    return lines


def closing_line(state_dir: Path, code: int) -> tuple[str, str]:
    """The console's last line for the service's exit code (text, style)."""
    state_dir = state_dir.resolve()
    report = read_status(state_dir) or {}
    if code == 0:
        try:
            summary = json.loads((state_dir / "outputs" / "summary.json").read_text())
        except (OSError, ValueError):
            return "done", "bold green"
        return (
            f"done: {summary.get('rounds_completed')} of {summary.get('rounds_planned')} rounds, "
            f"outputs in {summary.get('out_dir')}",
            "bold green",
        )
    if code == 2:
        return f"refused to go on: {report.get('message', 'see the lines above')}", "bold red"
    if code > 128:
        by = signal.Signals(code - 128).name if code - 128 in signal.valid_signals() else f"signal {code - 128}"
        done = report.get("rounds_done") or 0
        return f"stopped ({by}) after {done} round(s); start it again on {state_dir} to resume", "bold yellow"
    return f"the run failed; see {state_dir / 'logs'} and the lines above", "bold red"
