"""`fedloom coordinator start`: the coordinator service, from a provisioned kit.

What it runs, and why each piece is there:
  1. `flower-superlink` on LOOPBACK only (TLS with the federation's certificate, node
     authentication on, a database in the state directory, no runtime dependency installation):
     its Control API (submit runs, register nodes) is unauthenticated in open-source Flower and
     shares the Fleet API's port, so it must never face the network. It runs inside
     `coordinator.superlink`, which adds a second loopback socket, the fleet door, that serves
     exact Fleet calls only; the full port is used by this service's own `flwr` calls alone.
  2. `coordinator.gateway` on the public address: TLS, forwards exact Fleet calls only, and only
     to the fleet door, so even a request that slipped past it could not reach the Control API.
  3. Registers every member's node key from the kit (only those nodes can connect).
  4. Submits the run (a new Flower run each start: a restarted coordinator resumes from its
     last checkpoint) and follows it until it finishes (asking the SuperLink's Control API over
     one kept-open loopback connection, `RunWatch`); Ctrl-C stops it all cleanly.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.errors import UserError
from fedloom.processes import flower_env, free_port, spawn, stop, wait_for_tls

if TYPE_CHECKING:
    from .journal import EventTail

log = logging.getLogger("fedloom.coordinator")
CONNECTION = "fedloom"
WATCH_INTERVAL = 1.0  # seconds between looks at new events (a file read)
STATUS_EVERY = 3  # looks between asks for the run's status (one HTTPS call the SuperLink serves: idle CPU)


@dataclass
class Service:
    kit: Path
    state: Path
    bind: str
    app: Path
    superlink_port: int = 0  # the full door: Control + Runtime + Fleet, this service's `flwr` only
    fleet_port: int = 0  # the fleet door: the gateway's upstream
    superlink: subprocess.Popen | None = None
    gateway: subprocess.Popen | None = None
    run_id: int | None = None

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr-home"

    def env(self) -> dict[str, str]:
        return flower_env({"FLWR_HOME": str(self.flwr_home)})

    def flwr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["flwr", *args], env=self.env(), capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args[:2])} failed: {(proc.stdout + proc.stderr)[-1500:]}")
        return proc


def _need(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{path} not found (is {path.parent} a coordinator kit made by `fedloom provision`?)")
    return path


def check_app(app: Path, expected: str) -> None:
    from fedloom.appbundle import app_bundle_hash

    if not (app / "pyproject.toml").exists():
        raise UserError(f"{app} is not the fedloom app directory (no pyproject.toml); use --app")
    actual = app_bundle_hash(app)
    if actual != expected:
        raise UserError(
            f"the app in {app} has hash {actual[:16]}…, but the federation agreed to {expected[:16]}…; "
            "members would refuse it"
        )


def check_resume(svc: Service) -> None:
    """Before anything starts: a checkpoint to resume from must match the signed ledger (checkpoint.attest).

    The ServerApp checks again, but there a refusal would end as a failed Flower run with its traceback;
    here it is one line (a CheckpointError is a UserError) and nothing is started. The round-0 check (a
    fresh start's initial model) is left to the ServerApp: it needs the task's model."""
    from cryptography.hazmat.primitives import serialization

    from fedloom.kits import load_coordinator_kit

    from .checkpoint import POINTER, load_attested

    if not (svc.state / POINTER).exists() and not (svc.state / "ledger.jsonl").exists():
        return  # a fresh federation
    kit = load_coordinator_kit(svc.kit)
    public = kit.ledger_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    load_attested(svc.state, kit.plan.hash, svc.state / "ledger.jsonl", public)


def start_superlink(svc: Service) -> None:
    k = svc.kit
    svc.superlink_port = free_port()
    svc.fleet_port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "coordinator.superlink",
        "--fleet-port",
        str(svc.fleet_port),
        "--host",
        "127.0.0.1",
        "--port",
        str(svc.superlink_port),
        "--ssl-ca-certfile",
        str(_need(k / "ca.crt")),
        "--ssl-certfile",
        str(_need(k / "server.crt")),
        "--ssl-keyfile",
        str(_need(k / "server.key")),
        "--enable-supernode-auth",
        "--database",
        str(svc.state / "superlink.db"),
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
    ]
    svc.superlink = spawn(cmd, svc.env(), svc.state / "logs" / "superlink.log")
    # generous: a failed start is seen at once (the process exits), a slow one on a busy host is not one
    wait_for_tls("127.0.0.1", svc.superlink_port, k / "ca.crt", 180, svc.superlink)
    wait_for_tls("127.0.0.1", svc.fleet_port, k / "ca.crt", 60, svc.superlink)
    svc.flwr_home.mkdir(parents=True, exist_ok=True)
    (svc.flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{svc.superlink_port}"\nroot-certificates = "{k / "ca.crt"}"\n'
    )


def start_gateway(svc: Service) -> None:
    k = svc.kit
    cmd = [
        sys.executable,
        "-m",
        "coordinator.gateway",
        "--bind",
        svc.bind,
        "--upstream",
        f"https://127.0.0.1:{svc.fleet_port}",
        "--cert",
        str(k / "server.crt"),
        "--key",
        str(k / "server.key"),
        "--ca",
        str(k / "ca.crt"),
    ]
    svc.gateway = spawn(cmd, svc.env(), svc.state / "logs" / "gateway.log")
    host, _, port = svc.bind.rpartition(":")
    probe = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host.strip("[]")
    wait_for_tls(probe, int(port), k / "ca.crt", 60, svc.gateway)


def register_nodes(svc: Service) -> list[str]:
    registered = []
    for pub in sorted((svc.kit / "nodes").glob("*.pub")):
        proc = svc.flwr("supernode", "register", str(pub), CONNECTION, check=False)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and "already" not in text.lower():
            raise RuntimeError(f"registering {pub.stem} failed (exit {proc.returncode}): {text[-800:] or 'no output'}")
        registered.append(pub.stem)
    return registered


def stop_stale_run(svc: Service) -> None:
    """A run of a crashed coordinator stays 'running' in the SuperLink's database: stop it."""
    previous = svc.state / "run.json"
    if previous.exists():
        old = json.loads(previous.read_text()).get("run_id")
        if old is not None:
            svc.flwr("stop", str(old), CONNECTION, check=False)


def submit(svc: Service, node_wait: float, app_hash: str) -> int:
    """`flwr run` of a staged copy of the app holding only its bundle's files (fedloom.appbundle:
    Flower's own walk of the app directory would go through its virtualenv too); the copy must still
    be the bundle the federation agreed to (`app_hash`), or members would refuse every message."""
    from fedloom.appbundle import stage_app_bundle

    config = f'kit="{svc.kit}" state-dir="{svc.state}" node-wait={node_wait}'
    with tempfile.TemporaryDirectory(prefix="app-", dir=svc.state) as staged:
        bundle_hash = stage_app_bundle(svc.app, Path(staged))
        if bundle_hash != app_hash:
            raise UserError(
                f"the app in {svc.app} changed while the coordinator started (now {bundle_hash[:16]}…, "
                f"agreed {app_hash[:16]}…); members would refuse it"
            )
        proc = svc.flwr("run", staged, CONNECTION, "--run-config", config, "--format", "json")
    try:
        out = json.loads(proc.stdout)
        run_id = int(out["run-id"])
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"could not read the run id from `flwr run`: {proc.stdout[-800:]}") from exc
    if not bundle_hash.startswith(out.get("fab-hash") or "-"):  # flwr prints the hash's first 8 digits
        raise RuntimeError(f"`flwr run` submitted bundle {out.get('fab-hash')}…, not the app's {bundle_hash[:8]}…")
    (svc.state / "run.json").write_text(json.dumps({"run_id": run_id}) + "\n")
    return run_id


