"""The coordinator's public front door: TLS in, only the Fleet API through.

Flower 1.41's SuperLink serves the Fleet API (what SuperNodes use), the Control API (submit runs,
register nodes: unauthenticated in open-source Flower) and the runtime API on ONE HTTP server.
So the SuperLink listens on loopback only, and this gateway is what the world reaches: it
terminates TLS with the federation's certificate and forwards `/v1/fleet/*` to the SuperLink
(over TLS, checked against the federation's CA). Every other path is refused with 403, so
nobody who can reach the public address can start a run, ship code to members or register a
node. Node authentication (pre-registered keys) still applies behind it.

Run: python -m coordinator.gateway --bind HOST:PORT --upstream https://127.0.0.1:PORT
         --cert server.crt --key server.key --ca ca.crt
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

ALLOWED_PREFIX = "/v1/fleet/"
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
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
KEEPALIVE_SECONDS = 2.0
log = logging.getLogger("fedloom.gateway")


def _headers(items) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in HOP_BY_HOP}


def build_app(upstream: str, ca_file: str) -> Starlette:
    verify = ssl.create_default_context(cafile=ca_file)
    # Connections to the SuperLink are kept alive shorter than its server keeps them (uvicorn: 5 s),
    # so a request is never sent down a connection the SuperLink is just closing.
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS)
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(600.0), limits=limits)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(ALLOWED_PREFIX):
            log.warning("refused %s %s from %s", request.method, path, request.client.host if request.client else "?")
            return PlainTextResponse("forbidden: this address serves the Fleet API only\n", status_code=403)
        body = await request.body()
        try:
            upstream_resp = await client.request(
                request.method,
                path,
                params=request.query_params,
                headers=_headers(request.headers.items()),
                content=body,
            )
        except httpx.TransportError as exc:
            # 502, not a 500: Flower's SuperNode retries a 502, but a 500 on a heartbeat kills its
            # heartbeat thread for good, and the node then looks offline forever
            log.warning("the SuperLink did not answer %s %s: %r", request.method, path, exc)
            return PlainTextResponse("bad gateway: the SuperLink did not answer; try again\n", status_code=502)
        return Response(
            upstream_resp.content,
            status_code=upstream_resp.status_code,
            headers=_headers(upstream_resp.headers.items()),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=METHODS)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bind", required=True, help="HOST:PORT to listen on (the federation's public address)")
    p.add_argument("--upstream", required=True, help="https://127.0.0.1:PORT of the loopback SuperLink")
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
    )


if __name__ == "__main__":
    main()
