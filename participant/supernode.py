"""Flower's `flower-supernode`, unchanged, with fedloom's waits between pulls.

Flower 1.41's SuperNode loop (`flwr.supernode.start_client_internal`) sleeps a fixed 3 s whenever a
pull from the SuperLink brings no message, and 0.5 s between looks at its own state while the
ClientApp works; no flag, environment variable or config sets either. A member's trip pays up to
3 s before its node even sees the coordinator's message, and up to 0.5 s more before the reply
leaves. This wrapper runs the same `flower_supernode()` (its own argument parsing, TLS, node
authentication and retries) but gives that module a `time` whose `sleep` uses fedloom's intervals:

  - pull: `PULL_FAST` seconds while the federation is busy (a message came in the last
    `BUSY_WINDOW` seconds: the next trip of the round is coming), growing back to Flower's 3 s
    when it is idle, so an idle federation costs the coordinator what it always did;
  - waits on the node's own state (reply ready, object stored): `LOCAL_POLL`.

Heartbeats: Flower's SuperNode tells the SuperLink it beats every 30 s, and the SuperLink gives up on
it after 2 missed intervals; no flag sets it. With FEDLOOM_HEARTBEAT_INTERVAL (from `fedloom
participant start --heartbeat`) the node declares and keeps that interval instead (Flower's
SuperLink accepts 10-1800 s), so a member whose machine hangs is noticed after 2 x that.

With FEDLOOM_TRIP_LOG set it also notes when each message was received and its reply sent
(`fedloom.triplog`, for `fedloom bench deployment`).

Run: python -m participant.supernode <flower-supernode arguments>
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from fedloom import triplog

FLOWER_PULL_SLEEP = 3.0  # what Flower sleeps after an empty pull
FLOWER_LOCAL_SLEEP = 0.5  # what Flower sleeps between looks at its own state
PULL_FAST = 0.2
BUSY_WINDOW = 30.0
LOCAL_POLL = 0.05
HEARTBEAT_ENV = "FEDLOOM_HEARTBEAT_INTERVAL"
FLOWER_HEARTBEAT = 30.0  # flwr.common.constant.HEARTBEAT_DEFAULT_INTERVAL
HEARTBEAT_RANGE = (10.0, 1800.0)  # what Flower's SuperLink accepts (HEARTBEAT_MIN/MAX_INTERVAL)
# the modules of Flower 1.41's SuperNode that read the interval: the one that declares it to the
# SuperLink (activation and each beat) and the one that times the beats
HEARTBEAT_MODULES = ("flwr.supernode.fleet_http_connection", "flwr.supercore.heartbeat")


class PullClock(types.SimpleNamespace):
    """Stands in for the `time` module inside Flower's SuperNode loop (which uses only `sleep`)."""

    def __init__(self, fast: float = PULL_FAST, idle: float = FLOWER_PULL_SLEEP, busy_window: float = BUSY_WINDOW):
        super().__init__()
        self.fast, self.idle, self.busy_window = fast, idle, busy_window
        self.last_message = float("-inf")

    def message_seen(self) -> None:
        self.last_message = time.monotonic()

    def pull_wait(self) -> float:
        """Seconds to wait after an empty pull: fast while busy, then back to Flower's interval."""
        quiet = time.monotonic() - self.last_message
        if quiet <= self.busy_window:
            return self.fast
        # idle: double from `fast` per busy_window of quiet, capped at Flower's own interval
        return min(self.idle, self.fast * 2 ** ((quiet - self.busy_window) / self.busy_window + 1))

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_PULL_SLEEP:
            time.sleep(self.pull_wait())
        elif seconds == FLOWER_LOCAL_SLEEP:
            time.sleep(LOCAL_POLL)
        else:
            time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:  # anything else Flower might use from `time`
        return getattr(time, name)


def _noting(fn: Callable[..., Any], clock: PullClock, event: str, when: Callable[[Any], bool]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if when(result):
            clock.message_seen()
            triplog.note(event)
        return result

    return wrapped


def install(module: types.ModuleType, clock: PullClock) -> None:
    """Give Flower's SuperNode loop our clock, and note pulled messages (the message itself, then
    with its objects downloaded: "received") and sent replies."""
    module.time = clock  # type: ignore[attr-defined]
    pull = _noting(module._pull_and_store_message, clock, "received", lambda r: r is not None)

    def pull_noting_arrival(*args: Any, **kwargs: Any) -> Any:
        if "receive" in kwargs:
            kwargs["receive"] = _noting(kwargs["receive"], clock, "pulled", lambda r: r is not None)
        return pull(*args, **kwargs)

    module._pull_and_store_message = pull_noting_arrival
    module._push_messages = _noting(module._push_messages, clock, "sent", lambda _r: True)


def set_heartbeat(interval: float) -> None:
    """Declare and keep `interval` seconds between heartbeats in this process's SuperNode."""
    low, high = HEARTBEAT_RANGE
    if not low <= interval <= high:
        raise ValueError(f"heartbeat interval {interval:g} s is outside what Flower accepts ({low:g}-{high:g} s)")
    for name in HEARTBEAT_MODULES:
        module = importlib.import_module(name)
        if not isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), int | float):  # a Flower that changed
            raise RuntimeError(f"{name} has no HEARTBEAT_DEFAULT_INTERVAL: this Flower times heartbeats elsewhere")
        module.HEARTBEAT_DEFAULT_INTERVAL = interval


def main(argv: list[str] | None = None) -> None:
    import fedloom  # noqa: F401  (telemetry off before flwr loads)

    # the package re-exports functions under the modules' names: take the modules themselves
    install(importlib.import_module("flwr.supernode.start_client_internal"), PullClock())
    if os.environ.get(HEARTBEAT_ENV):
        set_heartbeat(float(os.environ[HEARTBEAT_ENV]))
    flower = importlib.import_module("flwr.supernode.cli.flower_supernode")
    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower.flower_supernode()


if __name__ == "__main__":
    main()
