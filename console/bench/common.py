"""What every `fedloom bench` section shares: statistics, machine notes, JSON documents, table cells.

Conventions (all sections): a figure `x` is the median of several runs and comes with `x_min` and
`x_max`; a ratio is computed inside one run (from measurements taken side by side, never across
two invocations); JSON holds every row with its full precision, the table rounds.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def stats(prefix: str, values: Sequence[float]) -> dict[str, float]:
    """{prefix: median, prefix_min: min, prefix_max: max} (an empty sequence gives Nones)."""
    vals = [float(v) for v in values]
    if not vals:
        return {prefix: None, f"{prefix}_min": None, f"{prefix}_max": None}  # type: ignore[dict-item]
    return {prefix: statistics.median(vals), f"{prefix}_min": min(vals), f"{prefix}_max": max(vals)}


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (perf_counter)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, load when the section started, library versions."""
    import numpy as np

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    for mod in ("cryptography", "flwr", "ray", "torch"):
        with contextlib.suppress(Exception):  # a missing optional library is just not reported
            info[mod] = __import__(mod).__version__
    return info


def document(section: str, rows: list[dict[str, Any]], argv: Sequence[str] | None, **extra: Any) -> dict[str, Any]:
    """The JSON document a section writes: what ran, where, and every row."""
    cmd = "fedloom bench " + section + ("" if not argv else " " + " ".join(argv))
    return {"section": section, "command": cmd, "machine": machine(), **extra, "rows": rows}


def write_json(path: str | None, doc: dict[str, Any]) -> None:
    """Write `doc` to `path` ('-' = stdout); nothing when path is None."""
    if not path:
        return
    text = json.dumps(doc, indent=1, sort_keys=True, default=_jsonable)
    if path == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(path).write_text(text + "\n")


def _jsonable(o: object) -> object:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()  # type: ignore[union-attr]
    if isinstance(o, set | tuple):
        return sorted(o) if isinstance(o, set) else list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def console(json_to_stdout: bool = False):
    """A rich console; on stderr when the JSON goes to stdout; wide when not a terminal."""
    from rich.console import Console

    return Console(stderr=json_to_stdout, width=None if sys.stdout.isatty() else 170)


def span(row: dict[str, Any], key: str, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """'median' over a dim 'min-max' line, for a table cell ('-' when absent)."""
    v = row.get(key)
    if v is None:
        return "-"
    lo, hi = row.get(f"{key}_min"), row.get(f"{key}_max")
    out = fmt.format(v * scale)
    if lo is not None and hi is not None:
        out += f"\n[dim]{fmt.format(lo * scale)}-{fmt.format(hi * scale)}[/dim]"
    return out


def fmt_d(d: int) -> str:
    """10^k as 1e{k}, anything else as is."""
    k = len(str(d)) - 1
    return f"1e{k}" if d == 10**k else str(d)


def header_lines(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    load = m.get("load_average")
    return [
        f"[bold]{doc['command']}[/bold]  ({m['date']})",
        f"machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; load average at start "
        f"{load if load else '?'}; python {m['python']}, numpy {m['numpy']}, cryptography "
        f"{m.get('cryptography', '?')}, flwr {m.get('flwr', '?')}",
    ]
