"""The coordinator's public front door: TLS in, only the Fleet API through.

Flower 1.41's SuperLink serves the Fleet API (what SuperNodes use), the Control API (submit runs,
register nodes: unauthenticated in open-source Flower) and the runtime API on ONE HTTP server.
So the SuperLink listens on loopback only, and this gateway is what the world reaches: it
terminates TLS with the federation's certificate and forwards `/v1/fleet/*` to the SuperLink
(over TLS, checked against the federation's CA). Only the exact Fleet endpoints a SuperNode uses
pass (`coordinator.fleet_api`: POST, the raw request target byte-identical to an endpoint, no
query); anything else is refused with 403 before it is parsed further, and what goes upstream is
the allowlisted endpoint string, never the client's target. So nobody who can reach the public
address can start a run, ship code to members or register a node. Behind it, the gateway's
upstream is the SuperLink's fleet-only door (`coordinator.superlink`), which applies the same
rule again, and node authentication (pre-registered keys) still applies.

Run: python -m coordinator.gateway --bind HOST:PORT --upstream https://127.0.0.1:PORT
         --cert server.crt --key server.key --ca ca.crt
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.fleet_api import FLEET_ENDPOINTS, fleet_endpoint

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
KEEPALIVE_SECONDS = 2.0
log = logging.getLogger("fedloom.gateway")


def _headers(items) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in HOP_BY_HOP}


class FleetOnly:
    """ASGI guard in front of the router: a request that is not exactly a Fleet call gets 403.

    It runs before routing, so a target the router would not even match (absolute-form,
    `/v1/fleet/%2e%2e/...`) is refused here rather than left to anything downstream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or fleet_endpoint(scope) is not None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        log.warning("refused %s %r from %s", scope.get("method", scope["type"]), scope.get("raw_path"), client[0])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: uvicorn answers 403
            return
        await PlainTextResponse("forbidden: this address serves the Fleet API only\n", status_code=403)(
            scope, receive, send
        )


def _forwarder(client: httpx.AsyncClient, endpoint: str) -> Callable[[Request], Awaitable[Response]]:
    """The handler for one Fleet endpoint: it sends upstream the allowlisted `endpoint` string
    itself, never the client's request target, so httpx has nothing of the client's to normalize."""

    async def forward(request: Request) -> Response:
        body = await request.body()
        try:
            upstream_resp = await client.post(endpoint, headers=_headers(request.headers.items()), content=body)
        except httpx.TransportError as exc:
            # 502, not a 500: Flower's SuperNode retries a 502, but a 500 on a heartbeat kills its
            # heartbeat thread for good, and the node then looks offline forever
            log.warning("the SuperLink did not answer POST %s: %r", endpoint, exc)
            return PlainTextResponse("bad gateway: the SuperLink did not answer; try again\n", status_code=502)
        return Response(
            upstream_resp.content,
            status_code=upstream_resp.status_code,
            headers=_headers(upstream_resp.headers.items()),
        )

    return forward


def build_app(upstream: str, ca_file: str) -> Starlette:
    verify = ssl.create_default_context(cafile=ca_file)
    # Connections to the SuperLink are kept alive shorter than its server keeps them (uvicorn: 5 s),
    # so a request is never sent down a connection the SuperLink is just closing.
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS)
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(600.0), limits=limits)
    routes = [Route(endpoint, _forwarder(client, endpoint), methods=["POST"]) for endpoint in sorted(FLEET_ENDPOINTS)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=routes, middleware=[Middleware(FleetOnly)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bind", required=True, help="HOST:PORT to listen on (the federation's public address)")
    p.add_argument(
        "--upstream", required=True, help="https://127.0.0.1:PORT: the SuperLink's fleet-only door (its --fleet-port)"
    )
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    args = p.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedloom-gateway %(levelname)s %(message)s")
    uvicorn.run(
        build_app(args.upstream, args.ca),
        host=host.strip("[]") or "0.0.0.0",
        port=int(port),
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        log_level="warning",
        # h11 hands the app the request target exactly as sent (absolute-form, fragment and all);
        # httptools passes only its parsed path, which would hide those from the allowlist check
        http="h11",
    )


if __name__ == "__main__":
    main()
