"""Peak memory of a secure round at d parameters: the coordinator's side and a member's.

    fedloom bench memory                                  # d = 1e7; simulation and deployment
    fedloom bench memory --d 1e7,1e8,1.35e8 --mode deployment --json memory.json --label after
    fedloom bench memory --quick                          # d = 1e4, simulation, 1 round: a smoke run

Per (d, mode) a federation runs the synthetic task with exactly d parameters (`synthetic-1e7`,
`synthetic-1e8`, `synthetic-1.35e8`, `synthetic-1e4`: a tiny classifier plus one flat parameter,
16 features, a few hundred samples; training is one cheap pass over d per step), secure
aggregation on, 1 round by default:

* simulation: `fedloom simulate` in a child process with `--members` virtual participants (4 by
  default), one at a time (each takes all cores: Ray runs one ClientApp actor). The coordinator is
  that process (the ServerApp runs in it, and so does Flower's in-memory SuperLink state that holds
  the messages); the members are its Ray worker processes. Its RSS includes the pages of Ray's
  shared object store it maps (RssShmem: the messages to and from the actors); the private part
  (RssAnon) is reported beside it.
* deployment: `fedloom coordinator start` and one `fedloom participant start` per member
  (3 by default) on 127.0.0.1, as `fedloom bench deployment` runs them. The coordinator is the
  `flwr-serverapp` process (the target's "ServerApp process"); the whole coordinator process tree
  (SuperLink, gateway, service, ServerApp) is reported beside it. A member is the largest process
  of its tree (the forked child that handles a message).

Figures (bytes; sampled every `--interval` s from /proc, and the kernel's high-water mark VmHWM,
reset through /proc/PID/clear_refs when the coordinator goes idle, so spikes between samples count):

* coordinator_idle_rss_bytes: the coordinator's RSS when its ServerApp starts waiting for members
  (the initial model is built, nothing is sent yet);
* coordinator_peak_rss_bytes: its peak from then to the end of the run; ratio = (peak - idle) / 4d,
  target <= 4 in simulation, <= 3 in deployment;
* member_base_rss_bytes: a fresh interpreter with what a member's warm process preloads (torch, Flower's ClientApp
  runtime, the guard, the ClientApp): memory that does not grow with d; member_peak_process: which
  process of a member's tree peaked;
  member_peak_rss_bytes: the largest member process at its peak; member_ratio = (peak - base) / 4d,
  target <= model + optimizer state + 2 in units of 4d (the synthetic task: model 1, SGD momentum 1,
  its gradient 1, so <= 5);
* machine_shmem_above_idle_bytes: the machine's shared memory (Shmem in /proc/meminfo) at its peak
  above the coordinator's idle moment. In a simulation that is Ray's object store, where every
  message between the coordinator and the actors lies while in flight; its pages stay allocated
  once touched, and the processes drop them from their RSS when done (fedloom.raystore), so the
  store's share of the machine is reported here and not in any process's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.bench import common
from fedloom import triplog

SIZES = {10**4: "synthetic-1e4", 10**7: "synthetic-1e7", 10**8: "synthetic-1e8", 134_515_008: "synthetic-1.35e8"}
ALIASES = {"1e4": 10**4, "1e7": 10**7, "1e8": 10**8, "1.35e8": 134_515_008}
TARGET = {"simulation": 4.0, "deployment": 3.0}
MEMBER_STATE = 3.0  # model + momentum + gradient of the synthetic task, in units of 4d
MEMBER_TARGET = MEMBER_STATE + 2.0
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ /proc
def _status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, kb = line.split(":", 1)
            vals[key] = int(kb.split()[0]) * 1024
    return (vals["VmRSS"], vals["VmHWM"]) if len(vals) == 2 else None


def _field(pid: int, name: str) -> int:
    """One `kB` field of /proc/PID/status in bytes (0 once the process is gone): RssAnon is the
    process's private memory, RssShmem the shared pages it maps (Ray's object store, for a
    simulation's driver: the transport to the participants, owned by Ray's store)."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(name + ":"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024


def machine_shmem() -> int:
    """The machine's shared memory in use (Shmem in /proc/meminfo, bytes): tmpfs files, among them
    Ray's object store (/dev/shm/plasma...), whose pages stay allocated once touched."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


def _parents() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """`root` and every live process below it."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents or pid == root:
            out.append(pid)
        todo += kids.get(pid, [])
    return out


