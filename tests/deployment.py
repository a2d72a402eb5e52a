"""Helpers for deployment tests: a provisioned federation whose coordinator and participant
nodes run as real processes (`fedloom coordinator start`, `fedloom participant start`) on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import tasks
from fedloom.kits import load_member_kit
from fedloom.processes import free_port
from fedloom.session import protocol_params

ROOT = Path(__file__).resolve().parents[1]
FEDLOOM = [sys.executable, "-m", "console.cli"]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0")
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e.update(extra)
    return e


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
    return pids


def kill_group(pid: int | None, sig: int = signal.SIGKILL) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


@dataclass
class Federation:
    root: Path
    members: list[str]
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the coordinator's public address (a namespace's address in netns tests)
    namespaces: dict[str, str] = field(default_factory=dict)  # "coordinator" / member -> netns name

    @property
    def kits(self) -> Path:
        return self.root / "kits"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _in(self, who: str, cmd: list[str]) -> list[str]:
        """The command, inside `who`'s network namespace if it has one. A non-loopback federation
        address without a namespace is refused: its traffic would leave this machine."""
        ns = self.namespaces.get(who)
        if ns is None and not self.host.startswith("127."):
            raise AssertionError(f"{who} has no network namespace but the federation address is {self.host}")
        return ["ip", "netns", "exec", ns, *cmd] if ns else cmd

    def provision(self, plan_toml: str, policy_toml: str = "") -> None:
        members = "".join(f'[[members]]\nname = "{m}"\n' for m in self.members)
        text = (
            f'[federation]\nname = "test-federation"\naddress = "{self.address}"\nsans = ["{self.host}"]\n'
            f"{members}[plan]\n{plan_toml}\n" + (f"[policy]\n{policy_toml}\n" if policy_toml else "")
        )
        (self.root / "federation.toml").write_text(text)
        cmd = [*FEDLOOM, "provision", str(self.root / "federation.toml"), "--out", str(self.kits), "--app", str(ROOT)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tasks.export_partitions("digits", self.root / "data", len(self.members), "iid")

    def start_coordinator(self, state: str, node_wait: float = 300) -> subprocess.Popen:
        cmd = [
            *FEDLOOM,
            "coordinator",
            "start",
            "--kit",
            str(self.kits / "coordinator"),
            "--state-dir",
            str(self.root / state),
            "--app",
            str(ROOT),
            "--bind",
            self.address,
            "--node-wait",
            str(node_wait),
        ]
        log = (self.root / f"{state}.out").open("ab")
        proc = subprocess.Popen(
            self._in("coordinator", cmd), stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True
        )
        self.procs[f"coordinator:{state}"] = proc
        return proc

    def start_participant(
        self, member: str, state: str, heartbeat: float | None = None, **extra_env: str
    ) -> subprocess.Popen:
        """`fedloom participant start`; `heartbeat`: its --heartbeat (Flower's 30 s when None)."""
        i = self.members.index(member)
        cmd = [
            *FEDLOOM,
            "participant",
            "start",
            "--kit",
            str(self.kits / member),
            "--data",
            str(self.root / "data" / f"participant-{i}.npz"),
            "--device",
            "cpu",
            "--state-dir",
            str(self.root / state),
            *(["--heartbeat", f"{heartbeat:g}"] if heartbeat is not None else []),
        ]
        log = (self.root / f"{state.replace('/', '-')}.out").open("ab")
        proc = subprocess.Popen(
            self._in(member, cmd), stdout=log, stderr=subprocess.STDOUT, env=env(**extra_env), start_new_session=True
        )
        self.procs[f"participant:{state}"] = proc
        return proc

    def wait_for(self, path: Path, timeout: float, predicate=lambda p: True, poll: float = 1.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists() and predicate(path):
                return
            for name, proc in self.procs.items():
                if name.startswith("coordinator") and proc.poll() not in (None, 0):
                    raise AssertionError(f"{name} exited with {proc.returncode}: {self.tail(name)}")
            time.sleep(poll)
        raise TimeoutError(f"{path} did not appear within {timeout:.0f} s")

    def stage_asked(self, state: str, round_: int, stage: str) -> bool:
        """Whether the coordinator's journal (events.jsonl) says it sent `stage` of round `round_`."""
        p = self.root / state / "events.jsonl"
        for line in p.read_text().splitlines() if p.exists() else []:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line still being written
                continue
            if event["kind"] == "stage" and (event["round"], event["stage"]) == (round_, stage):
                return True
        return False

    def checkpoint_round(self, state: str) -> int:
        p = self.root / state / "checkpoint.json"
        return json.loads(p.read_text())["round"] if p.exists() else 0

    def tail(self, name: str, lines: int = 40) -> str:
        state = name.split(":", 1)[1].replace("/", "-")
        f = self.root / f"{state}.out"
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else ""

    def crash_coordinator(self, state: str) -> None:
        """SIGKILL the service, its SuperLink and gateway, and the ServerApp: a machine crash."""
        info = json.loads((self.root / state / "service.json").read_text())
        for pid in (info["superlink_pid"], info["gateway_pid"], info["pid"]):
            kill_group(pid)
        for pid in processes_mentioning(f":{info['superlink_port']}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs[f"coordinator:{state}"].wait(30)

    def crash_participant(self, state: str) -> None:
        info = json.loads((self.root / state / "service.json").read_text())
        kill_group(info["supernode_pid"])
        kill_group(self.procs[f"participant:{state}"].pid)

    def freeze_participant(self, state: str, until: str, coordinator: str = "state", limit: float = 180) -> None:
        """Stop a member's SuperNode (SIGSTOP) until the coordinator's run log says `until` (or
        `limit` seconds pass), then let it go on: a machine that hangs, or a network that drops it,
        for longer than Flower's heartbeat patience (when exactly the SuperLink gives up on it
        depends on when its last heartbeat went out, so the test waits for the coordinator)."""
        pid = json.loads((self.root / state / "service.json").read_text())["supernode_pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.time() + limit
            while time.time() < deadline and not self.run_log_mentions(coordinator, until):
                time.sleep(1)
            time.sleep(2)
        finally:
            os.kill(pid, signal.SIGCONT)

    def heartbeat_intervals(self, state: str) -> list[float]:
        """What each node told the SuperLink about its heartbeats (Flower's node table)."""
        db = self.root / state / "superlink.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return sorted(row[0] for row in conn.execute("SELECT heartbeat_interval FROM node"))

    def run_log_mentions(self, state: str, text: str) -> bool:
        """Whether the coordinator's ServerApp log (Flower keeps it in the SuperLink's database) has `text`."""
        db = self.root / state / "superlink.db"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                return any(text in str(row[0]) for row in conn.execute("SELECT log FROM task_logs"))
        except sqlite3.Error:
            return False

    def stop_all(self) -> None:
        for proc in self.procs.values():
            kill_group(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(1, deadline - time.time()))
            kill_group(proc.pid)
        for pid in processes_mentioning(str(self.root)):  # anything left that belongs to this test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


ROGUE_PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
[project]
name = "rogue"
version = "1.0.0"
[tool.flwr.app]
publisher = "mallory"
[tool.flwr.app.components]
serverapp = "rogue_app:server"
clientapp = "rogue_app:client"
[tool.flwr.app.config]
marker = "{marker}"
"""

ROGUE_APP = '''"""An app nobody agreed to run: if its ClientApp ever executes, it leaves a marker file."""
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg, context):
    Path(str(context.run_config["marker"])).write_text("rogue code ran here")
    return Message(RecordDict({"x": ConfigRecord({"ok": 1})}), reply_to=msg)


@server.main()
def main(grid, context):
    deadline = time.time() + 60
    while not list(grid.get_node_ids()) and time.time() < deadline:
        time.sleep(1)
    msgs = [Message(RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=n, message_type="train")
            for n in grid.get_node_ids()]
    list(grid.send_and_receive(msgs, timeout=60))
'''


def rogue_app(where: Path, marker: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "pyproject.toml").write_text(ROGUE_PYPROJECT.format(marker=marker))
    (where / "rogue_app.py").write_text(ROGUE_APP)
    return where


def flwr_connection(home: Path, name: str, address: str, ca: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\nroot-certificates = "{ca}"\n'
    )
    return env(FLWR_HOME=str(home))


class Network:
    """Hosts as network namespaces, joined by a bridge in a "switch" namespace of their own:
    both ends of every connection stay inside namespaces this test made; nothing touches the
    host's interfaces. Deleted (with everything running in them) on close."""

    def __init__(self, prefix: str, hosts: list[str], subnet: str = "10.77.0") -> None:
        self.prefix, self.subnet = prefix, subnet
        self.switch = f"{prefix}-sw"
        self.hosts = {h: f"{prefix}-{i}" for i, h in enumerate(hosts)}
        self.address = {h: f"{subnet}.{i + 1}" for i, h in enumerate(hosts)}

    def _ip(self, *args: str, ns: str | None = None) -> None:
        cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    def __enter__(self) -> Network:
        for ns in (self.switch, *self.hosts.values()):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
            self._ip("link", "set", "lo", "up", ns=ns)  # servers and Flower's own loopback APIs need lo
        self._ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        self._ip("link", "set", "br0", "up", ns=self.switch)
        for i, (host, ns) in enumerate(self.hosts.items()):
            a, b = f"{self.prefix[:6]}h{i}", f"{self.prefix[:6]}s{i}"
            self._ip("link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", self.switch)
            self._ip("link", "set", b, "master", "br0", ns=self.switch)
            self._ip("link", "set", b, "up", ns=self.switch)
            self._ip("addr", "add", f"{self.address[host]}/24", "dev", a, ns=ns)
            self._ip("link", "set", a, "up", ns=ns)
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (*self.hosts.values(), self.switch):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def namespaces_available() -> bool:
    if os.geteuid() != 0 or (not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists()):
        return False
    probe = f"fl-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


# reconnect_grace: how long the coordinator waits for a node that missed its heartbeats (within a
# stage) before dropping it. The frozen member is let go 2 s after the coordinator starts waiting, so
# 30 s is ample; the member killed in round 2 costs Flower's heartbeat patience (2 x 30 s, fixed in
# Flower 1.41) plus this grace, so a short one keeps the module fast. The default is 120 s.
SECURE_PLAN = """rounds = 2
reconnect_grace = 30
[plan.task]
name = "digits"
partition = "iid"
[plan.training]
epochs = 1
"""


def rows(path: Path) -> dict[int, dict]:
    return {r["round"]: r for r in map(json.loads, path.read_text().splitlines())}


def largest_secure_error(fed: Federation, state: str, rounds: range | list[int]) -> list[float]:
    """Per round: the largest |secure mean - plaintext mean of the aggregated members' true updates|,
    in quantization steps. Members in verification mode (FEDLOOM_VERIFY_DIR, their own choice) leave
    the model they received and their true update; the model after the last round is the coordinator's
    newest checkpoint (it keeps only its last few, so earlier rounds come from what members received)."""
    kit = load_member_kit(fed.kits / fed.members[0])
    by_round = rows(fed.root / state / "outputs" / "metrics.jsonl")
    names = {m.id: m.name for m in kit.roster}
    newest = max((fed.root / state / "checkpoints").glob("round-*.safetensors"))
    assert int(newest.stem.split("-")[1]) == rounds[-1], newest

    def record(r: int, member: int) -> Path:
        return fed.root / "verify" / names[member] / f"r{r}-m{member}.npz"

    def received(r: int) -> np.ndarray:
        """The model of round r, as any member that trained in it recorded it."""
        path = next(p for m in names if (p := record(r, m)).exists())
        with np.load(path) as f:
            return f["received"].astype(np.float64)

    params = protocol_params(kit.plan, received(rounds[0]).size, len(kit.roster))
    errors = []
    for r in rounds:
        total, weight = 0.0, 0
        for member in by_round[r]["aggregated"]:
            with np.load(record(r, member)) as f:
                w = min(int(f["examples"]), params.max_weight)
                total = total + np.clip(f["update"].astype(np.float64), -params.clip, params.clip) * w
                weight += w
        after = load_file(newest)["model"].astype(np.float64) if r == rounds[-1] else received(r + 1)
        secure_mean = after - received(r)
        errors.append(float(np.max(np.abs(secure_mean - total / weight))) / params.step)
    return errors
