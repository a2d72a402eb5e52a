"""A real deployment on loopback: where a round's seconds go, plaintext and secure, same plan.

    fedloom bench deployment                         # 3 members, 3 rounds each way, 20 s idle window
    fedloom bench deployment --rounds 4 --json deployment.json --label after
    fedloom bench deployment --quick                 # 1 plaintext round, 5 s idle: a smoke run
    fedloom bench deployment --again DIR             # recompute the row from a --keep DIR

Per mode (plaintext, then secure) it provisions a federation of `--members` members with the same
plan apart from `secure.enabled` (digits CNN, iid, 1 epoch), and runs it exactly as operators do:
`fedloom coordinator start` (real SuperLink behind the TLS gateway, node authentication) and one
`fedloom participant start` per member (a real SuperNode, its app guard), all on 127.0.0.1.

Figures:
* round seconds: the coordinator's own per-round wall time (outputs/metrics.jsonl); round 1 is
  reported apart (secure round 1 carries its three set-up trips), the headline is rounds 2..R.
* trip seconds: the coordinator's push of a trip to its last reply (`FEDLOOM_TRIP_LOG` timestamps
  from the ServerApp's transport).
* where a member's part of a trip goes, from timestamps the member's SuperNode wrapper and app
  guard note: pull wait (push -> the node has pulled the message), launch (->
  Flower's `flwr-clientapp` process exists: SuperExec's task poll), start + imports (-> the app is
  loaded: interpreter, flwr, torch, fedloom, app bundle check), handler (the ClientApp's work;
  train = local training inside it, the rest is evaluation + protocol), reply (handler done -> the
  node has uploaded the reply); collect (last upload -> the coordinator has the last reply).
* coordinator CPU: seconds of CPU per minute of wall time of the whole coordinator process tree
  (service, SuperLink, gateway, Flower's SuperExec and ServerApp, `flwr` children), while idle (run
  submitted, the ServerApp waiting for members, none connected yet: the `--idle` window before the
  members start) and over the rounds. 60 s/min is one core.

Absolute times depend on the machine's load: compare rows measured in one session.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.bench import common
from fedloom import triplog
from fedloom.processes import free_port

FEDLOOM = [sys.executable, "-m", "console.cli"]
STEPS = ("pull_wait", "launch", "start_imports", "handler", "train", "reply", "collect")
PLAN = """rounds = {rounds}
seed = 0
[plan.task]
name = "{task}"
partition = "iid"
[plan.training]
epochs = 1
[plan.secure]
enabled = {secure}
"""


def app_dir() -> Path:
    """The fedloom app (the directory with pyproject.toml that `fedloom provision --app` hashes)."""
    return Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ process-tree CPU
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children) from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / tick  # ppid; utime stime cutime cstime


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every descendant (exited ones count through their parents)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            parent[int(d.name)], cpu[int(d.name)] = st
    total = 0.0
    for pid, c in cpu.items():
        p = pid
        while p and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += c
    return total


@dataclass
class CpuSampler:
    """CPU of a process tree sampled once a second, so a window can be read after the tree exits."""

    root: int
    samples: list[tuple[float, float]] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append((time.time(), tree_cpu(self.root)))

    def per_minute(self, start: float, end: float) -> float | None:
        """CPU seconds per wall minute between the samples nearest `start` and `end`."""
        inside = [s for s in self.samples if start - 1.5 <= s[0] <= end + 1.5]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return 60.0 * (c1 - c0) / (t1 - t0)


# ------------------------------------------------------------------------------ one federation
@dataclass
class Federation:
    root: Path
    members: list[str]
    secure: bool
    rounds: int
    task: str = "digits"  # `fedloom bench memory` runs its sized synthetic tasks here
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def kits(self) -> Path:
        return self.root / "kits"

    def env(self, trip_log: Path) -> dict[str, str]:
        e = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0")
        e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
        e[triplog.ENV] = str(trip_log)
        return e

    def provision(self) -> None:
        import tasks

        members = "".join(f'[[members]]\nname = "{m}"\n' for m in self.members)
        plan = PLAN.format(rounds=self.rounds, secure="true" if self.secure else "false", task=self.task)
        text = (
            f'[federation]\nname = "bench-deployment"\naddress = "127.0.0.1:{self.port}"\nsans = ["127.0.0.1"]\n'
            f"{members}[plan]\n{plan}"
        )
        (self.root / "federation.toml").write_text(text)
        toml, app = str(self.root / "federation.toml"), str(app_dir())
        cmd = [*FEDLOOM, "provision", toml, "--out", str(self.kits), "--app", app]
        env = self.env(self.root / "trips-provision.jsonl")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"fedloom provision failed: {(proc.stdout + proc.stderr)[-1500:]}")
        tasks.export_partitions(self.task, self.root / "data", len(self.members), "iid")

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = (self.root / f"{name}.out").open("ab")
        env = self.env(self.root / f"trips-{name}.jsonl")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_coordinator(self) -> subprocess.Popen:
        return self._start(
            "coordinator",
            [
                *FEDLOOM,
                "coordinator",
                "start",
                "--kit",
                str(self.kits / "coordinator"),
                "--state-dir",
                str(self.root / "state"),
                "--app",
                str(app_dir()),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--node-wait",
                "600",
            ],
        )

    def start_member(self, i: int) -> None:
        m = self.members[i]
        self._start(
            m,
            [
                *FEDLOOM,
                "participant",
                "start",
                "--kit",
                str(self.kits / m),
                "--data",
                str(self.root / "data" / f"participant-{i}.npz"),
                "--device",
                "cpu",
                "--state-dir",
                str(self.root / "nodes" / m),
            ],
        )

    def tail(self, name: str, lines: int = 30) -> str:
        f = self.root / f"{name}.out"
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else ""

    def check_finished(self, coord: subprocess.Popen, timeout: float) -> None:
        """Raise unless the coordinator has exited, and with 0 (its log's tail in the message)."""
        if coord.poll() is None:
            raise TimeoutError(f"the run did not finish within {timeout:.0f} s: {self.tail('coordinator')}")
        if coord.returncode != 0:
            raise RuntimeError(f"the coordinator exited with {coord.returncode}: {self.tail('coordinator')}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(1.0, deadline - time.time()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _wait(cond, timeout: float, what: str, fed: Federation, sampler: CpuSampler | None = None) -> None:
    deadline = time.time() + timeout
    while not cond():
        coord = fed.procs.get("coordinator")
        if coord is not None and coord.poll() not in (None, 0):
            raise RuntimeError(f"the coordinator exited ({coord.returncode}): {fed.tail('coordinator')}")
        if time.time() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s; coordinator output:\n{fed.tail('coordinator')}")
        if sampler is not None:
            sampler.sample()
        time.sleep(1.0)


def run_mode(work: Path, secure: bool, members: int, rounds: int, idle: float, timeout: float) -> dict[str, Any]:
    """Provision and run one federation; return its raw measurements."""
    fed = Federation(work / ("secure" if secure else "plain"), [f"m{i}" for i in range(members)], secure, rounds)
    fed.root.mkdir(parents=True)
    fed.provision()
    try:
        coord = fed.start_coordinator()
        sampler = CpuSampler(coord.pid)
        # idle = the ServerApp is up and waiting for members (its start-up is not idle)
        waiting = fed.root / "trips-coordinator.jsonl"
        _wait(lambda: (fed.root / "state" / "run.json").exists(), timeout, "no run was submitted", fed)
        _wait(lambda: waiting.exists() and "waiting_for_nodes" in waiting.read_text(), timeout, "no ServerApp", fed)
        idle_start = time.time()
        _wait(lambda: time.time() - idle_start >= idle, idle + 60, "idle window", fed, sampler)
        sampler.sample()
        idle_end = time.time()
        for i in range(members):
            fed.start_member(i)
        deadline = time.time() + timeout
        while coord.poll() is None and time.time() < deadline:
            sampler.sample()
            time.sleep(1.0)
        fed.check_finished(coord, timeout)
    finally:
        fed.stop_all()
    cpu = {
        "idle_cpu_per_min": sampler.per_minute(idle_start, idle_end),
        "round_cpu_per_min": None,
        "idle_window": [idle_start, idle_end],
        "samples": sampler.samples,
    }
    (fed.root / "cpu.json").write_text(json.dumps(cpu) + "\n")
    return analyze(fed.root)


def analyze(root: Path) -> dict[str, Any]:
    """A mode's raw measurements from what its run left in `root` (also for `--from DIR`)."""
    metrics = root / "state" / "outputs" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    coord_log = triplog.read(root / "trips-coordinator.jsonl")
    member_logs = [triplog.read(p) for p in sorted(root.glob("trips-m*.jsonl"))]
    trips = split_trips(coord_log)
    cpu = json.loads((root / "cpu.json").read_text()) if (root / "cpu.json").exists() else {}
    sampler = CpuSampler(0, [tuple(x) for x in cpu.get("samples", [])])
    round_cpu = sampler.per_minute(trips[0]["push"], trips[-1]["end"]) if trips else None
    return {
        "metrics": rows,
        "trips": trips,
        "steps": member_steps(trips, member_logs),
        "idle_cpu_per_min": cpu.get("idle_cpu_per_min"),
        "round_cpu_per_min": round_cpu if round_cpu is not None else cpu.get("round_cpu_per_min"),
    }


# ------------------------------------------------------------------------------ trip analysis
def split_trips(events: list[dict]) -> list[dict[str, Any]]:
    """The coordinator's trips: each `push` and the replies noted until the next push."""
    trips: list[dict[str, Any]] = []
    for e in sorted(events, key=lambda e: e["t"]):
        if e["event"] == "push":
            trips.append({"push": e["t"], "end": e["t"], "replies": 0})
        elif e["event"] == "reply" and trips:
            trips[-1]["end"] = e["t"]
            trips[-1]["replies"] += 1
    return [t | {"seconds": t["end"] - t["push"]} for t in trips if t["replies"]]


def _after(events: list[dict], name: str, t: float, until: float) -> float | None:
    return next((e["t"] for e in events if e["event"] == name and t <= e["t"] <= until), None)


STEP_EVENTS = ("clientapp_start", "app_loaded", "handler_start", "train_start", "train_end", "handler_end")


def member_steps(trips: list[dict[str, Any]], logs: list[list[dict]]) -> list[dict[str, float]]:
    """One dict of step durations per (trip, member) that the member's log shows taking part."""
    out = []
    for trip in trips:
        steps, sent_times = [], []
        for log in logs:
            events = sorted((e for e in log if e.get("t") is not None), key=lambda e: e["t"])
            got = _after(events, "received", trip["push"], trip["end"])
            if got is None:
                continue
            sent = _after(events, "sent", got, trip["end"] + 5)
            until = sent if sent is not None else trip["end"]
            marks = {k: _after(events, k, trip["push"], until) for k in STEP_EVENTS}
            # Flower creates the task (and SuperExec may start the ClientApp) before the node has
            # downloaded the message's objects: "pulled" is when the node had the message itself
            pulled = _after(events, "pulled", trip["push"], got)
            if pulled is None:  # older logs: the earliest sign that the node had it
                pulled = min(t for t in (got, marks["clientapp_start"]) if t is not None)
            steps.append(_durations(trip["push"], pulled, marks, sent))
            if sent is not None:
                sent_times.append(sent)
        if sent_times:
            for step in steps:
                step["collect"] = trip["end"] - max(sent_times)
        out += steps
    return out


def _durations(push: float, pulled: float, m: dict[str, float | None], sent: float | None) -> dict[str, float]:
    def gap(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    d = {
        "pull_wait": pulled - push,
        "launch": gap(pulled, m["clientapp_start"]),
        "start_imports": gap(m["clientapp_start"], m["app_loaded"]),
        "handler": gap(m["handler_start"], m["handler_end"]),
        "train": gap(m["train_start"], m["train_end"]),
        "reply": gap(m["handler_end"], sent),
    }
    return {k: v for k, v in d.items() if v is not None}


# ------------------------------------------------------------------------------ rows and output
def summarize(raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    rows = raw["metrics"]
    walls = [r["wall_seconds"] for r in rows if r.get("wall_seconds")]
    row: dict[str, Any] = {
        f"{prefix}_rounds_done": len(walls),
        f"{prefix}_first_round_seconds": walls[0] if walls else None,
        **common.stats(f"{prefix}_round_seconds", walls[1:] or walls),
        **common.stats(f"{prefix}_trip_seconds", [t["seconds"] for t in raw["trips"]]),
        f"{prefix}_trips": len(raw["trips"]),
        f"{prefix}_idle_cpu_s_per_min": raw["idle_cpu_per_min"],
        f"{prefix}_round_cpu_s_per_min": raw["round_cpu_per_min"],
    }
    for step in STEPS:
        row.update(common.stats(f"{prefix}_{step}_seconds", [s[step] for s in raw["steps"] if step in s]))
    return row


def run(
    members: int, rounds: int, idle: float, modes: list[str], timeout: float, keep: str | None, again: str | None = None
) -> dict[str, Any]:
    """One row: each mode run (or, with `again`, re-read from a kept work directory)."""
    work = Path(again or keep or tempfile.mkdtemp(prefix="fedloom-bench-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"members": members, "rounds": rounds}
    trips: list[float] = []
    try:
        for mode in modes:
            raw = analyze(work / mode) if again else run_mode(work, mode == "secure", members, rounds, idle, timeout)
            row.update(summarize(raw, mode))
            trips += [t["seconds"] for t in raw["trips"]]
    finally:
        if not keep and not again:
            shutil.rmtree(work, ignore_errors=True)
    row.update(common.stats("trip_seconds", trips))
    if row.get("plain_round_seconds") and row.get("secure_round_seconds"):
        row["secure_over_plain"] = row["secure_round_seconds"] / row["plain_round_seconds"]
    idle_cpu = [row[f"{m}_idle_cpu_s_per_min"] for m in modes if row.get(f"{m}_idle_cpu_s_per_min") is not None]
    row["idle_cpu_percent"] = statistics.median(idle_cpu) / 60 * 100 if idle_cpu else None
    return row


def table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="deployment on loopback (seconds; median over min-max)", show_lines=True)
    for col in ("", "rounds", "round 1", "round", "trip", *STEPS, "CPU s/min idle", "CPU s/min rounds"):
        t.add_column(col, justify="right")
    for r in rows:
        for mode in ("plain", "secure"):
            if f"{mode}_rounds_done" not in r:
                continue
            first = r.get(f"{mode}_first_round_seconds")
            idle_cpu, round_cpu = r.get(f"{mode}_idle_cpu_s_per_min"), r.get(f"{mode}_round_cpu_s_per_min")
            t.add_row(
                f"{r.get('label') or ''} {mode}".strip(),
                str(r[f"{mode}_rounds_done"]),
                "-" if first is None else f"{first:.1f}",
                common.span(r, f"{mode}_round_seconds", "{:.1f}"),
                common.span(r, f"{mode}_trip_seconds", "{:.2f}"),
                *(common.span(r, f"{mode}_{s}_seconds", "{:.2f}") for s in STEPS),
                "-" if idle_cpu is None else f"{idle_cpu:.1f}",
                "-" if round_cpu is None else f"{round_cpu:.1f}",
            )
    return t


def summary_lines(r: dict[str, Any]) -> list[str]:
    out = [f"median trip {r['trip_seconds']:.2f} s (target <= 4 s)" if r.get("trip_seconds") else "no trips measured"]
    if r.get("secure_over_plain"):
        out.append(f"secure round / plaintext round = {r['secure_over_plain']:.2f} (target <= 1.5)")
    if r.get("idle_cpu_percent") is not None:
        out.append(f"coordinator idle CPU {r['idle_cpu_percent']:.1f} % of one core (target < 5 %)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench deployment", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--members", type=int, default=3, help="members (SuperNodes) on loopback (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per mode (default 3)")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle coordinator measured per mode")
    ap.add_argument("--modes", default="plain,secure", help="plain, secure or both (default plain,secure)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a mode's run may take")
    ap.add_argument("--label", default="", help="a name for this row (e.g. before / after)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep kits, logs and trip logs")
    ap.add_argument("--again", metavar="DIR", help="no run: recompute the row from a --keep directory")
    ap.add_argument("--quick", action="store_true", help="1 plaintext round, 5 s idle window: a smoke run")
    ap.add_argument("--json", metavar="PATH", help="write the row as a JSON document ('-': stdout)")
    a = ap.parse_args(argv)
    modes = ["plain"] if a.quick else [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.again:
        modes = [m for m in modes if (Path(a.again) / m).is_dir()]
    if a.quick:
        a.rounds, a.idle = 1, 5.0
    bad = [m for m in modes if m not in ("plain", "secure")]
    if bad or not modes or a.members < 3 or a.rounds < 1 or a.idle < 0:
        print("fedloom bench deployment: --modes is plain and/or secure, --members >= 3, --rounds >= 1, --idle >= 0")
        return 2
    con = common.console(a.json == "-")
    try:
        row = {"label": a.label, **run(a.members, a.rounds, a.idle, modes, a.timeout, a.keep, a.again)}
    except (RuntimeError, TimeoutError) as exc:
        con.print(f"[red]fedloom bench deployment: {exc}[/red]")
        return 1
    doc = common.document("deployment", [row], argv)
    for line in common.header_lines(doc):
        con.print(line)
    con.print(table([row]))
    for line in summary_lines(row):
        con.print(line)
    common.write_json(a.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
