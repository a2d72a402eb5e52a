"""The deployment test with each host in its own network namespace: the coordinator and three
members on separate network stacks, reaching each other only through a bridge the test made."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from deployment import Federation, Network, namespaces_available

pytestmark = pytest.mark.skipif(not namespaces_available(), reason="needs root and `ip netns` (Linux)")

PLAN = """rounds = 2
[plan.task]
name = "digits"
partition = "iid"
[plan.training]
epochs = 1
"""


def assert_in_namespace(pid: int, ns: str) -> None:
    """The process really runs in its host's namespace (its traffic cannot reach the real uplink)."""
    time.sleep(0.5)
    out = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.split()
    assert ns in out, (pid, ns, out)


def test_secure_rounds_across_network_namespaces(tmp_path):
    members = ["north", "south", "east"]
    with Network(f"fl{os.getpid() % 10000}", ["coordinator", *members]) as net:
        fed = Federation(tmp_path, members, port=9092, host=net.address["coordinator"], namespaces=dict(net.hosts))
        fed.provision(PLAN)
        try:
            coordinator = fed.start_coordinator("state")
            for m in members:
                proc = fed.start_participant(m, f"nodes/{m}")
                assert_in_namespace(proc.pid, net.hosts[m])
            assert_in_namespace(coordinator.pid, net.hosts["coordinator"])
            assert coordinator.wait(900) == 0, fed.tail("coordinator:state")
        finally:
            fed.stop_all()
    summary = json.loads((tmp_path / "state" / "outputs" / "summary.json").read_text())
    assert summary["secure_aggregation"] is True and summary["rounds_completed"] == 2
    rows = [json.loads(line) for line in (tmp_path / "state" / "outputs" / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["aggregated"]) == {1, 2, 3} for r in rows if r["round"] >= 1)
    gateway = (tmp_path / "state" / "logs" / "gateway.log").read_text()
    assert "/v1/fleet/" in gateway  # members came in through the public gateway, from their own hosts