class RunWatch:
    """The run's status, asked of the SuperLink's Control API over one loopback HTTPS client kept
    open (Flower's own `ControlHttpClient`, the one `flwr ls` builds), instead of a `flwr ls`
    process per look: that process cost ~113 MiB and most of a second of CPU each time, about
    10.5 s of CPU a minute when the service looked every second."""

    def __init__(self, address: str, ca: Path) -> None:
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per look
        self.client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=False,
            root_certificates=ca.read_bytes(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )

    def status(self, run_id: int) -> str:
        """'finished:completed', 'running', ...; '' when the SuperLink does not answer (yet)."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=E0611

        try:
            res = self.client.ListRuns(ListRunsRequest(run_id=run_id))
        except Exception as exc:  # a SuperLink that is down shows up as its process exiting
            log.debug("ListRuns failed: %s", exc)
            return ""
        runs = [run_from_proto(p) for p in res.run_dict.values()]
        if not runs:
            return ""
        st = runs[0].status
        return f"{st.status}:{st.sub_status}" if st.sub_status else str(st.status)

    def close(self) -> None:
        self.client.close()


def _record(svc: Service) -> None:
    """Who is running where (for operators, `fedloom stop`, and tests that simulate a crash)."""
    import os

    from .control import SERVICE, process_start_time

    info = {
        "pid": os.getpid(),
        "pid_started": process_start_time(os.getpid()),  # `fedloom stop` checks it: a reused pid is not ours
        "superlink_pid": svc.superlink.pid if svc.superlink else None,
        "gateway_pid": svc.gateway.pid if svc.gateway else None,
        "superlink_port": svc.superlink_port,
        "fleet_port": svc.fleet_port,
        "bind": svc.bind,
    }
    (svc.state / SERVICE).write_text(json.dumps(info) + "\n")


def _pass_on(events: EventTail, on_event: Callable[[dict], object] | None) -> None:
    """Hand the journal's new events to `on_event` (read even without one, so later reads stay new-only)."""
    for event in events.new():
        if on_event:
            on_event(event)


