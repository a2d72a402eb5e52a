"""Flower's SuperLink with two loopback doors: the full one for the coordinator, a fleet-only one.

Flower 1.41's `flower-superlink` serves the Fleet, Control and Runtime APIs from ONE FastAPI app
on ONE port (`--control-api-address` and `--fleet-api-address` are deprecated and ignored for
HTTP), and open-source Flower does not authenticate the Control API. If the gateway's upstream
were that port, one flaw in the gateway's path check would hand the world `flwr run` (code
execution on the coordinator host and on every member) and node registration: that happened
with `/v1/fleet/%2e%2e/control/start-run`.

So this wrapper runs the same `flower-superlink` (its own argument parsing, lifespan, TLS and
database, unchanged) on two loopback sockets of the same server:
  - `--port`: everything, as Flower serves it; only the coordinator's own `flwr` calls and the
    ServerApp's runtime process use it.
  - `--fleet-port`: the gateway's upstream. An ASGI guard refuses (403) every request arriving on
    this socket that is not exactly a Fleet call (`coordinator.fleet_api`), checked on the raw
    target before Flower routes it. A request smuggled past the gateway still cannot reach the
    Control or Runtime API.

Both sockets bind loopback addresses only (refused otherwise). If a future Flower stopped calling
`uvicorn.run` from `flower_superlink`, the fleet door would simply not open (the gateway answers
502): this fails closed, and the launcher exits non-zero.

Run: python -m coordinator.superlink --fleet-port PORT <flower-superlink arguments>
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import socket
import sys
import types
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.fleet_api import fleet_endpoint

log = logging.getLogger("fedloom.superlink")


class FleetDoor:
    """ASGI guard: on the fleet socket only exact Fleet calls pass; the full socket is untouched.

    Which socket a request came through is the server address of its connection (`scope["server"]`),
    which the client cannot choose; a request whose server address is unknown is treated as one
    arriving at the fleet door (fail closed).
    """

    def __init__(self, app: ASGIApp, full_port: int) -> None:
        self.app = app
        self.full_port = full_port

    def _on_full_door(self, scope: Scope) -> bool:
        server = scope.get("server")
        return bool(server) and server[1] == self.full_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self._on_full_door(scope) or fleet_endpoint(scope) is not None:
            await self.app(scope, receive, send)
            return
        log.warning("fleet door refused %s %r", scope.get("method", scope["type"]), scope.get("raw_path"))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await PlainTextResponse("forbidden: the fleet door serves the Fleet API only\n", status_code=403)(
            scope, receive, send
        )


def _loopback(host: str) -> str:
    """The host, if it is a loopback address; the SuperLink must never face the network."""
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return host.strip("[]")
    except ValueError:
        pass
    raise SystemExit(f"coordinator.superlink: --host must be a loopback address, not {host!r}")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class TwoDoorUvicorn(types.SimpleNamespace):
    """Stands in for the `uvicorn` module inside Flower's `flower_superlink`: its `run` serves
    Flower's app, wrapped in `FleetDoor`, on the full port and on the fleet port."""

    def __init__(self, fleet_port: int) -> None:
        super().__init__()
        self.fleet_port = fleet_port
        self.called = False

    def run(self, app: ASGIApp, host: str, port: int, **kwargs: Any) -> None:
        import uvicorn

        self.called = True
        host = _loopback(host)
        if port == self.fleet_port:
            raise SystemExit("coordinator.superlink: --fleet-port must differ from --port")
        sockets = [_bind(host, port), _bind(host, self.fleet_port)]
        config = uvicorn.Config(FleetDoor(app, port), host=host, port=port, **kwargs)
        uvicorn.Server(config).run(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--fleet-port" not in args or args.index("--fleet-port") + 1 >= len(args):
        raise SystemExit("usage: python -m coordinator.superlink --fleet-port PORT <flower-superlink arguments>")
    i = args.index("--fleet-port")
    fleet_port = int(args[i + 1])
    del args[i : i + 2]
    # the package re-exports the function under the module's name: take the module itself
    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")
    shim = TwoDoorUvicorn(fleet_port)
    flower.uvicorn = shim  # type: ignore[assignment]  # Flower calls `uvicorn.run(app=..., host=..., port=...)`
    sys.argv = ["flower-superlink", *args]
    flower.flower_superlink()
    if not shim.called:
        raise SystemExit("coordinator.superlink: Flower did not start its server through uvicorn.run; no fleet door")


if __name__ == "__main__":
    main()
