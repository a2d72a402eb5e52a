"""Timestamps of a round trip's steps, for `fedloom bench deployment` (off unless asked for).

A deployment trip crosses several processes (the coordinator's ServerApp, the member's SuperNode,
the ClientApp process Flower starts for each message); to say where a trip's seconds go, each of
them appends one JSON line per step to the file named by `FEDLOOM_TRIP_LOG`: wall-clock time
(`time.time()`, comparable across processes on one machine), pid and the step's name. Without
that variable every call is a no-op, so production runs pay one environment lookup.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "FEDLOOM_TRIP_LOG"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def note(event: str, at: float | None = None, **fields: object) -> None:
    """Append `{"t": at or now, "pid", "event", **fields}` to the trip log, if there is one.

    One short `O_APPEND` write per line, so lines from concurrent processes do not interleave."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"t": time.time() if at is None else at, "pid": os.getpid(), "event": event, **fields})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def process_start_time() -> float | None:
    """When this process started (epoch seconds, 10 ms resolution), from its start tick in /proc
    and the uptime (the boot time in /proc/stat is whole seconds only)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5); fields[0] is field 3
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - started)
    except (OSError, ValueError, IndexError):
        return None


def read(path: Path) -> list[dict]:
    """Every well-formed line of a trip log (a torn last line is skipped)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
