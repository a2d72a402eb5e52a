"""Every benchmark section in one run, with the issue's targets checked against what it measured.

    fedloom bench all --quick --json bench-quick.json     # a few minutes
    fedloom bench all --json bench-full.json              # about an hour on 2 shared cores

Sections, in order: primitives, communication, protocol, rounds, flower (each one's own docstring
says what it measures; `fedloom bench SECTION --help`). The JSON document holds every section's
rows under `sections.<name>` and the targets under `targets`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from console.bench import common

SECTIONS = ("primitives", "communication", "protocol", "rounds", "flower")

# protocol cases of the quick suite (the protocol section's own --quick has 5 cases)
QUICK_PROTOCOL = ((10, 10**6, 0.0), (10, 10**6, 0.1), (100, 10**6, 0.1))


def _target(name: str, value: float | None, goal: str, met: bool | None, detail: str = "") -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "met": met, "detail": detail}


def targets(sections: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's five targets, from whatever sections ran (None when the data is missing)."""
    out = []
    prim = sections.get("primitives", [])
    mask = [r for r in prim if r["key"] == "mask"]
    if mask:
        r = max(mask, key=lambda r: r["size"])  # d=1e7 when present (strings 'd=1e6' < 'd=1e7')
        out.append(
            _target(
                "mask path >= 1.0 G elem/s/core",
                r["value"],
                ">= 1.0",
                r["value"] >= 1.0,
                f"apply_masks {r['size']}, 8 keys, 1 thread; {r['fraction_of_bound']:.0%} of the "
                f"keystream bound {r['bound_value']:.2f} measured beside it",
            )
        )
    prot = sections.get("protocol", [])
    un = [r for r in prot if (r["n"], r["d"], r["dropout"]) == (100, 10**7, 0.1)]
    if un:
        r = un[0]
        out.append(
            _target(
                "server unmask (100, 1e7, 10 %) <= 2.5 s",
                r["server_unmask_seconds"],
                "<= 2.5 s",
                r["server_unmask_seconds"] <= 2.5,
                f"min-max {r['server_unmask_seconds_min']:.2f}-{r['server_unmask_seconds_max']:.2f} s, "
                f"{r['server_mask_keys']} masks removed",
            )
        )
    mem = [r for r in prot if r.get("coordinator_peak_bytes")]
    by_d: dict[int, list[dict[str, Any]]] = {}
    for r in mem:
        by_d.setdefault(r["d"], []).append(r)
    spans = {d: rs for d, rs in by_d.items() if len({r["n"] for r in rs}) > 1}
    if spans:
        d, rs = max(spans.items())
        peaks = {r["n"]: r["coordinator_peak_bytes"] for r in rs}
        lo, hi = min(peaks.values()), max(peaks.values())
        detail = ", ".join(f"n={n}: {p / 1e6:.1f} MB" for n, p in sorted(peaks.items()))
        out.append(
            _target(
                "coordinator memory independent of n",
                hi / lo,
                "peak(n) / peak(n') ~ 1",
                hi / lo < 1.25,
                f"d={common.fmt_d(d)}: {detail} ({hi / (4 * d):.2f} x 4d at most)",
            )
        )
    rnd = [r for r in sections.get("rounds", []) if (r["n"], r["d"]) == (30, 10**6)]
    if rnd and rnd[0]["ratio"] is not None:
        r = rnd[0]
        out.append(
            _target(
                "secure/plain round <= 1.5x at (30, 1e6), simulation",
                r["ratio"],
                "<= 1.5",
                r["ratio"] <= 1.5,
                f"secure {r['secure_round_seconds']:.2f} s, plain "
                f"{r['plain_round_seconds']:.2f} s, ratio min-max {r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
            )
        )
    flw = [r for r in sections.get("flower", []) if (r["n"], r["d"], r["dropout"]) == (30, 10**6, 0.0)]
    if flw:
        r = flw[0]
        if r["speedup"] is None:
            out.append(
                _target(
                    "fedloom >= 10x faster than Flower SecAgg+ at (30, 1e6)",
                    None,
                    ">= 10",
                    None,
                    f"Flower: {r['flower_status']}",
                )
            )
        else:
            out.append(
                _target(
                    "fedloom >= 10x faster than Flower SecAgg+ at (30, 1e6)",
                    r["speedup"],
                    ">= 10",
                    r["speedup"] >= 10,
                    f"fedloom {r['fedloom_round_seconds']:.2f} s, Flower "
                    f"{r['flower_round_seconds']:.2f} s per round, speedup min-max "
                    f"{r['speedup_min']:.1f}-{r['speedup_max']:.1f}",
                )
            )
    return out