def _short(command: str) -> str:
    """A command line as `program arg arg`, paths cut to their last part (the bench's rows)."""
    return " ".join(Path(w).name if "/" in w else w for w in command.split()[:4])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def reset_peak(pid: int) -> None:
    """Reset the kernel's VmHWM of a process of ours to its current RSS (clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


BASE_PROBE = (
    "import importlib, pathlib; from participant import warm; "
    "[importlib.import_module(m) for m in warm.PRELOAD]; "
    "print(next(int(x.split()[1]) for x in pathlib.Path('/proc/self/status').read_text().splitlines() "
    "if x.startswith('VmRSS:')) * 1024)"
)


def member_base_rss() -> int | None:
    """RSS of a fresh interpreter with what a member's warm process loads before it builds a model
    (`participant.warm.PRELOAD`: torch, Flower's ClientApp runtime, the guard, fedloom's ClientApp):
    the baseline a member's peak is measured from, memory that does not grow with d (a forked child
    inherits it; a Ray worker also has Ray, so in simulation the ratio is, if anything, high)."""
    proc = subprocess.run([sys.executable, "-c", BASE_PROBE], capture_output=True, text=True, timeout=300)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


# ------------------------------------------------------------------------------ sampling
@dataclass
class Proc:
    idle: int  # RSS when first seen (members) or when the coordinator went idle
    peak: int
    reset: bool = False  # VmHWM counts from the reset only
    what: str = ""  # its command line, shortened: which process of a tree peaked


@dataclass
class Watch:
    """Samples RSS and VmHWM of the processes `roles()` names ({"coordinator": [...], "member": [...],
    "tree": [...]}) every `interval` s in a thread; per role the largest process and the tree sum."""

    roles: Callable[[], dict[str, list[int]]]
    interval: float = 0.05
    procs: dict[str, dict[int, Proc]] = field(default_factory=dict)
    tree_idle: int = 0
    tree_peak: int = 0
    idle: bool = False
    # (time, coordinator RSS, its shared-memory part, its private part, largest member RSS)
    timeline: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    shmem_at_peak: int = 0  # the coordinator's RssShmem when its sampled RSS was highest
    machine_shmem_idle: int = 0  # the machine's Shmem (/proc/meminfo) when the coordinator went idle
    machine_shmem_peak: int = 0  # ... and its highest sample since: in a simulation, Ray's object store
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def go_idle(self) -> None:
        """The coordinator is idle now: its baseline is its RSS, its peak counts from here."""
        with self._lock:
            roles = self.roles()
            self.procs["coordinator"] = {}
            for pid in roles.get("coordinator", []):
                reset_peak(pid)
                if (st := _status(pid)) is not None:
                    self.procs["coordinator"][pid] = Proc(st[0], st[0], reset=True)
            self.tree_idle = self.tree_peak = sum(s[0] for p in roles.get("tree", []) if (s := _status(p)))
            self.machine_shmem_idle = self.machine_shmem_peak = machine_shmem()
            self.idle = True

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        roles = self.roles()
        if self.idle:
            rss = [s[0] if (s := _status(p)) else 0 for p in roles.get("coordinator", [])]
            members = [s[0] if (s := _status(p)) else 0 for p in roles.get("member", [])]
            shm = sum(_field(p, "RssShmem") for p in roles.get("coordinator", []))
            anon = sum(_field(p, "RssAnon") for p in roles.get("coordinator", []))
            if not self.timeline or sum(rss) > max(t[1] for t in self.timeline):
                self.shmem_at_peak = shm
            self.timeline.append((time.time(), sum(rss), shm, anon, max(members, default=0)))
        for role in ("coordinator", "member"):
            if role == "coordinator" and not self.idle:
                continue
            seen = self.procs.setdefault(role, {})
            for pid in roles.get(role, []):
                st = _status(pid)
                if st is None:
                    continue
                p = seen.get(pid)
                if p is None:
                    seen[pid] = p = Proc(st[0], st[0], what=_short(cmdline(pid)))
                p.peak = max(p.peak, st[0], st[1] if (p.reset or role == "member") else 0)
        if self.idle:
            self.machine_shmem_peak = max(self.machine_shmem_peak, machine_shmem())
            self.tree_peak = max(self.tree_peak, sum(s[0] for p in roles.get("tree", []) if (s := _status(p))))

    def figures(self, d: int, member_base: int | None = None) -> dict[str, Any]:
        coord = max(self.procs.get("coordinator", {}).values(), key=lambda p: p.peak - p.idle, default=None)
        member = max(self.procs.get("member", {}).values(), key=lambda p: p.peak, default=None)
        row: dict[str, Any] = {
            "coordinator_idle_rss_bytes": coord.idle if coord else None,
            "coordinator_peak_rss_bytes": coord.peak if coord else None,
            "member_base_rss_bytes": member_base,
            "member_peak_rss_bytes": member.peak if member else None,
            "member_peak_process": member.what if member else None,
            "coordinator_tree_idle_rss_bytes": self.tree_idle or None,
            "coordinator_tree_peak_rss_bytes": self.tree_peak or None,
        }
        row["coordinator_shmem_at_peak_bytes"] = self.shmem_at_peak
        if self.timeline:  # private memory (RSS - shared pages), sampled: idle is the first sample
            row["coordinator_idle_private_bytes"] = self.timeline[0][3]
            row["coordinator_peak_private_bytes"] = max(t[3] for t in self.timeline)
            row["private_ratio"] = (row["coordinator_peak_private_bytes"] - self.timeline[0][3]) / (4 * d)
        row["ratio"] = (coord.peak - coord.idle) / (4 * d) if coord else None
        row["member_ratio"] = (member.peak - member_base) / (4 * d) if member and member_base else None
        if self.idle:  # the store's pages are not in any one process's RSS once it released them
            row["machine_shmem_above_idle_bytes"] = self.machine_shmem_peak - self.machine_shmem_idle
            row["machine_shmem_ratio"] = row["machine_shmem_above_idle_bytes"] / (4 * d)
        if self.tree_idle:
            row["tree_ratio"] = (self.tree_peak - self.tree_idle) / (4 * d)
        return row


# ------------------------------------------------------------------------------ simulation
SCENARIO = """name = "bench-memory-{d}"
federation = "fedloom-bench"
participants = {members}
rounds = {rounds}
seed = 0
[task]
name = "{task}"
partition = "iid"
[training]
epochs = 1
[secure]
enabled = true
[simulation]
verify = false
node_wait = 600
cpus_per_participant = {cpus}
"""


def _env(trip_log: Path) -> dict[str, str]:
    e = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0")
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e[triplog.ENV] = str(trip_log)
    return e


def _idle_seen(trip_log: Path) -> bool:
    return trip_log.exists() and "waiting_for_nodes" in trip_log.read_text()


def run_simulation(work: Path, d: int, members: int, rounds: int, interval: float, timeout: float) -> Watch:
    """`fedloom simulate` in a child process, watched: the coordinator is that process, the members its Ray workers."""
    work.mkdir(parents=True, exist_ok=True)
    scenario = work / "scenario.toml"
    # one virtual member at a time (all cores each): a member's peak is one process's, and two big
    # members side by side on a small machine would only add up
    cpus = os.cpu_count() or 1
    scenario.write_text(SCENARIO.format(d=d, members=members, rounds=rounds, task=SIZES[d], cpus=cpus))
    trips = work / "trips.jsonl"
    cmd = [sys.executable, "-m", "console.cli", "simulate", str(scenario), "--out", str(work / "out")]
    with (work / "simulate.out").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(trips), start_new_session=True)

    def roles() -> dict[str, list[int]]:
        tree = descendants(proc.pid, _parents())
        return {"coordinator": [proc.pid], "member": [p for p in tree if "ClientAppActor" in cmdline(p)]}

    return _watch(proc, Watch(roles, interval), lambda: _idle_seen(trips), timeout, work / "simulate.out")


def _watch(proc: subprocess.Popen, watch: Watch, idle: Callable[[], bool], timeout: float, log: Path) -> Watch:
    watch.start()
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and not idle() and time.time() < deadline:
            time.sleep(0.05)
        watch.go_idle()
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        watch.stop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            raise TimeoutError(f"the run did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        raise RuntimeError(f"the run exited with {proc.returncode}: {_tail(log)}")
    return watch


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# ------------------------------------------------------------------------------ deployment
def run_deployment(work: Path, d: int, members: int, rounds: int, interval: float, timeout: float) -> Watch:
    """A real deployment on loopback (`fedloom bench deployment`'s federation) with the sized task."""
    from console.bench import deployment

    fed = deployment.Federation(work, [f"m{i}" for i in range(members)], True, rounds, task=SIZES[d])
    fed.root.mkdir(parents=True)
    fed.provision()
    trips = fed.root / "trips-coordinator.jsonl"
    try:
        coord = fed.start_coordinator()

        def roles() -> dict[str, list[int]]:
            parents = _parents()
            tree = descendants(coord.pid, parents)
            out = {"tree": tree, "coordinator": [p for p in tree if "flwr-serverapp" in cmdline(p)], "member": []}
            for name, proc in fed.procs.items():
                if name != "coordinator":
                    out["member"] += descendants(proc.pid, parents)
            return out

        watch = Watch(roles, interval)
        deployment._wait(lambda: _idle_seen(trips), timeout, "no ServerApp", fed)
        time.sleep(1.0)  # the ServerApp settles into its wait
        watch.start()
        watch.go_idle()
        for i in range(members):
            fed.start_member(i)
        deadline = time.time() + timeout
        while coord.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        watch.stop()
        fed.check_finished(coord, timeout)
    finally:
        fed.stop_all()
    return watch


# ------------------------------------------------------------------------------ rows and output
def run(
    sizes: list[int],
    modes: list[str],
    members: int | None,
    rounds: int,
    interval: float,
    timeout: float,
    keep: str | None,
) -> list[dict[str, Any]]:
    work = Path(keep or tempfile.mkdtemp(prefix="fedloom-bench-memory-"))
    rows = []
    base = member_base_rss()
    try:
        for d in sizes:
            for mode in modes:
                n = members or (4 if mode == "simulation" else 3)
                where = work / f"{mode}-{common.fmt_d(d)}"
                runner = run_simulation if mode == "simulation" else run_deployment
                t0 = time.time()
                row = {"d": d, "mode": mode, "members": n, "rounds": rounds}
                watch = runner(where, d, n, rounds, interval, timeout)
                row.update(watch.figures(d, base))
                if keep:  # RSS over time beside the trip log, to see which step holds the bytes
                    (where / "rss.json").write_text(json.dumps(watch.timeline))
                row["seconds"] = time.time() - t0
                rows.append(judge(row))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def judge(row: dict[str, Any]) -> dict[str, Any]:
    """Add the targets and whether they are met."""
    row["target_ratio"] = TARGET[row["mode"]]
    row["member_target_ratio"] = MEMBER_TARGET
    row["met"] = row.get("ratio") is not None and row["ratio"] <= row["target_ratio"]
    row["member_met"] = row.get("member_ratio") is not None and row["member_ratio"] <= MEMBER_TARGET
    return row


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="peak RSS in a secure round (MiB; ratio = (peak - idle) / 4d)", show_lines=False)
    cols = ("", "d", "mode", "coord idle", "coord peak", "ratio", "target", "member base", "member peak")
    for col in (*cols, "member ratio", "coord tree peak", "machine shm"):
        t.add_column(col, justify="right")
    for r in rows:
        ok = "[green]met[/green]" if r["met"] else "[red]not met[/red]"
        mok = "[green]met[/green]" if r["member_met"] else "[red]not met[/red]"
        t.add_row(
            r.get("label") or "",
            common.fmt_d(r["d"]),
            r["mode"],
            _mb(r["coordinator_idle_rss_bytes"]),
            _mb(r["coordinator_peak_rss_bytes"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            f"<= {r['target_ratio']:.0f} {ok}",
            _mb(r["member_base_rss_bytes"]),
            _mb(r["member_peak_rss_bytes"]),
            "-" if r["member_ratio"] is None else f"{r['member_ratio']:.2f} (<= {MEMBER_TARGET:.0f} {mok})",
            _mb(r.get("coordinator_tree_peak_rss_bytes")),
            _mb(r.get("machine_shmem_above_idle_bytes")),
        )
    return t


def parse_sizes(text: str) -> list[int]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        d = ALIASES.get(part)
        if d is None:
            with contextlib.suppress(ValueError):
                d = int(float(part))
        if d not in SIZES:
            raise ValueError(f"--d {part}: one of {', '.join(ALIASES)} (the sized synthetic tasks)")
        out.append(d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench memory", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--d", default="1e7", help=f"parameter counts, comma-separated: {', '.join(ALIASES)}")
    ap.add_argument("--mode", default="simulation,deployment", help="simulation and/or deployment")
    ap.add_argument("--members", type=int, help="members (default 4 in simulation, 3 in deployment)")
    ap.add_argument("--rounds", type=int, default=1, help="secure rounds per run (default 1)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples (default 0.05)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a run may take")
    ap.add_argument("--label", default="", help="a name for these rows (e.g. before / after)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep its logs and outputs")
    ap.add_argument("--quick", action="store_true", help="d = 1e4, simulation, 1 round: a smoke run")
    ap.add_argument("--json", metavar="PATH", help="write the rows as a JSON document ('-': stdout)")
    a = ap.parse_args(argv)
    try:
        sizes = [10**4] if a.quick else parse_sizes(a.d)
    except ValueError as exc:
        print(f"fedloom bench memory: {exc}")
        return 2
    modes = ["simulation"] if a.quick else [m.strip() for m in a.mode.split(",") if m.strip()]
    if not modes or any(m not in TARGET for m in modes) or a.rounds < 1 or (a.members is not None and a.members < 3):
        print("fedloom bench memory: --mode is simulation and/or deployment, --rounds >= 1, --members >= 3")
        return 2
    con = common.console(a.json == "-")
    try:
        rows = run(sizes, modes, a.members, a.rounds, a.interval, a.timeout, a.keep)
    except (RuntimeError, TimeoutError) as exc:
        con.print(f"[red]fedloom bench memory: {exc}[/red]")
        return 1
    for r in rows:
        r["label"] = a.label
    doc = common.document("memory", rows, argv)
    for line in common.header_lines(doc):
        con.print(line)
    con.print(table(rows))
    common.write_json(a.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
