"""The public gateway: only the Fleet API goes through, and a SuperLink that does not answer is a
502 (which Flower's SuperNode retries), never a 500 (which ends a SuperNode's heartbeats for good)."""

from __future__ import annotations

import certifi
from starlette.testclient import TestClient

from coordinator.gateway import build_app
from fedloom.processes import free_port


def test_a_silent_superlink_is_a_bad_gateway_and_other_apis_are_forbidden():
    nobody = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    with TestClient(build_app(nobody, certifi.where())) as client:
        beat = client.post("/v1/fleet/send-node-heartbeat", content=b"\x00")
        assert beat.status_code == 502 and "did not answer" in beat.text
        for path in ("/v1/control/start-run", "/v1/runtime/pull-messages", "/"):
            assert client.post(path, content=b"").status_code == 403, path
