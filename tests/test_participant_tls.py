"""A member's node that meets a server whose certificate its kit's CA did not sign (an impostor,
or a kit from another federation) stops with a clear error after a few attempts, instead of
restarting its SuperNode forever. Real processes: `fedloom participant start` and its Flower
SuperNode, against the real gateway serving a certificate from another CA on loopback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from deployment import Federation

from fedloom.processes import flower_env, free_port, spawn, stop, wait_for_tls
from fedloom.tls import create_ca, issue_server_cert
from participant.service import TLS_REFUSALS_BEFORE_GIVING_UP

PLAN = """rounds = 1
[plan.task]
name = "digits"
partition = "iid"
"""


@pytest.mark.slow
def test_a_node_facing_a_certificate_from_another_ca_gives_up_with_a_clear_error(tmp_path):
    fed = Federation(tmp_path, ["amara", "bo", "chen"])
    fed.provision(PLAN)
    other = create_ca("impostor")
    cert = issue_server_cert(other, "impostor", ["127.0.0.1"])
    d = tmp_path / "impostor"
    d.mkdir()
    (d / "ca.crt").write_bytes(other.cert_pem)
    (d / "server.crt").write_bytes(cert.cert_pem)
    (d / "server.key").write_bytes(cert.key_pem)
    impostor_cmd = [
        *(sys.executable, "-m", "coordinator.gateway", "--bind", fed.address),
        *("--upstream", f"https://127.0.0.1:{free_port()}", "--ca", str(d / "ca.crt")),
        *("--cert", str(d / "server.crt"), "--key", str(d / "server.key")),
    ]
    impostor = spawn(impostor_cmd, flower_env(), d / "gateway.log")
    try:
        wait_for_tls("127.0.0.1", fed.port, d / "ca.crt", 30, impostor)
        node = fed.start_participant("amara", "nodes/amara")
        try:
            code = node.wait(240)
        except subprocess.TimeoutExpired:
            raise AssertionError("the node kept retrying: " + fed.tail("participant:nodes/amara")) from None
        out = fed.tail("participant:nodes/amara", 60)
        assert code == 2, out
        assert "not signed by this kit's CA" in out and "not retrying" in out, out
        assert f"{TLS_REFUSALS_BEFORE_GIVING_UP} attempts in a row" in out, out
    finally:
        stop(impostor)
        fed.stop_all()
