"""Where a simulated round's time goes: cProfile of the coordinator and of every virtual participant.

    fedloom bench rounds --profile DIR --sizes "30,1e6"      # secure and plain, profiled
    fedloom bench rounds --profile DIR --sizes "100,1e5" --secure-only

Used by `fedloom bench rounds --profile`. The scenario is the rounds benchmark's; for the run,
`simulations.runner` is handed (in this process only, nothing on disk changes):

* a ClientApp wrapper that calls fedloom's own ClientApp (`participant.client_app.app`) under
  cProfile in each Ray actor process, and records the wall seconds of every call by trip kind
  (the message type plus the protocol requests it carries, e.g. "query.secagg: BundleSet +
  SurvivorRequest" is trip 2); each actor process writes `client-<pid>.pstats` and `.json`;
* a ServerApp whose main runs fedloom's `run_federation` under cProfile (`server.pstats`).

The report puts, for each trip kind, the round's wall seconds for that trip beside the summed
compute of every participant call of it (divided by the cores that run them in parallel) and the
coordinator's own compute; the remainder is Flower's and Ray's dispatch and transfer. Profiled runs
are slower than unprofiled ones (cProfile's overhead): use them for the split, the benchmark's
rows for the figures.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_STATE: dict[str, Any] = {}


def _trip_kind(message) -> str:
    """'train: AdvertiseRequest + MaskRequest', 'query.secagg: BundleSet + SurvivorRequest', ..."""
    kind = str(message.metadata.message_type)
    try:
        from fedloom import records as rec
        from protocol.messages import decode

        names = sorted({type(decode(raw)).__name__ for raw in rec.read_protocol(message.content)})
    except Exception:  # a label only; never break the call it wraps
        names = ["?"]
    return kind + (": " + " + ".join(names) if names else "")


class ProfiledClientApp:
    """Calls fedloom's ClientApp under cProfile; per process, stats go to `out_dir`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def __call__(self, message, context):
        from participant.client_app import app

        st = _STATE
        if "prof" not in st:
            st.update(prof=cProfile.Profile(), calls=defaultdict(list), since_dump=0)
        kind = _trip_kind(message)
        t0 = time.perf_counter()
        st["prof"].enable()
        try:
            return app(message=message, context=context)
        finally:
            st["prof"].disable()
            st["calls"][kind].append(time.perf_counter() - t0)
            st["since_dump"] += 1
            # Ray ends actors without running exit handlers: write the stats at the run's final
            # evaluation (every member gets one, last) and every 50 calls; dumping after every call
            # would cost more than most calls and inflate the trips it is meant to explain
            if str(message.metadata.message_type) == "evaluate" or st["since_dump"] >= 50:
                self._dump(st)

    def _dump(self, st: dict[str, Any]) -> None:
        st["since_dump"] = 0
        base = Path(self.out_dir) / f"client-{os.getpid()}"
        st["prof"].dump_stats(str(base) + ".pstats")
        Path(str(base) + ".json").write_text(json.dumps(st["calls"]))


def profiled_server_app_factory(out_dir: Path):
    """A `make_server_app` replacement: fedloom's run_federation under cProfile."""

    def make(settings):
        from flwr.serverapp import ServerApp

        from coordinator.driver import run_federation

        server = ServerApp()

        @server.main()
        def main(grid, context) -> None:
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            try:
                prof.runcall(run_federation, grid, settings)
            finally:
                prof.dump_stats(str(out_dir / "server.pstats"))
                (out_dir / "server.json").write_text(json.dumps({"wall_seconds": time.perf_counter() - t0}))
                if settings.cleanup is not None:
                    settings.cleanup()

        return server

    return make