def targets_table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="targets (issue 7)")
    for c in ("target", "measured", "goal", "", "detail"):
        t.add_column(c, justify="right" if c == "measured" else "left")
    for r in rows:
        v = "-" if r["value"] is None else f"{r['value']:.2f}"
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]no figure[/]"}[r["met"]]
        t.add_row(r["target"], v, r["goal"], mark, r["detail"])
    return t


def run(
    quick: bool,
    only: tuple[str, ...] = SECTIONS,
    echo: Callable[[Any], None] = print,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the sections in order; a section that fails is recorded (with its error) and the next one
    runs; `checkpoint` gets the results so far after each section (a long run keeps what it has)."""
    sections: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    machines: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def result() -> dict[str, Any]:
        return {
            "sections": sections,
            "section_seconds": seconds,
            "section_machine": machines,
            "section_errors": errors,
            "targets": targets(sections),
        }

    for name in only:
        t0 = time.perf_counter()
        machines[name] = common.machine()
        echo(f"[bold]== {name}[/bold] (load average {machines[name].get('load_average')})")
        try:
            rows, table = _section(name, quick, echo)
        except Exception as exc:  # one broken section must not lose the others
            import traceback

            errors[name] = traceback.format_exc()
            echo(f"[red]{name} failed: {exc!r}[/red]")
            rows, table = [], None
        seconds[name] = time.perf_counter() - t0
        sections[name] = rows
        if table is not None:
            echo(table)
        echo(f"[dim]{name}: {seconds[name]:.0f} s[/dim]")
        if checkpoint:
            checkpoint(result())
    return result()


def _section(name: str, quick: bool, echo: Callable[[Any], None]) -> tuple[list[dict[str, Any]], Any]:
    from console.bench import communication, flower, primitives, rounds
    from console.bench import protocol as protocol_bench

    if name == "primitives":
        rows = primitives.run(quick)
        return rows, primitives.table(rows)
    if name == "communication":
        rows = communication.run(quick)
        return rows, communication.table(rows)
    if name == "protocol":
        cases = QUICK_PROTOCOL if quick else protocol_bench.FULL_CASES
        rows = protocol_bench.run_cases(
            cases,
            repeats=2 if quick else 3,
            progress=lambda r: echo(
                f"[dim]{r['case']}: client {r['client_seconds']:.4f} s, server {r['server_seconds']:.3f} s "
                f"(unmask {r['server_unmask_seconds']:.3f} s)[/dim]"
            ),
        )
        for line in protocol_bench._bound_lines(rows[0]["bounds"], 1):
            echo(line)
        return rows, protocol_bench._table(rows)
    if name == "rounds":
        rows = rounds.run(
            rounds.QUICK_SIZES if quick else rounds.FULL_SIZES,
            3 if quick else 5,
            progress=lambda r: echo(
                f"[dim]{r['case']}: plain {r['plain_round_seconds']} s, secure {r['secure_round_seconds']} s[/dim]"
            ),
        )
        return rows, rounds.table(rows)
    if name == "flower":
        cases = flower.QUICK_CASES if quick else flower.FULL_CASES
        rows = flower.run(
            cases,
            3 if quick else 5,
            300.0 if quick else 900.0,
            progress=lambda r: echo(
                f"[dim]{r['case']}: fedloom {r['fedloom_round_seconds']} s, Flower {r['flower_round_seconds']} s "
                f"({r['flower_status']})[/dim]"
            ),
        )
        return rows, flower.table(rows)
    raise ValueError(f"unknown section {name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench all", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every section with reduced cases (a few minutes)")
    ap.add_argument("--only", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--json", metavar="PATH", help="write everything as one JSON document ('-': stdout)")
    a = ap.parse_args(argv)
    only = tuple(s.strip() for s in a.only.split(",")) if a.only else SECTIONS
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; known: {', '.join(SECTIONS)}")
    con = common.console(a.json == "-")
    start = common.machine()
    for line in common.header_lines({"command": "fedloom bench all " + " ".join(argv or []), "machine": start}):
        con.print(line)

    def save(res: dict[str, Any]) -> None:
        if a.json and a.json != "-":
            common.write_json(a.json, common.document("all", [], argv, quick=a.quick, **res))

    result = run(a.quick, only, echo=con.print, checkpoint=save)
    con.print(targets_table(result["targets"]))
    for t in result["targets"]:
        con.print(
            f"{t['target']}: {t['value'] if t['value'] is None else round(t['value'], 3)} -> "
            f"{ {True: 'met', False: 'missed', None: 'no figure'}[t['met']] } ({t['detail']})"
        )
    common.write_json(a.json, common.document("all", [], argv, quick=a.quick, **result))
    return 1 if result["section_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
