"""Ctrl-C and SIGTERM for `fedloom simulate`: stop within seconds, keep what exists, leave nothing behind.

Where things run: Flower's Simulation Engine runs the ServerApp (our coordinator loop) in a thread of
this process and keeps the main thread inside its own runtime loop; the ClientApps run in Ray actors
(worker processes under a raylet and a GCS server this process started). Python's default SIGINT
handling raises KeyboardInterrupt in the main thread: Flower then shuts Ray down while the
coordinator thread waits out a 600 s timeout per stage; SIGTERM met Ray's own handlers (a stack dump,
exit 134) and left no outputs.

So, while a simulation runs:
- the first SIGINT/SIGTERM only sets coordinator.stop.STOP; the coordinator loop notices it at its
  next poll, writes metrics.jsonl, the last model, summary.json ("interrupted": true) and the plot,
  and returns; Flower then stops Ray as after a normal run. The CLI exits 128 + the signal number.
- Flower's teardown waits for the ClientApp calls in flight (mid-round, a whole local training);
  if it has not ended `SETTLE_S` after the outputs were written, or the coordinator loop never
  wrote them within `grace` seconds, or on a second signal, the process writes a minimal summary
  if none was written, deletes its private temporary directories, kills every process it started
  (Ray's included) and exits at once with the same code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from coordinator.outputs import METRICS, SUMMARY, read_jsonl, write_json
from coordinator.stop import STOP, signal_name

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 10.0  # from the first signal to a forced exit if the coordinator loop never writes its outputs
SETTLE_S = 2.0  # from the partial outputs written to a forced exit if Flower and Ray have not ended by then


def exit_code(signum: int) -> int:
    """The shell's convention: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children...), from /proc; [] where there is no /proc."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants(wait: float = 0.0) -> list[int]:
    """Wait up to `wait` seconds for this process's children to end by themselves, then SIGKILL the rest."""
    deadline = time.monotonic() + wait
    while (left := descendants(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(OSError):  # already gone
            os.kill(pid, signal.SIGKILL)
    return left


def write_minimal_summary(out_dir: Path, scenario: str, signum: int, since: float) -> None:
    """summary.json for a run stopped before the coordinator could write one (unless this run wrote one)."""
    path = out_dir / SUMMARY
    try:
        if path.exists() and path.stat().st_mtime >= since:
            return
        rows = [r for r in read_jsonl(out_dir / METRICS) if int(r.get("round", 0)) >= 1]
    except (OSError, ValueError):
        rows = []
    if not out_dir.is_dir():
        return
    summary: dict[str, Any] = {
        "scenario": scenario,
        "interrupted": True,
        "interrupted_by": signal_name(signum),
        "rounds_completed": sum(1 for r in rows if not r.get("skipped")),
        "final": {"accuracy": None, "loss": None},
        "out_dir": str(out_dir),
    }
    write_json(path, summary)


class SignalGuard:
    """Installs the handlers above for the duration of a simulation (a context manager)."""

    def __init__(self, out_dir: Path, scenario: str, cleanup: Callable[[], None], grace: float = GRACE_S) -> None:
        self.out_dir, self.scenario, self.cleanup, self.grace = out_dir, scenario, cleanup, grace
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()
        self._forcing = threading.Lock()
        self.started = time.time()

    def __enter__(self) -> SignalGuard:
        STOP.clear()
        self.started = time.time()
        if _main_thread():
            self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        self.install()
        return self

    def install(self) -> None:
        """(Again) make ours the handlers: ray.init replaces SIGTERM's, in Python and in its C++ core worker.

        Only the main thread may set handlers; elsewhere (a run started from a thread) nothing changes."""
        if not _main_thread():
            return
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if STOP.is_set():
            kill_descendants(wait=3.0)  # Ray's workers end shortly after ray.shutdown; none may outlive us

    @property
    def interrupted(self) -> bool:
        return STOP.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if STOP.is_set():
            self._force(signum)
        STOP.request(signum)
        _say(f"\n{signal_name(signum)}: stopping, writing the partial outputs (Ctrl-C again to quit at once)\n")
        threading.Thread(target=self._watchdog, name="fedloom-stop-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        """Once the partial outputs are written, only Flower's teardown is left, and that waits for the
        ClientApp calls running in Ray (a whole local training, or an actor's cold start): give it
        `settle` seconds, then end it. If the coordinator never gets there, end it after `grace`."""
        if STOP.handled.wait(self.grace):
            if not self._done.wait(SETTLE_S):
                _say(f"{signal_name(STOP.signum or signal.SIGINT)}: partial outputs in {self.out_dir}\n")
                self._force(STOP.signum or signal.SIGINT)
        elif not self._done.is_set():
            _say(f"the run did not stop within {self.grace:.0f} s: quitting now\n")
            self._force(STOP.signum or signal.SIGINT)

    def _force(self, signum: int) -> None:
        """Exit now: a summary, no private files, no child processes left."""
        with self._forcing:  # the watchdog and a second signal may race here; the first one exits
            code = exit_code(STOP.signum or signum)
            try:
                write_minimal_summary(self.out_dir, self.scenario, STOP.signum or signum, self.started)
                self.cleanup()
            finally:
                kill_descendants()
                os._exit(code)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _say(text: str) -> None:
    """Straight to stderr: a signal handler must not re-enter the rich console that may be mid-write."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
