"""The exact Fleet API requests a Flower 1.41 SuperNode makes, and the one rule that admits them.

Both the public gateway (`coordinator.gateway`) and the SuperLink's fleet-only door
(`coordinator.superlink`) use `is_fleet_request`. It is an allowlist of whole request targets, on
the RAW target the client sent (ASGI `raw_path`), not a prefix check on a decoded path: a prefix
check on `/v1/fleet/` let `/v1/fleet/%2e%2e/control/start-run` through, because the decoded path
still started with the prefix and the upstream client then removed the dot segments. A target that
is not byte for byte one of these endpoints (percent escapes, dot segments, backslashes, `;`
parameters, `//`, a query string, an absolute-form `https://host/...` target, another method, a
non-empty root path) is refused, so there is nothing left for a later parser to reinterpret.

The list is Flower's `flwr.supernode.fleet_http_client.FleetHttpClient` (every path it requests,
all POST, none with a query string) = `flwr.superlink.routers.fleet.router`. A test checks that
this list still equals Flower's routes, so a Flower upgrade that adds or renames one is noticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLEET_ENDPOINTS: frozenset[str] = frozenset(
    "/v1/fleet/" + name
    for name in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
FLEET_METHOD = "POST"
# What Flower's SuperNode speaks (httpx, HTTP/1.1; Flower notes it has not enabled HTTP/2).
HTTP_VERSIONS = frozenset({"1.1"})


def fleet_endpoint(scope: Mapping[str, Any]) -> str | None:
    """The Fleet endpoint this ASGI request targets exactly, or None if it must be refused.

    Every part of the request line is checked, not only the path, because each one is a place
    where a proxy and the server behind it can disagree about what was asked for.
    """
    if scope.get("type") != "http" or scope.get("method") != FLEET_METHOD:
        return None
    if scope.get("http_version") not in HTTP_VERSIONS or scope.get("root_path", ""):
        return None
    if scope.get("query_string", b""):
        return None
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return None
    try:
        target = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    # The raw target and the decoded path the router sees must be the same allowed string: then
    # no percent-decoding, dot-segment removal or absolute-form parsing changed anything.
    if target not in FLEET_ENDPOINTS or scope.get("path") != target:
        return None
    return target
