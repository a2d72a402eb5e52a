"""The public gateway: only the Fleet API goes through, and a SuperLink that does not answer is a
502 (which Flower's SuperNode retries), never a 500 (which ends a SuperNode's heartbeats for good)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import certifi
import pytest
from starlette.testclient import TestClient

from coordinator.fleet_api import FLEET_ENDPOINTS, fleet_endpoint
from coordinator.gateway import build_app
from fedloom.processes import flower_env, free_port, spawn, stop, wait_for_tls
from fedloom.tls import create_ca, issue_server_cert


def test_a_silent_superlink_is_a_bad_gateway_and_other_apis_are_forbidden():
    nobody = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    with TestClient(build_app(nobody, certifi.where())) as client:
        beat = client.post("/v1/fleet/send-node-heartbeat", content=b"\x00")
        assert beat.status_code == 502 and "did not answer" in beat.text
        for path in ("/v1/control/start-run", "/v1/runtime/pull-messages", "/"):
            assert client.post(path, content=b"").status_code == 403, path


# ---------------------------------------------------------------- attacks, against real processes
# A real SuperLink (fedloom's two-door wrapper around `flower-superlink`) and the real gateway
# (`python -m coordinator.gateway`) over real TLS. The gateway's upstream here is the SuperLink's
# FULL door (Control + Runtime + Fleet, as in the parent deployment), so these tests show that the
# gateway alone stops every trick; the fleet-door tests then show the SuperLink's second check.

ATTACK_TARGETS = [
    "/v1/control/list-runs",
    "/v1/control/start-run",
    "/v1/runtime/get-nodes",
    "/v1/fleet/../control/list-runs",
    "/v1/fleet/%2e%2e/control/list-runs",
    "/v1/fleet/%2E%2E/control/start-run",
    "/v1/fleet/..%2fcontrol/list-runs",
    "/v1/fleet/..%2Fcontrol/list-runs",
    "/v1/fleet/%2e%2e%2fcontrol%2flist-runs",
    "/v1/fleet/./../control/list-runs",
    "/v1/fleet/.%2e/control/list-runs",
    "/v1/fleet/%252e%252e/control/list-runs",
    "/v1/fleet/%252e%252e%252fcontrol/list-runs",
    "/v1/fleet/%c0%ae%c0%ae/control/list-runs",
    "/v1/fleet/..\\control/list-runs",
    "/v1/fleet\\..\\control\\list-runs",
    "/v1/fleet/%5c..%5ccontrol/list-runs",
    "/v1/fleet/..;/control/list-runs",
    "/v1/fleet/get-run;/../../control/list-runs",
    "/v1/fleet/get-run;x=1",
    "/v1/fleet//../control/list-runs",
    "//v1/fleet/get-run",
    "/v1/fleet/get-run/",
    "/v1/fleet/get-run?x=/../../control/list-runs",
    "/v1/fleet/get-run#/../../control/list-runs",
    "/v1/fleet/../runtime/get-nodes",
    "/v1/fleet/%2e%2e/runtime/push-task-output",
    "https://evil/v1/control/list-runs",
    "https://evil/v1/fleet/../control/list-runs",
    "http://127.0.0.1/v1/control/start-run",
    "/v1/fleet/" + "a/" * 3000 + "../" * 3003 + "control/list-runs",  # overlong
]
REFUSED = {400, 403, 414, 431}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """CA + certificate, a two-door SuperLink, and a gateway whose upstream is the FULL door."""
    d = tmp_path_factory.mktemp("gw")
    ca = create_ca("gw-test")
    server = issue_server_cert(ca, "gw-test", ["127.0.0.1"])
    (d / "ca.crt").write_bytes(ca.cert_pem)
    (d / "server.crt").write_bytes(server.cert_pem)
    (d / "server.key").write_bytes(server.key_pem)
    full, fleet, public = free_port(), free_port(), free_port()
    tls = ["--ssl-ca-certfile", str(d / "ca.crt"), "--ssl-certfile", str(d / "server.crt")]
    superlink_cmd = [
        *(sys.executable, "-m", "coordinator.superlink", "--fleet-port", str(fleet)),
        *("--host", "127.0.0.1", "--port", str(full), *tls, "--ssl-keyfile", str(d / "server.key")),
        *("--enable-supernode-auth", "--database", str(d / "superlink.db")),
        *("--disable-runtime-dependency-installation", "--isolation", "subprocess"),
    ]
    gateway_cmd = [
        *(sys.executable, "-m", "coordinator.gateway", "--bind", f"127.0.0.1:{public}"),
        *("--upstream", f"https://127.0.0.1:{full}", "--ca", str(d / "ca.crt")),
        *("--cert", str(d / "server.crt"), "--key", str(d / "server.key")),
    ]
    superlink = spawn(superlink_cmd, flower_env(), d / "superlink.log")
    gateway = None
    try:
        wait_for_tls("127.0.0.1", full, d / "ca.crt", 60, superlink)
        wait_for_tls("127.0.0.1", fleet, d / "ca.crt", 60, superlink)
        gateway = spawn(gateway_cmd, flower_env(), d / "gateway.log")
        wait_for_tls("127.0.0.1", public, d / "ca.crt", 30, gateway)
        yield SimpleNamespace(dir=d, full=full, fleet=fleet, public=public, log=d / "superlink.log")
    finally:
        stop(gateway)
        stop(superlink)


def _raw(port: int, ca: Path, request_line: str, *, alpn: list[str] | None = None, extra: bytes = b"") -> bytes:
    """Send one request, byte for byte as written, over TLS; return what came back (b"" if closed)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    head = (
        f"{request_line}\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/protobuf\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    out = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(extra or head)
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            while chunk := tls.recv(65536):
                out += chunk
    return out


def _status(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/"):
        return None
    return int(response.split(b" ", 2)[1])


def _superlink_saw(stack, since: int) -> str:
    """What the SuperLink logged since `since`: every request it handled leaves an access line."""
    with stack.log.open("rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


def _list_runs_works(port: int, ca: Path) -> bool:
    return _status(_raw(port, ca, "POST /v1/control/list-runs HTTP/1.1")) == 200


def test_the_full_door_really_serves_control_so_the_attacks_below_mean_something(stack):
    assert _list_runs_works(stack.full, stack.dir / "ca.crt")


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_gateway_forwards_no_encoding_trick_to_the_superlink(stack, version):
    ca = stack.dir / "ca.crt"
    since = stack.log.stat().st_size
    for method in ("POST", "GET", "PUT"):
        for target in ATTACK_TARGETS:
            answer = _raw(stack.public, ca, f"{method} {target} {version}")
            status = _status(answer)
            assert status in REFUSED or (status is None and len(target) > 4000), (method, target[:80], answer[:200])
    time.sleep(0.5)
    seen = _superlink_saw(stack, since)
    assert "uvicorn.access" not in seen and "ControlServicer" not in seen, seen[-2000:]


def test_gateway_refuses_legit_paths_in_http_1_0_and_other_methods(stack):
    ca = stack.dir / "ca.crt"
    for line in ("POST /v1/fleet/get-run HTTP/1.0", "GET /v1/fleet/get-run HTTP/1.1", "OPTIONS * HTTP/1.1"):
        assert _status(_raw(stack.public, ca, line)) in REFUSED, line


def test_gateway_does_not_speak_http2(stack):
    ca = stack.dir / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", stack.public), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() != "h2"
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + empty SETTINGS
    answer = _raw(stack.public, ca, "", alpn=["h2"], extra=preface)
    assert _status(answer) in REFUSED | {None}, answer[:200]
    assert not answer.startswith(b"\x00"), "answered in HTTP/2 framing"


def test_gateway_forwards_a_real_fleet_call_to_the_superlink(stack):
    """An exact Fleet call goes through: Flower's node authentication answers it (401 without a
    signed node header), which only the SuperLink behind the gateway can say."""
    ca = stack.dir / "ca.crt"
    since = stack.log.stat().st_size
    answer = _raw(stack.public, ca, "POST /v1/fleet/get-run HTTP/1.1")
    assert _status(answer) == 401 and b"SuperNode authentication" in answer, answer[:300]
    time.sleep(0.3)
    assert '"POST /v1/fleet/get-run HTTP/1.1" 401' in _superlink_saw(stack, since)


def test_fleet_door_refuses_everything_but_exact_fleet_calls_even_without_the_gateway(stack):
    """Defence in depth: a request that got past the gateway (or came from anywhere else) to the
    gateway's upstream, the SuperLink's fleet door, still cannot reach Control or Runtime."""
    ca = stack.dir / "ca.crt"
    for target in ATTACK_TARGETS:
        for version in ("HTTP/1.1", "HTTP/1.0"):
            status = _status(_raw(stack.fleet, ca, f"POST {target} {version}"))
            # Flower's server parses with httptools, which drops a #fragment before the app sees the
            # target: that one reaches get-run itself (node auth answers 401), never anything else
            harmless = "#" in target and status == 401
            assert status in REFUSED or harmless or (status is None and len(target) > 4000), (target[:80], status)
    answer = _raw(stack.fleet, ca, "POST /v1/fleet/get-run HTTP/1.1")
    assert _status(answer) == 401 and b"SuperNode authentication" in answer
    since = stack.log.stat().st_size
    assert "ControlServicer" not in _superlink_saw(stack, since)


def test_the_allowlist_is_exactly_the_fleet_routes_of_this_flower():
    from flwr.superlink.routers.fleet.router import router

    assert {(r.path, tuple(r.methods)) for r in router.routes} == {(p, ("POST",)) for p in FLEET_ENDPOINTS}


@pytest.mark.parametrize(
    "change",
    [
        {"method": "GET"},
        {"http_version": "1.0"},
        {"http_version": "2"},
        {"query_string": b"a=b"},
        {"root_path": "/v1"},
        {"raw_path": b"/v1/fleet/%67et-run"},  # decodes to the allowed path: still refused
        {"raw_path": None},
        {"path": "/v1/control/list-runs"},
        {"type": "websocket"},
    ],
)
def test_fleet_endpoint_rule(change):
    scope = {
        "type": "http",
        "method": "POST",
        "http_version": "1.1",
        "path": "/v1/fleet/get-run",
        "raw_path": b"/v1/fleet/get-run",
        "query_string": b"",
        "root_path": "",
    }
    assert fleet_endpoint(scope) == "/v1/fleet/get-run"
    assert fleet_endpoint({**scope, **change}) is None