def _finished_code(svc: Service, status: str) -> int:
    """start()'s exit code for a run Flower reports finished: 2 refused, 0 completed, 1 failed (its log tail shown)."""
    from .journal import read_status

    if (read_status(svc.state) or {}).get("state") == "refused":
        return 2
    if "completed" in status or "success" in status:
        return 0
    tail = svc.flwr("log", str(svc.run_id), CONNECTION, "--show", check=False)
    log.error(
        "run %s ended as %s; its log ends with:\n%s",
        svc.run_id,
        status,
        "\n".join((tail.stdout + tail.stderr).splitlines()[-25:]),
    )
    return 1


def _helper_exited(svc: Service) -> bool:
    """Whether the SuperLink or the gateway died under a running run (logged): the run cannot go on without it."""
    for name, proc in (("SuperLink", svc.superlink), ("gateway", svc.gateway)):
        if proc is not None and proc.poll() is not None:
            log.error("the %s exited (code %s); see %s/logs", name, proc.returncode, svc.state)
            return True
    return False


def start(kit: str, state_dir: str, bind: str, app: str, node_wait: float, on_event=None) -> int:
    """Run the service until the run ends: 0 finished, 1 failed, 2 refused (see status.json), 128+signal stopped.

    `on_event(event)` hears each event of coordinator.journal (stage lines, refusals, rounds) as it is written."""
    from .control import finished_run
    from .journal import EventTail, mark

    svc = Service(Path(kit).resolve(), Path(state_dir).resolve(), bind, Path(app).resolve())
    plan_text = _need(svc.kit / "plan.json").read_text()
    from fedloom.plan import Plan

    plan = Plan.from_json(plan_text)
    check_app(svc.app, plan.app_hash)
    if finished_run(svc.state, plan.hash) is not None:
        return 0
    check_resume(svc)
    svc.state.mkdir(parents=True, exist_ok=True)
    stopping = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    watch: RunWatch | None = None
    try:
        start_superlink(svc)
        start_gateway(svc)
        names = register_nodes(svc)
        stop_stale_run(svc)
        _record(svc)
        log.info(
            "SuperLink on 127.0.0.1:%d (loopback; fleet door :%d), gateway on %s, %d member nodes registered",
            svc.superlink_port,
            svc.fleet_port,
            bind,
            len(names),
        )
        svc.run_id = submit(svc, node_wait, plan.app_hash)
        log.info("run %s submitted; state in %s", svc.run_id, svc.state)
        events = EventTail(svc.state)  # only this start's events: earlier starts' are in the file already
        watch = RunWatch(f"127.0.0.1:{svc.superlink_port}", svc.kit / "ca.crt")
        looks = 0
        while not stopping:
            _pass_on(events, on_event)
            looks += 1
            status = watch.status(svc.run_id) if looks % STATUS_EVERY == 1 else ""
            if "finished" in status:
                _pass_on(events, on_event)
                return _finished_code(svc, status)
            if _helper_exited(svc):
                return 1
            time.sleep(WATCH_INTERVAL)
        log.info("stopping: run %s, gateway, SuperLink", svc.run_id)
        if svc.run_id is not None:
            svc.flwr("stop", str(svc.run_id), CONNECTION, check=False)
        mark(svc.state, "stopped", stopped_by=signal.Signals(stopping).name)
        return 128 + stopping
    finally:
        if watch is not None:
            watch.close()
        stop(svc.gateway)
        stop(svc.superlink)
