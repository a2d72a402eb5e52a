"""Real deployment on loopback: provisioned kits, the coordinator service (SuperLink behind the
fleet-only TLS gateway) and participant nodes as real processes.

- Four members, two secure rounds; one member is killed during round 2 and the round completes;
  the secure aggregate equals the plaintext mean of the members' true updates within one
  quantization step; the ledger verifies, and fails after any edit.
- A node whose key is not registered is refused; a rogue app submitted to the public address is
  refused, and one submitted through the coordinator's own loopback control connection (as from a
  compromised coordinator host) never executes on a participant (the app guard refuses it).
Coordinator crash and resume: tests/test_deployment_resume.py (its own file, so xdist runs it
beside this one).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from deployment import (
    FEDLOOM,
    SECURE_PLAN,
    Federation,
    env,
    flwr_connection,
    kill_group,
    largest_secure_error,
    rogue_app,
    rows,
)

from fedloom.processes import free_port

pytestmark = pytest.mark.slow  # every test here starts a coordinator service and nodes
HEARTBEAT = 10  # seconds, `participant start --heartbeat`: the least Flower's SuperLink accepts


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("deploy"), ["amara", "bo", "chen", "dara"])
    fed.provision(SECURE_PLAN)
    marker = fed.root / "ROGUE-CODE-RAN"
    attempts: dict[str, object] = {}
    try:
        coordinator = fed.start_coordinator("state", node_wait=900)  # it waits for all 4 members, chen last
        fed.wait_for(fed.root / "state" / "service.json", 120)

        def start(m: str) -> None:  # with Flower's shortest heartbeat: a hung or killed node is noticed in 20 s
            (fed.root / "verify" / m).mkdir(parents=True, exist_ok=True)
            fed.start_participant(m, f"nodes/{m}", heartbeat=HEARTBEAT, FEDLOOM_VERIFY_DIR=str(fed.root / "verify" / m))

        for m in ("amara", "bo", "dara"):
            start(m)
        # the attempts while the coordinator still waits for its 4th member: the run cannot start yet
        attempts["unregistered"] = unregistered_node(fed)
        attempts["rogue_public"] = rogue_run(fed, marker, via="public")
        attempts["rogue_loopback"] = rogue_run(fed, marker, via="loopback")
        start("chen")
        # chen's machine freezes as round 1's training trip goes out, before it can answer: its heartbeats
        # stop, the SuperLink reports it unavailable after 2 x HEARTBEAT, and the coordinator must wait for
        # it, not drop it. (Frozen while its reply is being uploaded instead, nothing is reported until
        # Flower's 180 s upload-session limit; tests/test_reconnect.py covers that answer's handling.)
        fed.wait_for(fed.root / "state", 600, lambda _: fed.stage_asked("state", 1, "train + mask"), poll=0.05)
        fed.freeze_participant("nodes/chen", until="asking again once it is online", limit=9 * HEARTBEAT)
        fed.wait_for(fed.root / "state" / "checkpoint.json", 600, lambda p: fed.checkpoint_round("state") >= 1)
        fed.crash_participant("nodes/dara")  # killed while round 2 is under way
        assert coordinator.wait(900) == 0, fed.tail("coordinator:state")
        fed.stop_all()  # the tests read what the run left; its nodes would only poll (and take CPU) meanwhile
        yield fed, marker, attempts
    finally:
        fed.stop_all()


def unregistered_node(fed: Federation) -> int:
    """A SuperNode with a key the coordinator never registered: Flower refuses it (exit 305)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path = fed.root / "intruder.key"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    path.chmod(0o600)
    cmd = [
        "flower-supernode",
        "--superlink",
        fed.address,
        "--root-certificates",
        str(fed.kits / "ca" / "ca.crt"),
        "--auth-supernode-private-key",
        str(path),
        "--port",
        str(free_port()),
        "--max-retries",
        "3",
        "--node-config",
        'data-path="/nonexistent"',
    ]
    # its own session and a log file: the SuperNode's child (flower-superexec) must not hold our pipes
    with (fed.root / "intruder.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        try:
            return proc.wait(180)
        finally:
            kill_group(proc.pid)


def rogue_run(fed: Federation, marker: Path, via: str) -> int:
    app = rogue_app(fed.root / "rogue", marker)
    if via == "public":  # what anyone on the network can reach
        conn = flwr_connection(fed.root / "mallory-home", "target", fed.address, fed.kits / "ca" / "ca.crt")
    else:  # the coordinator's own loopback control connection, as from a compromised coordinator host
        conn = env(FLWR_HOME=str(fed.root / "state" / "flwr-home"))
    proc = subprocess.run(
        ["flwr", "run", str(app), "target" if via == "public" else "fedloom"],
        capture_output=True,
        text=True,
        env=conn,
        timeout=180,
    )
    return proc.returncode


def test_two_secure_rounds_complete_with_a_member_killed_mid_round(secure_run):
    fed, _, _ = secure_run
    summary = json.loads((fed.root / "state" / "outputs" / "summary.json").read_text())
    assert summary["secure_aggregation"] is True and summary["rounds_completed"] == 2
    by_round = rows(fed.root / "state" / "outputs" / "metrics.jsonl")
    assert set(by_round[1]["aggregated"]) == {1, 2, 3, 4}, by_round[1]
    assert by_round[2]["skipped"] is None and {1, 2, 3} <= set(by_round[2]["aggregated"])
    if 4 not in by_round[2]["aggregated"]:  # killed before its masked input got out
        assert {"member": 4, "stage": "mask"} in by_round[2]["dropped"]


def test_the_console_tells_the_story_and_status_reads_it(secure_run):
    """The coordinator's console: a line per stage as it happens (who was asked, who answered, who
    not), the resend after chen's freeze, each round's line when it ends, the final line; the same
    lines reach Flower's run log (`flwr log`); `fedloom status` reads the finished run."""
    fed, _, _ = secure_run
    console = (fed.root / "state.out").read_text(errors="replace")
    assert "round 1 · set-up 1/3: advertise keys: asked 4" in console
    assert "round 1 · train + mask: asked 4 (amara, bo, chen, dara)" in console
    assert "round 2 · sign survivors: asked" in console and "round 2 · unmask: " in console
    assert "chen is back online; its message was sent again" in console
    assert "no answer from dara" in console
    first_round = console.index("round 1 done in ")
    assert "aggregated 4 (amara, bo, chen, dara)" in console[first_round:].splitlines()[0]
    assert first_round < console.index("round 2 · train + mask: asked")  # not printed during the next round
    assert f"done: 2 of 2 rounds, outputs in {fed.root / 'state' / 'outputs'}" in console
    assert fed.run_log_mentions("state", "round 1 · train + mask: asked 4")  # INFO lines reach `flwr log`
    status = subprocess.run([*FEDLOOM, "status", str(fed.root / "state")], capture_output=True, text=True, env=env())
    assert status.returncode == 0 and "state: done" in status.stdout and "rounds done: 2 of 2" in status.stdout


def test_a_member_frozen_past_its_heartbeats_is_waited_for_and_answers_once(secure_run):
    """chen froze as round 1's training trip went out, until the coordinator heard it had not answered
    (missed heartbeats past Flower's patience of 2 x HEARTBEAT; were that never reported, the freeze would
    end after 9 x HEARTBEAT and chen would answer without a resend): the coordinator waited, sent its
    message again once chen was online, and chen answered with what it had already sent, if it had
    (never a second masked input)."""
    fed, _, _ = secure_run
    by_round = rows(fed.root / "state" / "outputs" / "metrics.jsonl")
    resent = [e for r in by_round.values() for e in r.get("resent", []) if e["member"] == 3]
    assert resent, {r: by_round[r].get("resent") for r in by_round}
    assert 3 in by_round[1]["aggregated"] and not by_round[1]["refusals"], by_round[1]
    log = (fed.root / "nodes" / "chen" / "supernode.log").read_text(errors="replace")
    assert "round.replay" not in log  # a repeat is never answered by the protocol a second time


def test_members_heartbeat_at_the_interval_they_chose(secure_run):
    """`participant start --heartbeat 10` is what each node declared to the SuperLink (so it gave up on
    frozen chen and killed dara after 2 x 10 s); the coordinator's console said why dara was dropped."""
    fed, _, _ = secure_run
    assert fed.heartbeat_intervals("state") == [HEARTBEAT] * len(fed.members)
    assert "failed to report a heartbeat within 2 × its expected interval" in (fed.root / "state.out").read_text()


def test_secure_aggregate_equals_the_plaintext_mean(secure_run):
    """Verification hook: within one quantization step of the plaintext mean, every round."""
    fed, _, _ = secure_run
    assert max(largest_secure_error(fed, "state", range(1, 3))) <= 1 + 1e-6


def test_ledger_verifies_and_any_edit_breaks_it(secure_run, tmp_path):
    fed, _, _ = secure_run
    ledger = fed.root / "state" / "ledger.jsonl"
    ok = subprocess.run(
        [*FEDLOOM, "ledger", "verify", str(ledger), "--kit", str(fed.kits / "amara")],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = ledger.read_bytes()
    for pos in (10, len(data) // 2, len(data) - 20):  # a sample here; every byte in tests/test_ledger.py
        edited = tmp_path / f"edited-{pos}.jsonl"
        edited.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
        bad = subprocess.run(
            [*FEDLOOM, "ledger", "verify", str(edited), "--kit", str(fed.kits / "amara")],
            capture_output=True,
            text=True,
            env=env(),
        )
        assert bad.returncode == 1, bad.stdout
    for m in ("amara", "bo", "chen"):  # each member's own copy of what it saw
        copy = fed.root / "nodes" / m / "ledger.jsonl"
        assert (
            subprocess.run(
                [*FEDLOOM, "ledger", "verify", str(copy), "--kit", str(fed.kits / m)], capture_output=True, env=env()
            ).returncode
            == 0
        )


def test_unregistered_node_is_refused(secure_run):
    fed, _, attempts = secure_run
    assert attempts["unregistered"] != 0
    log = (fed.root / "intruder.log").read_text(errors="replace")
    # Flower prints its own code (305: not registered) and exits 1: TLS worked, node authentication said no
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log


def test_rogue_app_never_runs_on_a_participant(secure_run):
    fed, marker, attempts = secure_run
    assert attempts["rogue_public"] != 0  # the gateway serves the Fleet API only
    assert "refused POST b'/v1/control" in (fed.root / "state" / "logs" / "gateway.log").read_text()
    assert not marker.exists()
    logs = "".join((fed.root / "nodes" / m / "supernode.log").read_text(errors="replace") for m in fed.members)
    assert "refusing app bundle" in logs  # the loopback submission reached the nodes; the guard said no