def profile_run(run_fedloom: Callable[..., dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """One profiled run of `run_fedloom()` (the rounds benchmark's scenario, which passes it in so
    this module never imports the benchmark that imports it); returns the run and the report."""
    import simulations.runner as runner

    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("client-*"):
        f.unlink()
    saved = runner.client_app, runner.make_server_app
    runner.client_app = ProfiledClientApp(str(out_dir))  # type: ignore[assignment]
    runner.make_server_app = profiled_server_app_factory(out_dir)  # type: ignore[assignment]
    try:
        run = run_fedloom()
    finally:
        runner.client_app, runner.make_server_app = saved
    rep = report(out_dir, run)
    (out_dir / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    (out_dir / "run.json").write_text(json.dumps(run, indent=1, default=str))
    return {"run": run, "report": rep}


# ---------------------------------------------------------------------------- analysis
TRIP_OF_STAGE = {
    "train_mask": "train",
    "sign": "SurvivorRequest",
    "unmask": "UnmaskRequest",
    "train": "train",
}


SETUP_KINDS = ("query.secagg: AdvertiseRequest", "query.secagg: BundleSet", "query.secagg: ShareDelivery")


# what the participants' calls spend their time on (cumulative seconds of these functions, summed
# over every call and process; nested entries overlap their parents)
CLIENT_PARTS = (
    ("ClientApp train trip (all of it)", "participant/client_app.py", "train"),
    ("ClientApp protocol-only trip (all of it)", "participant/client_app.py", "secagg"),
    ("  view_of (plan, kit, policy, data partition)", "participant/node.py", "view_of"),
    (
        "    simulated data partition (lru_cache 8; data made once per process)",
        "participant/local_data.py",
        "simulated",
    ),
    ("    member kit load (lru_cache 16)", "fedloom/kits.py", "load_member_kit"),
    ("  trainer_for (one model per process)", "participant/node.py", "trainer_for"),
    ("    LocalTrainer.__init__ (model build)", "participant/trainer.py", "__init__"),
    ("  local training", "participant/trainer.py", "train"),
    ("  evaluation of the received model", "participant/trainer.py", "evaluate"),
    ("  protocol state load + save", "participant/secure.py", "load_participant"),
    ("", "participant/secure.py", "save_participant"),
    ("  protocol: mask (quantize + masks)", "protocol/participant.py", "mask"),
    ("    apply_masks", "protocol/masking.py", "apply_masks"),
    ("    quantize", "protocol/quantize.py", "quantize"),
    ("  protocol: other stages (advertise, share, receive, sign, unmask)", "protocol/participant.py", "handle"),
    ("    verify_bundles (every bundle of the round)", "protocol/verify.py", "verify_bundles"),
    ("  Ed25519 verify (all)", "protocol/crypto.py", "verify_signature"),
    ("  X25519 exchange (all)", "protocol/crypto.py", "x25519_exchange"),
)


def breakdown(stats: pstats.Stats, parts=CLIENT_PARTS) -> list[dict[str, Any]]:
    """Calls and cumulative seconds of the listed functions (an empty label adds to the previous)."""
    got: dict[tuple[str, str], list[float]] = {}
    for (path, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for _label, suffix, name in parts:
            if func == name and path.endswith(suffix):
                g = got.setdefault((suffix, name), [0, 0.0])
                g[0] += nc
                g[1] += ct
    out: list[dict[str, Any]] = []
    for label, suffix, name in parts:
        calls, secs = got.get((suffix, name), [0, 0.0])
        if not label and out:
            out[-1]["calls"] += calls
            out[-1]["seconds"] += secs
            continue
        out.append({"part": label, "function": f"{suffix}:{name}", "calls": calls, "seconds": secs})
    return out


def _ours(path: str) -> bool:
    return any(f"/{p}/" in path for p in ("protocol", "participant", "coordinator", "fedloom", "tasks", "simulations"))


def top_functions(stats: pstats.Stats, limit: int = 25, ours_only: bool = True, key: str = "cumulative"):
    rows = []
    for (path, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if ours_only and not _ours(path):
            continue
        short = path.split("/site-packages/")[-1]
        for root in ("/protocol/", "/participant/", "/coordinator/", "/fedloom/", "/tasks/", "/simulations/"):
            if root in short and "site-packages" not in path:
                short = root.strip("/") + "/" + short.split(root, 1)[1]
                break
        rows.append({"function": f"{short}:{line}({func})", "calls": nc, "tottime": tt, "cumtime": ct})
    rows.sort(key=lambda r: r["cumtime" if key == "cumulative" else "tottime"], reverse=True)
    return rows[:limit]


def report(out_dir: Path, run: dict[str, Any], cores: int | None = None) -> dict[str, Any]:
    """Per trip kind: round seconds, participants' compute, coordinator compute; top functions."""
    cores = cores or os.cpu_count() or 1
    calls: dict[str, list[float]] = defaultdict(list)
    client_files = sorted(out_dir.glob("client-*.pstats"))
    for f in out_dir.glob("client-*.json"):
        for kind, secs in json.loads(f.read_text()).items():
            calls[kind] += secs
    steady = [r for r in run["rounds"] if r["round"] >= 2 and not r["skipped"]]
    stage_wall: dict[str, float] = {}
    for r in steady:
        for k, v in r["stage_seconds"].items():
            stage_wall[k] = stage_wall.get(k, 0.0) + v
    rounds_counted = max(1, len(steady))
    trips = []
    for stage, total in stage_wall.items():
        if stage == "reconstruct":
            continue
        marker = TRIP_OF_STAGE.get(stage, stage)
        kinds = [k for k in calls if (k.startswith("train") if marker == "train" else marker in k)]
        # every round's call of this trip; round 1's carry the actors' cold start, so the per-round
        # estimate is the median call times the calls per round
        per_call = [s for k in kinds for s in calls[k]]
        per_round_calls = len(per_call) / max(1, len(run["rounds"]))
        med = statistics.median(per_call) if per_call else 0.0
        trips.append(
            {
                "stage": stage,
                "trip_kinds": kinds,
                "wall_seconds_per_round": total / rounds_counted,
                "client_calls_per_round": per_call and per_round_calls,
                "client_compute_seconds_per_round": med * per_round_calls,
                "client_compute_per_core_seconds": med * per_round_calls / cores,
                "client_call_median_seconds": med if per_call else None,
            }
        )
    r1 = next((r for r in run["rounds"] if r["round"] == 1), None)
    if r1 is not None and "setup" in r1["stage_seconds"]:
        setup = [k for k in calls if k in SETUP_KINDS]
        total = sum(s for k in setup for s in calls[k])
        trips.append(
            {
                "stage": "setup",
                "trip_kinds": setup,
                "wall_seconds_per_round": r1["stage_seconds"]["setup"],  # round 1 only, cold start included
                "client_calls_per_round": sum(len(calls[k]) for k in setup),
                "client_compute_seconds_per_round": total,
                "client_compute_per_core_seconds": total / cores,
                "client_call_median_seconds": statistics.median([s for k in setup for s in calls[k]])
                if setup
                else None,
            }
        )
    out: dict[str, Any] = {
        "cores": cores,
        "rounds": len(run["rounds"]),
        "trips": trips,
        "calls": {k: len(v) for k, v in calls.items()},
    }
    out["call_seconds"] = {k: sum(v) for k, v in calls.items()}
    if client_files:
        cs = pstats.Stats(str(client_files[0]))
        for f in client_files[1:]:
            cs.add(str(f))
        out["client_breakdown"] = breakdown(cs)
        out["client_top"] = top_functions(cs)
        out["client_top_self"] = top_functions(cs, ours_only=False, key="tottime")
    server = out_dir / "server.pstats"
    if server.exists():
        ss = pstats.Stats(str(server))
        out["server_top"] = top_functions(ss)
        out["server_top_self"] = top_functions(ss, ours_only=False, key="tottime")
        sleep = sum(v[2] for k, v in ss.stats.items() if k[2] in ("<built-in method time.sleep>",))  # type: ignore[attr-defined]
        out["server_sleep_seconds"] = sleep
        out["server_seconds"] = json.loads((out_dir / "server.json").read_text())["wall_seconds"]
    return out


def print_report(con, name: str, rep: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"{name}: per round, by trip (profiled run: slower than the benchmark's)")
    for c in (
        "stage",
        "trip (requests)",
        "wall s/round",
        "participant calls",
        "participants' compute s",
        "per core s",
        "median call s",
    ):
        t.add_column(c, justify="left" if c in ("stage", "trip (requests)") else "right")
    for tr in rep["trips"]:
        t.add_row(
            tr["stage"],
            "\n".join(tr["trip_kinds"]) or "-",
            f"{tr['wall_seconds_per_round']:.3f}",
            f"{tr['client_calls_per_round']:.0f}",
            f"{tr['client_compute_seconds_per_round']:.3f}",
            f"{tr['client_compute_per_core_seconds']:.3f}",
            "-" if tr["client_call_median_seconds"] is None else f"{tr['client_call_median_seconds']:.4f}",
        )
    con.print(t)
    if rep.get("client_breakdown"):
        rounds = rep.get("rounds", 1)
        tb = Table(
            title=f"participants: where their calls go (all {rounds} rounds, set-up and final evaluation; "
            "cumulative, nested rows overlap)"
        )
        for c in ("part", "calls", "seconds", "per call ms"):
            tb.add_column(c, justify="left" if c == "part" else "right")
        for r in rep["client_breakdown"]:
            per = f"{1000 * r['seconds'] / r['calls']:.2f}" if r["calls"] else "-"
            tb.add_row(r["part"], str(r["calls"]), f"{r['seconds']:.3f}", per)
        con.print(tb)
    for key, title in (
        ("client_top", "participants (all calls, all processes), fedloom functions by cumulative s"),
        ("client_top_self", "participants, all functions by own s"),
        ("server_top", "coordinator, fedloom functions by cumulative s"),
        ("server_top_self", "coordinator, all functions by own s"),
    ):
        if key not in rep:
            continue
        tt = Table(title=title)
        for c in ("function", "calls", "own s", "cumulative s"):
            tt.add_column(c, justify="left" if c == "function" else "right")
        for r in rep[key][:15]:
            tt.add_row(r["function"], str(r["calls"]), f"{r['tottime']:.3f}", f"{r['cumtime']:.3f}")
        con.print(tt)
    if "server_seconds" in rep:
        con.print(
            f"coordinator: {rep['server_seconds']:.1f} s in run_federation, of which "
            f"{rep['server_sleep_seconds']:.1f} s asleep waiting for replies (transport.exchange polls)"
        )
