"""fedloom's secure rounds next to Flower 1.41's own SecAgg+, same (n, d, dropout), same run.

    fedloom bench flower                   # (10, 1e5), (30, 1e6) at 0/10/30 %, (100, 1e5) at 0/10 %
    fedloom bench flower --quick           # (10, 1e5, 0 %), 3 rounds
    fedloom bench flower --cases "30,1e6,0" --rounds 5 --timeout 900 --json flower.json

Per case, one after the other in this run:

* fedloom: the rounds benchmark's secure scenario (`console.bench.rounds`: synthetic task of
  exactly d parameters, trivial training, iid, 1 epoch) through `simulations.runner.run_scenario`;
  dropouts are the scenario's `[[faults]]` at the mask stage (the same members every round).
* Flower SecAgg+: `flwr.server.workflow.SecAggPlusWorkflow` inside the legacy `DefaultWorkflow`
  (`LegacyContext`, legacy `ServerApp`, FedAvg) and a legacy `ClientApp` with
  `flwr.client.mod.secaggplus_mod` around a `NumPyClient` that returns a fixed float32 vector of
  d parameters (no training). Same Simulation Engine settings (private loopback Ray, this machine's
  cores, 1 CPU per virtual client). Parameters matched to fedloom's for that n: `num_shares` =
  fedloom's graph degree k + 1 (Flower counts the member's own share; its ring lattice over
  num_shares includes the member itself), `reconstruction_threshold` = fedloom's Shamir t;
  clipping_range, quantization_range, modulus_range and max_weight at Flower's defaults.
  Dropout: a client mod in front of `secaggplus_mod` raises in the collect-masked-vectors stage
  for the same members fedloom's faults drop (the stage where fedloom's members drop too); Flower
  sees an error reply, treats the node as dropped and reconstructs its masks at unmasking.
  Each round's aggregate is checked against the clients' vector: a round that did not produce it
  is reported as not ok. It runs in a child process with a per-case timeout; a case that does not
  finish is marked with the time it reached and the rounds it completed.
* Flower plain FedAvg (the legacy default fit workflow), once per (n, d): Flower's own
  secure/plain ratio, next to the 12.6x (full graph) / 3.6x (9 neighbours) measured earlier.

Figures: wall seconds of rounds 2..R (round 1 carries Ray's cold start and, for fedloom, its
three set-up trips; it is reported apart); Flower's round is the time of its fit workflow (its four
SecAgg+ trips), fedloom's is the coordinator's whole round (training and the evaluation that rides
on trip 1 included). `speedup` = Flower seconds / fedloom seconds per round index, median, min, max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from console.bench import common
from console.bench import rounds as rounds_bench
from fedloom.localray import keep_ray_on_loopback

DROP_ENV = "FEDLOOM_BENCH_FLOWER_DROP"
FULL_CASES = (
    (10, 10**5, 0.0),
    (10, 10**5, 0.1),
    (10, 10**5, 0.3),
    (30, 10**6, 0.0),
    (30, 10**6, 0.1),
    (30, 10**6, 0.3),
    (100, 10**5, 0.0),
    (100, 10**5, 0.1),
)
QUICK_CASES = ((10, 10**5, 0.0),)
TARGET_SPEEDUP = 10.0
# Flower scales each update by weight / max_weight (1 / 1000 here) BEFORE quantizing with step
# 2 * 8 / 2^22, so its mean is only good to ~4e-3 per coordinate; a round that did not aggregate
# leaves zeros (error ~0.5)
FLOWER_TOLERANCE = 0.05
TARGET_SIZE = (30, 10**6)


# ---------------------------------------------------------------------------- Flower side (child)
def client_vector(d: int) -> np.ndarray:
    """What every Flower client returns: fixed, in [-0.5, 0.5) (inside Flower's clipping range)."""
    return np.random.default_rng(d).uniform(-0.5, 0.5, d).astype(np.float32)


_VEC: dict[int, np.ndarray] = {}


def _client_fn(context):
    from flwr.client import NumPyClient

    class _Client(NumPyClient):
        def get_parameters(self, config):
            raise RuntimeError("the strategy provides the initial parameters")

        def fit(self, parameters, config):
            d = int(parameters[0].shape[0])
            if d not in _VEC:
                _VEC.clear()
                _VEC[d] = client_vector(d)
            return [_VEC[d]], 1, {}

        def evaluate(self, parameters, config):
            return 0.0, 1, {}

    return _Client().to_client()


def _drop_mod(msg, ctx, call_next):
    """Simulated dropout: the listed partitions fail at the collect-masked-vectors stage."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    drop = {int(x) for x in os.environ.get(DROP_ENV, "").split(",") if x}
    if drop and int(ctx.node_config["partition-id"]) in drop:
        cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if cfg is not None and cfg.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
            raise RuntimeError("fedloom bench: simulated dropout")
    return call_next(msg, ctx)


def _worker(spec: dict[str, Any]) -> int:
    """Child process: one Flower run; one JSON line per round into spec['out']."""
    import logging

    import fedloom  # noqa: F401  (telemetry off before flwr is imported)

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ[DROP_ENV] = ",".join(str(p) for p in spec["drop"])
    import flwr.compat.common.recorddict_compat as compat
    from flwr.client import ClientApp
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    logging.getLogger("flwr").setLevel(logging.ERROR)
    n, d, R, secure = int(spec["n"]), int(spec["d"]), int(spec["rounds"]), bool(spec["secure"])
    x = client_vector(d)
    zeros = ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])
    out = open(spec["out"], "a", buffering=1)  # noqa: SIM115 - closed at the end; lines survive a kill

    def fit_workflow(grid, context):
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        r = int(cfg[Key.CURRENT_ROUND])
        # start each round from zeros, so a round that does not aggregate cannot look right
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(zeros, True)
        t0 = time.perf_counter()
        if secure:
            SecAggPlusWorkflow(num_shares=int(spec["num_shares"]), reconstruction_threshold=int(spec["threshold"]))(
                grid, context
            )
        else:
            default_fit_workflow(grid, context)
        dt = time.perf_counter() - t0
        got = parameters_to_ndarrays(
            compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        )
        err = float(np.max(np.abs(got[0] - x))) if got and got[0].shape == x.shape else math.inf
        out.write(json.dumps({"round": r, "seconds": dt, "ok": err < FLOWER_TOLERANCE, "max_error": err}) + "\n")

    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=zeros,
        )
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=R), strategy=strategy)
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, ctx)

    client = ClientApp(client_fn=_client_fn, mods=[_drop_mod, secaggplus_mod] if secure else [])
    cpus = os.cpu_count() or 1
    backend = {
        "init_args": {
            "address": "local",
            "num_cpus": cpus,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",  # loopback only thanks to keep_ray_on_loopback() below
            "_temp_dir": spec["ray_dir"],
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
        "client_resources": {"num_cpus": 1, "num_gpus": 0},
    }
    keep_ray_on_loopback()  # fedloom/__init__ did it already; repeated where Ray starts, as in simulations.runner
    _run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n,
        backend_config=backend,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
    )
    out.write(json.dumps({"done": True}) + "\n")
    out.close()
    return 0


# ---------------------------------------------------------------------------- Flower side (parent)
def flower_params(n: int, d: int) -> dict[str, int]:
    """Flower's num_shares / reconstruction_threshold matching fedloom's graph for n members."""
    k, t = rounds_bench.degree(n, d)
    return {"num_shares": k + 1, "threshold": t, "degree": k}


def run_flower(
    n: int, d: int, rounds: int, secure: bool, drop: list[int] | tuple[int, ...] = (), timeout: float = 900.0
) -> dict[str, Any]:
    """One Flower run in a child process (killed at `timeout`): its rounds and how it ended."""
    p = flower_params(n, d)
    tmp = Path(tempfile.mkdtemp(prefix="fedloom-flwr-"))
    ray_dir = tempfile.mkdtemp(prefix="flr-", dir="/tmp")  # short: Ray's socket paths are length-limited
    spec = {
        "n": n,
        "d": d,
        "rounds": rounds,
        "secure": secure,
        "drop": list(drop),
        "out": str(tmp / "rounds.jsonl"),
        "ray_dir": ray_dir,
        **p,
    }
    log_path = tmp / "child.log"
    t0 = time.perf_counter()
    status = "ok"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "console.bench.flower", "--worker", json.dumps(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends Ray's processes with it
        )
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                status = f"error (exit {rc})"
        except subprocess.TimeoutExpired:
            status = "timeout"
            _end(proc)
    elapsed = time.perf_counter() - t0
    lines = (
        [json.loads(s) for s in (tmp / "rounds.jsonl").read_text().splitlines()]
        if (tmp / "rounds.jsonl").exists()
        else []
    )
    rounds_out = [ln for ln in lines if "round" in ln]
    if status == "ok" and not any(ln.get("done") for ln in lines):
        status = "error (no end mark)"
    tail = log_path.read_text(errors="replace")[-1500:] if status != "ok" else ""
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ray_dir, ignore_errors=True)
    return {
        "secure": secure,
        "status": status,
        "elapsed_seconds": elapsed,
        "timeout_seconds": timeout,
        "rounds": rounds_out,
        "rounds_ok": sum(1 for r in rounds_out if r["ok"]),
        "log_tail": tail,
        **p,
    }


def _end(proc: subprocess.Popen) -> None:
    """Stop the child and everything in its process group (Ray's raylet, GCS and workers)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(1.0)  # let the group's other processes go too
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any


def flower_round_seconds(run: dict[str, Any]) -> list[float]:
    return [r["seconds"] for r in run["rounds"] if r["round"] >= 2 and r["ok"]]


# ---------------------------------------------------------------------------- rows
def case_row(
    n: int,
    d: int,
    dropout: float,
    fedloom_run: dict[str, Any],
    flower_run: dict[str, Any],
    flower_plain: dict[str, Any] | None,
) -> dict[str, Any]:
    """One row: fedloom, Flower and the ratio, from runs made one after the other."""
    fl = {r["round"]: r["wall_seconds"] for r in rounds_bench.steady(fedloom_run)}
    fw = {r["round"]: r["seconds"] for r in flower_run["rounds"] if r["round"] >= 2 and r["ok"]}
    row: dict[str, Any] = {
        "case": f"n{n}-d{common.fmt_d(d)}-p{round(dropout * 100)}",
        "n": n,
        "d": d,
        "dropout": dropout,
        "dropped": len(fedloom_run["dropped_members"]),
        "degree": flower_run["degree"],
        "flower_num_shares": flower_run["num_shares"],
        "shamir_threshold": flower_run["threshold"],
        "rounds": max([r["round"] for r in fedloom_run["rounds"]] or [0]),
    }
    row |= common.stats("fedloom_round_seconds", list(fl.values()))
    row |= common.stats("flower_round_seconds", list(fw.values()))
    row |= common.stats("speedup", [fw[r] / fl[r] for r in fw if r in fl and fl[r] > 0])
    row["fedloom_first_round_seconds"] = rounds_bench.first_round([fedloom_run])
    r1 = next((r for r in flower_run["rounds"] if r["round"] == 1), None)
    row["flower_first_round_seconds"] = r1["seconds"] if r1 else None
    row["fedloom_rounds_skipped"] = sum(1 for r in fedloom_run["rounds"] if r["skipped"])
    row["flower_status"] = flower_run["status"]
    row["flower_elapsed_seconds"] = flower_run["elapsed_seconds"]
    row["flower_rounds_done"] = len(flower_run["rounds"])
    row["flower_rounds_ok"] = flower_run["rounds_ok"]
    row["fedloom_stage_seconds"] = rounds_bench.stage_split([fedloom_run])
    if "error" in fedloom_run:
        row["fedloom_error"] = fedloom_run["error"]
    if flower_plain is not None:
        plain = flower_round_seconds(flower_plain)
        row |= common.stats("flower_plain_round_seconds", plain)
        pr = {r["round"]: r["seconds"] for r in flower_plain["rounds"] if r["round"] >= 2 and r["ok"]}
        row |= common.stats("flower_secure_over_plain", [fw[r] / pr[r] for r in fw if r in pr and pr[r] > 0])
        row["flower_plain_status"] = flower_plain["status"]
    row["runs"] = {"fedloom": fedloom_run, "flower": flower_run, "flower_plain": flower_plain}
    return row


def run(
    cases: list[tuple[int, int, float]] | tuple[tuple[int, int, float], ...],
    rounds: int,
    timeout: float,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    plain_runs: dict[tuple[int, int], dict[str, Any]] = {}
    for n, d, p in cases:
        if (n, d) not in plain_runs:
            plain_runs[(n, d)] = run_flower(n, d, rounds, secure=False, timeout=timeout)
        try:
            fed = rounds_bench.run_fedloom(n, d, True, rounds, dropout=p)
        except Exception as exc:  # recorded in the row; the other cases still run
            fed = {"secure": True, "rounds": [], "dropped_members": [], "error": repr(exc)}
        drop = [m - 1 for m in fed["dropped_members"]]  # fedloom member ids are partition ids + 1
        if not drop and p > 0:  # fedloom failed before telling: drop Flower's members as its faults would
            drop = [m - 1 for m in _fault_members(n, d, rounds, p)]
        flw = run_flower(n, d, rounds, secure=True, drop=drop, timeout=timeout)
        rows.append(case_row(n, d, p, fed, flw, plain_runs[(n, d)]))
        if progress:
            progress(rows[-1])
    return rows


def _fault_members(n: int, d: int, rounds: int, dropout: float) -> list[int]:
    from simulations.scenario import parse_scenario

    sc = parse_scenario(rounds_bench.scenario_toml(n, d, True, rounds, dropout))
    return sorted({m for f in sc.faults.faults for m in f.members})


def _status(r: dict[str, Any]) -> str:
    s = r["flower_status"]
    if s == "timeout":
        return (
            f"[red]did not finish: {r['flower_elapsed_seconds']:.0f} s reached, "
            f"{r['flower_rounds_done']}/{r['rounds']} rounds[/]"
        )
    if s != "ok":
        return f"[red]{s}[/]"
    if r["flower_rounds_ok"] < r["flower_rounds_done"]:
        return f"[yellow]{r['flower_rounds_done'] - r['flower_rounds_ok']} round(s) did not aggregate[/]"
    return "ok"


def table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="fedloom vs Flower 1.41 SecAgg+, seconds per round (rounds 2..R: median, min-max below)")
    cols = (
        "case",
        "k / t",
        "fedloom s",
        "Flower SecAgg+ s",
        "speedup (Flower/fedloom)",
        "Flower plain s",
        "Flower secure/plain",
        "round 1 fedloom / Flower",
        "Flower status",
    )
    for c in cols:
        t.add_column(c, justify="left" if c in ("case", "Flower status") else "right")
    for r in rows:
        skipped = f"\n[yellow]{r['fedloom_rounds_skipped']} skipped[/]" if r["fedloom_rounds_skipped"] else ""
        first = "-"
        if r["fedloom_first_round_seconds"] is not None and r["flower_first_round_seconds"] is not None:
            first = f"{r['fedloom_first_round_seconds']:.1f} / {r['flower_first_round_seconds']:.1f}"
        t.add_row(
            r["case"] + skipped,
            f"{r['degree']} / {r['shamir_threshold']}",
            common.span(r, "fedloom_round_seconds"),
            common.span(r, "flower_round_seconds"),
            common.span(r, "speedup", "{:.1f}"),
            common.span(r, "flower_plain_round_seconds"),
            common.span(r, "flower_secure_over_plain", "{:.1f}"),
            first,
            _status(r),
        )
    return t


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if (r["n"], r["d"]) == TARGET_SIZE and r["dropout"] == 0:
            if r["speedup"] is None:
                out.append(
                    f"target fedloom >= {TARGET_SPEEDUP:.0f}x faster than Flower SecAgg+ at (30, 1e6): "
                    f"no figure ({_status(r)})"
                )
                continue
            ok = r["speedup"] >= TARGET_SPEEDUP
            out.append(
                f"target fedloom >= {TARGET_SPEEDUP:.0f}x faster than Flower SecAgg+ per round at (30, 1e6): "
                f"{r['speedup']:.1f}x ({r['speedup_min']:.1f}-{r['speedup_max']:.1f}; fedloom "
                f"{r['fedloom_round_seconds']:.2f} s, Flower {r['flower_round_seconds']:.2f} s) -> "
                f"{'[green]met[/]' if ok else '[red]missed[/]'}"
            )
    return out


def parse_cases(text: str) -> list[tuple[int, int, float]]:
    out = []
    for part in text.split(";"):
        if part.strip():
            n, d, p = (s.strip() for s in part.split(","))
            out.append((int(n), int(float(d)), float(p)))
    if not out:
        raise ValueError("no cases given")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench flower", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="(10, 1e5, 0 %%) only, 3 rounds")
    ap.add_argument("--cases", help='"n,d,dropout;..." with d in 1e5, 1e6 (overrides --quick)')
    ap.add_argument("--rounds", type=int, help="rounds per run (default 5, quick 3); round 1 is reported apart")
    ap.add_argument(
        "--timeout", type=float, help="seconds per Flower run before it is stopped (default 900, quick 300)"
    )
    ap.add_argument("--json", metavar="PATH", help="write the rows as one JSON document ('-': stdout)")
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(json.loads(a.worker))
    cases = parse_cases(a.cases) if a.cases else list(QUICK_CASES if a.quick else FULL_CASES)
    rounds = a.rounds or (3 if a.quick else 5)
    timeout = a.timeout or (300.0 if a.quick else 900.0)
    if rounds < 2:
        ap.error("--rounds must be at least 2")
    con = common.console(a.json == "-")
    rows = run(
        cases,
        rounds,
        timeout,
        progress=lambda r: con.print(
            f"[dim]{r['case']}: fedloom {r['fedloom_round_seconds']} s, Flower {r['flower_round_seconds']} s "
            f"({r['flower_status']})[/dim]"
        ),
    )
    doc = common.document("flower", rows, argv)
    for line in common.header_lines(doc):
        con.print(line)
    con.print(table(rows))
    for line in target_lines(rows):
        con.print(line)
    common.write_json(a.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
