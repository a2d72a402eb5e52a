"""Keep every Ray process fedloom starts on loopback and private to the run.

Ray's APIs run arbitrary code for whoever can connect (no authentication: the class behind
CVE-2023-48022), and on Linux Ray listens on every interface by default: gcs_server, raylet and each
worker's gRPC server on `*:<port>`, the runtime-env agent on the machine's external address.
`ray.init(_node_ip_address="127.0.0.1")` does NOT help: Ray rewrites a loopback node address to the
machine's external one (`ray._private.services.resolve_ip_for_localhost`).

The one lever (Ray 2.55) is Ray's single-machine mode, its default on macOS and Windows: with
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` the node address is 127.0.0.1, and then gcs_server, raylet,
the workers and the agents all bind 127.0.0.1 only (they bind loopback when the node address is
loopback). fedloom only ever runs Ray on one machine (the Simulation Engine), so nothing is lost.
`RAY_ADDRESS=local` makes a bare `ray.init()` (Flower's engine under `flwr run`) start its own Ray
instead of joining a cluster someone else started on this machine.

Ray reads the first variable when `ray._private.ray_constants` is imported, so `fedloom/__init__`
calls this before anything imports ray; if ray was imported first, the constant is set directly
(Ray looks it up at call time).
"""

from __future__ import annotations

import os
import sys

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
ADDRESS_ENV = "RAY_ADDRESS"


def keep_ray_on_loopback() -> None:
    """Put Ray, in this process and every process it starts, in single-machine loopback mode.

    Forced, not a default: no fedloom command needs Ray reachable from the network, and a stray
    variable in someone's shell must not open a rehearsal to the lab's network.
    """
    os.environ[SINGLE_MACHINE_ENV] = "0"
    os.environ[ADDRESS_ENV] = "local"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported before fedloom: its module constant already read the old value
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
