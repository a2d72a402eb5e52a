"""Secure vs plain round wall time in Flower's Simulation Engine, the same scenario run both ways.

    fedloom bench rounds                   # (n, d) = (10, 10^5), (30, 10^6), (100, 10^5); 5 rounds each
    fedloom bench rounds --quick           # (10, 10^5), 3 rounds (about 1 minute)
    fedloom bench rounds --sizes "30,1e6" --rounds 6 --repeats 2 --json rounds.json

For each (n, d): a scenario (task synthetic-1e5 or synthetic-1e6: exactly d parameters, trivial
training; iid split; 1 local epoch; FedAvg) is run with `[secure] enabled = false`, then with
`enabled = true`, back to back in this process, through `simulations.runner.run_scenario` (the
same ServerApp and ClientApp as deployment, private loopback Ray, n virtual participants,
1 CPU each on this machine's cores). Outputs go to a temporary directory; nothing is kept.

What is reported (from the coordinator's metrics rows, `wall_seconds` and `stage_seconds`):

* per-round wall seconds of rounds 2..R (median, min, max; pooled over `--repeats` runs). Round 1
  is reported on its own: it includes Ray's cold start of the virtual participants and, for secure
  rounds, the three set-up trips (`setup`), which later rounds ride on the previous round's trips.
* ratio secure/plain: per round index (round r of the secure run over round r of the plain run
  of the same repeat), median, min and max.
* the secure round's split by stage: `train_mask` (trip 1: model down, evaluate + train + quantize
  + mask, masked vector up, next round's keys), `sign` (trip 2, with next round's shares),
  `unmask` (trip 3, with next round's share delivery), `reconstruct` (the coordinator's Shamir +
  mask removal).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.bench import common

if TYPE_CHECKING:
    from coordinator.summary import RunSummary

TASKS = {10**5: "synthetic-1e5", 10**6: "synthetic-1e6"}
FULL_SIZES = ((10, 10**5), (30, 10**6), (100, 10**5))
QUICK_SIZES = ((10, 10**5),)
STAGES = ("train_mask", "sign", "unmask", "reconstruct")


def scenario_toml(
    n: int, d: int, secure: bool, rounds: int, dropout: float = 0.0, threshold: float | None = None, seed: int = 0
) -> bytes:
    """The benchmark scenario (a `simulations.scenario` TOML): synthetic task, iid, 1 epoch."""
    if d not in TASKS:
        raise ValueError(f"d must be one of {sorted(TASKS)} (the synthetic tasks), got {d}")
    lines = [
        f'name = "bench-n{n}-d{common.fmt_d(d)}-{"secure" if secure else "plain"}"',
        'federation = "fedloom-bench"',
        f"participants = {n}",
        f"rounds = {rounds}",
        f"seed = {seed}",
        "[task]",
        f'name = "{TASKS[d]}"',
        'partition = "iid"',
        "[training]",
        "epochs = 1",
        "[secure]",
        f"enabled = {'true' if secure else 'false'}",
    ]
    if threshold is not None:
        lines.append(f"threshold = {threshold}")
    lines += ["[simulation]", "verify = false", "node_wait = 600"]
    if dropout > 0:
        if not secure:
            raise ValueError("dropouts are simulated at the secure protocol's stages only")
        rounds_list = ", ".join(str(r) for r in range(1, rounds + 1))
        lines += ["[[faults]]", f"rounds = [{rounds_list}]", 'stage = "mask"', f"fraction = {dropout}"]
    return ("\n".join(lines) + "\n").encode()


class QuietObserver:
    """Collects the coordinator's metrics rows; prints nothing."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.t_started: float | None = None

    def started(self, plan, nodes: int) -> None:
        self.t_started = time.perf_counter()

    def round_done(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def finished(self, summary: RunSummary) -> None:
        pass


@contextmanager
def quiet_logs() -> Iterator[None]:
    """fedloom's own warnings (e.g. 'secure aggregation is OFF', expected dropouts) stay out of the tables."""
    names = ("fedloom", "flwr", "ray")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def run_fedloom(
    n: int, d: int, secure: bool, rounds: int, dropout: float = 0.0, threshold: float | None = None
) -> dict[str, Any]:
    """One simulated run; its training rounds (1..R) as the coordinator recorded them."""
    from simulations.runner import run_scenario
    from simulations.scenario import parse_scenario

    scenario = parse_scenario(scenario_toml(n, d, secure, rounds, dropout, threshold), source="fedloom-bench")
    dropped = sorted({m for f in scenario.faults.faults for m in f.members})
    obs = QuietObserver()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedloom-bench-") as out, quiet_logs():
        summary = run_scenario(scenario, Path(out), obs)
    total = time.perf_counter() - t0
    rows = [
        {
            "round": int(r["round"]),
            "wall_seconds": float(r["wall_seconds"]),
            "stage_seconds": dict(r.get("stage_seconds") or {}),
            "skipped": r.get("skipped"),
            "aggregated": len(r.get("aggregated") or []),
        }
        for r in obs.rows
        if int(r["round"]) >= 1
    ]
    rows.sort(key=lambda r: r["round"])
    return {
        "secure": secure,
        "rounds": rows,
        "dropped_members": dropped,
        "total_seconds": total,
        "startup_seconds": (obs.t_started - t0) if obs.t_started else None,
        "rounds_completed": summary.get("rounds_completed"),
    }


def steady(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rounds 2..R that completed."""
    return [r for r in run["rounds"] if r["round"] >= 2 and not r["skipped"]]


def round_seconds(runs: list[dict[str, Any]]) -> list[float]:
    return [r["wall_seconds"] for run in runs for r in steady(run)]


def paired_ratios(num: list[dict[str, Any]], den: list[dict[str, Any]]) -> list[float]:
    """Round r of num[i] over round r of den[i], for every completed round r >= 2 of both."""
    out = []
    for a, b in zip(num, den, strict=False):
        bb = {r["round"]: r["wall_seconds"] for r in steady(b)}
        out += [r["wall_seconds"] / bb[r["round"]] for r in steady(a) if r["round"] in bb and bb[r["round"]] > 0]
    return out


def stage_split(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per stage over the steady rounds."""
    by: dict[str, list[float]] = {}
    for run in runs:
        for r in steady(run):
            for k, v in r["stage_seconds"].items():
                by.setdefault(k, []).append(float(v))
    return {k: statistics.median(v) for k, v in by.items()}


def first_round(runs: list[dict[str, Any]], key: str | None = None) -> float | None:
    vals = []
    for run in runs:
        r1 = next((r for r in run["rounds"] if r["round"] == 1), None)
        if r1 is not None:
            vals.append(r1["wall_seconds"] if key is None else r1["stage_seconds"].get(key, 0.0))
    return statistics.median(vals) if vals else None


def degree(n: int, d: int, threshold: float | None = None) -> tuple[int, int]:
    """fedloom's default graph degree k and Shamir threshold t for n members."""
    from protocol.params import ProtocolParams

    p = ProtocolParams.for_federation(d, n, threshold_fraction=threshold or 2 / 3)
    k = p.degree(n)
    return k, p.shamir_threshold(k)


def pair_row(n: int, d: int, plain: list[dict[str, Any]], secure: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """The rounds section's row for one (n, d) from its plain and secure runs."""
    k, t = degree(n, d)
    row: dict[str, Any] = {
        "case": f"n{n}-d{common.fmt_d(d)}",
        "n": n,
        "d": d,
        "task": TASKS.get(d),
        "rounds": rounds,
        "repeats": len(secure),
        "degree": k,
        "shamir_threshold": t,
    }
    row |= common.stats("plain_round_seconds", round_seconds(plain))
    row |= common.stats("secure_round_seconds", round_seconds(secure))
    row |= common.stats("ratio", paired_ratios(secure, plain))
    row["plain_first_round_seconds"] = first_round(plain)
    row["secure_first_round_seconds"] = first_round(secure)
    row["secure_setup_seconds"] = first_round(secure, "setup")
    split = stage_split(secure)
    row["secure_stage_seconds"] = split
    total = sum(split.values())
    row["secure_stage_share"] = {k: v / total for k, v in split.items()} if total else {}
    if row["plain_round_seconds"] is not None and row["secure_round_seconds"] is not None:
        row["secure_extra_seconds"] = row["secure_round_seconds"] - row["plain_round_seconds"]
    row["plain_rounds_skipped"] = sum(1 for run in plain for r in run["rounds"] if r["skipped"])
    row["secure_rounds_skipped"] = sum(1 for run in secure for r in run["rounds"] if r["skipped"])
    row["runs"] = {"plain": plain, "secure": secure}
    return row


def run_pair(n: int, d: int, rounds: int, repeats: int = 1) -> dict[str, Any]:
    plain, secure = [], []
    for _ in range(repeats):
        plain.append(run_fedloom(n, d, False, rounds))
        secure.append(run_fedloom(n, d, True, rounds))
    return pair_row(n, d, plain, secure, rounds)


def run(
    sizes: tuple[tuple[int, int], ...] | list[tuple[int, int]],
    rounds: int,
    repeats: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    if rounds < 2:
        raise ValueError("rounds must be at least 2 (round 1 is reported apart)")
    rows = []
    for n, d in sizes:
        rows.append(run_pair(n, d, rounds, repeats))
        if progress:
            progress(rows[-1])
    return rows


def table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="secure vs plain round, Simulation Engine (rounds 2..R: median, min-max below)")
    cols = (
        "case",
        "k",
        "plain s/round",
        "secure s/round",
        "secure/plain",
        "round 1 plain / secure (setup)",
        "secure split: train+mask / sign / unmask / reconstruct s",
    )
    for c in cols:
        t.add_column(c, justify="left" if c == "case" else "right")
    for r in rows:
        s = r["secure_stage_seconds"]
        split = " / ".join(f"{s.get(k, 0.0):.3f}" for k in STAGES)
        r1 = (
            (
                f"{r['plain_first_round_seconds']:.1f} / {r['secure_first_round_seconds']:.1f} "
                f"({r['secure_setup_seconds']:.1f})"
            )
            if r["secure_first_round_seconds"] is not None
            else "-"
        )
        skipped = ""
        if r["secure_rounds_skipped"] or r["plain_rounds_skipped"]:
            skipped = f"\n[yellow]skipped: plain {r['plain_rounds_skipped']}, secure {r['secure_rounds_skipped']}[/]"
        t.add_row(
            r["case"] + skipped,
            str(r["degree"]),
            common.span(r, "plain_round_seconds"),
            common.span(r, "secure_round_seconds"),
            common.span(r, "ratio", "{:.2f}"),
            r1,
            split,
        )
    return t


TARGET_RATIO = 1.5
FLOWER_RATIOS = "Flower SecAgg+ measured 12.6x (full graph), 3.6x (9 neighbours)"


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if (r["n"], r["d"]) == (30, 10**6) and r["ratio"] is not None:
            ok = r["ratio"] <= TARGET_RATIO
            out.append(
                f"target secure/plain <= {TARGET_RATIO}x at (30, 1e6): {r['ratio']:.2f}x "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) -> {'[green]met[/]' if ok else '[red]missed[/]'}; "
                f"{FLOWER_RATIOS}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench rounds", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="(10, 1e5) only, 3 rounds")
    ap.add_argument("--sizes", help='"n,d;n,d" with d in 1e5, 1e6 (overrides --quick)')
    ap.add_argument("--rounds", type=int, help="rounds per run (default 5, quick 3); round 1 is reported apart")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each scenario, plain and secure (default 1)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as one JSON document ('-': stdout)")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="instead of the benchmark: profiled runs (cProfile of the coordinator and every participant "
        "call) with a report of where each trip's time goes; files in DIR/<case>-<mode>/",
    )
    ap.add_argument("--secure-only", action="store_true", help="with --profile: skip the plain run")
    ap.add_argument("--dropout", type=float, default=0.0, help="with --profile: dropout of the secure run")
    a = ap.parse_args(argv)
    sizes = parse_sizes(a.sizes) if a.sizes else list(QUICK_SIZES if a.quick else FULL_SIZES)
    rounds = a.rounds or (3 if a.quick else 5)
    if rounds < 2 or a.repeats < 1:
        ap.error("--rounds must be at least 2 and --repeats at least 1")
    con = common.console(a.json == "-")
    if a.profile:
        return _profile(con, Path(a.profile), sizes, rounds, a.secure_only, a.dropout)
    rows = run(
        sizes,
        rounds,
        a.repeats,
        progress=lambda r: con.print(
            f"[dim]{r['case']}: plain {r['plain_round_seconds']} s, secure {r['secure_round_seconds']} s[/dim]"
        ),
    )
    doc = common.document("rounds", rows, argv)
    for line in common.header_lines(doc):
        con.print(line)
    con.print(table(rows))
    for line in target_lines(rows):
        con.print(line)
    common.write_json(a.json, doc)
    return 0


def _profile(con, root: Path, sizes, rounds: int, secure_only: bool, dropout: float) -> int:
    from console.bench import profile

    for n, d in sizes:
        for secure in (True,) if secure_only else (False, True):
            name = f"n{n}-d{common.fmt_d(d)}-{'secure' if secure else 'plain'}"
            drop = dropout if secure else 0.0
            out = profile.profile_run(partial(run_fedloom, n, d, secure, rounds, dropout=drop), root / name)
            per = [r["wall_seconds"] for r in steady(out["run"])]
            con.print(f"[bold]{name}[/bold]: rounds 2..{rounds}: {', '.join(f'{x:.2f}' for x in per)} s (profiled)")
            profile.print_report(con, name, out["report"])
    return 0


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(";"):
        if part.strip():
            n, d = (int(float(v)) for v in part.split(","))
            out.append((n, d))
    if not out:
        raise ValueError("no sizes given")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
