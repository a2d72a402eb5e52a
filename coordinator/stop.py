"""A stop request (Ctrl-C, SIGTERM) that the coordinator loop notices while it waits.

In `fedloom simulate` the ServerApp runs in a thread of the CLI's own process (Flower's Simulation
Engine), while the main thread sits inside Flower's runtime. A signal handler may only set a flag
there: raising in the main thread would tear Ray down under a coordinator loop that then waits its
full stage timeout for replies that never come. So the handler sets this process-wide request, the
coordinator's waiting loops (`transport.exchange`, `wait_for_nodes`) and the driver between rounds
call `check()`, and the driver turns the resulting `RunInterrupted` into "write what exists, return".
Nothing sets it in `coordinator start` (its ServerApp runs in Flower's own process).
"""

from __future__ import annotations

import signal
import threading


class RunInterrupted(Exception):
    """The run was asked to stop (a signal); the driver writes partial outputs and returns."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """A threading.Event that remembers which signal asked for the stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self.handled = threading.Event()  # the driver has written the partial outputs: nothing left to wait for

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        """Between runs in one process (tests, benchmarks): a past request must not stop the next run."""
        self.signum = None
        self._event.clear()
        self.handled.clear()

    def check(self) -> None:
        """Raise RunInterrupted if a stop was requested (called from the coordinator's waiting loops)."""
        if self._event.is_set():
            raise RunInterrupted(self.signum or signal.SIGINT)


STOP = StopRequest()
