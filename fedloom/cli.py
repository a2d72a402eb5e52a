"""The `fedloom` command: simulate a federation, run a coordinator, run a participant node."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedloom.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """fedloom: consortium training on Flower with secure aggregation."""


class RichObserver:
    """A progress bar per round and a final table, for `fedloom simulate`."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=console, transient=False,
        )
        self.task = None
        self.rows: list[dict[str, Any]] = []

    def started(self, plan, nodes: int) -> None:
        mode = "secure aggregation" if plan.secure.enabled else "[bold red]PLAINTEXT aggregation (secure OFF)[/]"
        console.print(f"{nodes} participants connected · {plan.task.name} · {plan.strategy.name} · {mode}")
        self.progress.start()
        self.task = self.progress.add_task("", total=plan.rounds + 1)

    def round_done(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        acc = row.get("eval_accuracy")
        desc = f"acc {acc:.3f}" if acc is not None else "acc -"
        if row.get("skipped"):
            desc += f" [yellow](round skipped: {row['skipped']})[/]"
        self.progress.update(self.task, advance=1, description=desc)

    def finished(self, summary: dict[str, Any]) -> None:
        self.progress.stop()


def print_error(message: object) -> None:
    """One literal line on stderr (no markup, no wrapping: '[task]' must stay '[task]')."""
    err_console.print(Text.assemble(("error: ", "bold red"), str(message)), soft_wrap=True, highlight=False)


def _fail(exc: BaseException) -> None:
    print_error(exc)
    raise typer.Exit(2)


def _final_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    table = Table(title=f"fedloom · {summary['scenario']} · {summary['task']}")
    for col in ("round", "accuracy", "eval loss", "train loss", "participants", "seconds"):
        table.add_column(col, justify="right")
    shown = rows if len(rows) <= 12 else rows[:3] + rows[-8:]
    for r in shown:
        fmt = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        table.add_row(str(r["round"]), fmt(r.get("eval_accuracy")), fmt(r.get("eval_loss")), fmt(r.get("train_loss")),
                      str(r.get("participants_replied", "-")), fmt(r.get("wall_seconds"), 2))
    return table


@app.command()
def simulate(
    scenario: Annotated[str | None, typer.Argument(help="Scenario TOML file or built-in name (default: 'default').")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/<timestamp>).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    participants: Annotated[int | None, typer.Option(help="Override the number of participants.")] = None,
    baseline: Annotated[bool, typer.Option(help="Also train centrally on the pooled data, same budget.")] = False,
) -> None:
    """Simulate a whole federation on this machine (Flower Simulation Engine)."""
    from coordinator.outputs import SUMMARY, plot_run, write_json
    from simulations.scenario import default_out_dir, load_scenario

    try:
        sc = load_scenario(scenario)
        plan = sc.plan.with_overrides(rounds=rounds, participants=participants)
        _check_data_fits(plan)
    except UserError as exc:
        _fail(exc)
    from dataclasses import replace

    sc = replace(sc, plan=plan)
    out_dir = (out or Path(default_out_dir())).resolve()
    from simulations.runner import run_scenario

    observer = RichObserver()
    summary = run_scenario(sc, out_dir, observer)
    if baseline:
        from simulations.baseline import centralized_baseline

        with console.status("training the centralized baseline (same model, pooled data, same budget)"):
            summary["centralized_baseline"] = centralized_baseline(plan)
        write_json(out_dir / SUMMARY, summary)
        plot_run(out_dir)
    console.print(_final_table(observer.rows, summary))
    final = summary["final"]["accuracy"]
    line = f"final federated accuracy [bold]{final:.4f}[/]" if final is not None else "no final accuracy"
    if summary.get("centralized_baseline"):
        line += f" · centralized baseline {summary['centralized_baseline']['accuracy']:.4f}"
    if not summary["secure_aggregation"]:
        line += " · [bold red]secure aggregation was OFF[/]"
    console.print(line)
    console.print(f"outputs: {out_dir}")


def _check_data_fits(plan) -> None:
    """Refuse impossible splits (more participants than samples, etc.) before starting Flower."""
    import tasks
    from tasks.partition import partition

    try:
        task = tasks.get_task(plan.task.name)
    except tasks.UnknownTaskError as exc:
        raise UserError(str(exc)) from exc
    pool = tasks.load_pool(task if not tasks.registry.is_registered(task) else plan.task.name, seed=plan.task.seed)
    if plan.participants > len(pool):
        raise UserError(f"{plan.participants} participants but only {len(pool)} training samples in {plan.task.name}")
    try:
        partition(pool.y, plan.participants, plan.task.partition, alpha=plan.task.alpha,
                  shards_per_partition=plan.task.shards, seed=plan.task.seed)
    except ValueError as exc:
        raise UserError(f"cannot split {plan.task.name} into {plan.participants} partitions: {exc}") from exc


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command's own handling
        print_error(exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
