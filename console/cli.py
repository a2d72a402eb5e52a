"""The `fedloom` command: simulate a federation, run a coordinator, run a participant node."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedloom.errors import RunFailed, UserError

if TYPE_CHECKING:
    from coordinator.summary import RunSummary
    from fedloom.ledger import Comparison, VerifyReport
    from simulations.scenario import Scenario


def _keep_argument_help() -> None:
    """Show positional arguments' help: Typer 0.20 stores it before click >= 8.5's Parameter.__init__
    resets `help` to None, so `--help` listed SCENARIO, FEDERATION, TARGET with no description."""
    import typer.core

    original = typer.core.TyperArgument.__init__
    if getattr(original, "_keeps_help", False):
        return

    def init(self: typer.core.TyperArgument, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        original(self, *args, help=help, **kwargs)
        self.help = help

    init._keeps_help = True  # type: ignore[attr-defined]
    typer.core.TyperArgument.__init__ = init  # type: ignore[method-assign]


_keep_argument_help()
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def _typer(**kwargs: Any) -> typer.Typer:
    """A Typer app whose crash reports never print local variables.

    Typer's default rich traceback shows every frame's locals; in a tool that holds private keys,
    CA keys and protocol secrets, an unexpected error would print them to the terminal and into
    whatever log collects it. `fedloom --debug` turns them back on for a developer who asks.
    """
    kwargs.setdefault("context_settings", HELP_OPTIONS)
    return typer.Typer(pretty_exceptions_show_locals=False, **kwargs)


app = _typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from coordinator.provenance import versions

        v = versions()
        console.print(f"fedloom {v['fedloom']} (flwr {v['flwr']}, torch {v['torch']}, python {v['python']})")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="On an unexpected error, show local variables (may print secrets).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Show the versions and exit."),
    ] = False,
) -> None:
    """fedloom: consortium training on Flower with secure aggregation."""
    # Typer reads this from the app it was called as, at the moment an exception escapes.
    app.pretty_exceptions_show_locals = debug


class RichObserver:
    """A progress bar per round and a final table, for `fedloom simulate`."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = None
        self.rows: list[dict[str, Any]] = []

    def started(self, plan, nodes: int) -> None:
        mode = "secure aggregation" if plan.secure.enabled else "[bold red]PLAINTEXT aggregation (secure OFF)[/]"
        console.print(f"{nodes} participants connected · {plan.task.name} · {plan.strategy.name} · {mode}")
        self.progress.start()
        self.task = self.progress.add_task("", total=plan.rounds)

    def round_done(self, row: dict[str, Any]) -> None:
        """Row 0 is the initial model's evaluation: it fills the description, not the count of rounds."""
        self.rows.append(row)
        acc = row.get("eval_accuracy")
        desc = f"acc {acc:.3f}" if acc is not None else "acc -"
        if row.get("skipped"):
            desc += f" [yellow](round skipped: {escape(str(row['skipped']))})[/]"
        self.progress.update(self.task, advance=1 if int(row["round"]) >= 1 else 0, description=desc)

    def finished(self, summary: RunSummary) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        console.print(Text(text, style="dim"))


def print_error(message: object) -> None:
    """One literal line on stderr (no markup, no wrapping: '[task]' must stay '[task]')."""
    err_console.print(Text.assemble(("error: ", "bold red"), str(message)), soft_wrap=True, highlight=False)


def _fail(exc: BaseException) -> None:
    print_error(exc)
    raise typer.Exit(2)


def _final_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    table = Table(title=f"fedloom · {summary.get('scenario', '')} · {summary.get('task', '')}")
    for col in ("round", "accuracy", "eval loss", "train loss", "participants", "seconds"):
        table.add_column(col, justify="right")
    shown = rows if len(rows) <= 12 else rows[:3] + rows[-8:]
    for r in shown:
        fmt = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        table.add_row(
            str(r["round"]),
            fmt(r.get("eval_accuracy")),
            fmt(r.get("eval_loss")),
            fmt(r.get("train_loss")),
            str(r.get("participants_replied", "-")),
            fmt(r.get("wall_seconds"), 2),
        )
    return table


def _adversary_line(adv: dict[str, Any]) -> Text:
    """One line on the simulated attack: did the adversary get the target's update, who refused."""
    style = "bold red" if adv["succeeded"] else "bold green"
    rules = sorted({r["rule"] for r in adv.get("refusals", [])})
    shares = adv.get("shares_obtained", {})
    return Text.assemble(
        f"adversary {adv['kind']} (round {adv['round']}, target {adv['target']}): ",
        ("succeeded" if adv["succeeded"] else "failed", style),
        f" · refusals {', '.join(rules) or 'none'} · shares seed {shares.get('seed', 0)}, key {shares.get('key', 0)}"
        f" of {shares.get('threshold', '?')} needed",
    )


@app.command()
def simulate(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Scenario TOML file(s), or built-ins: {', '.join(_builtin_scenarios())} (default: default). "
            "Several run one after another on one Ray start, each in OUT/<scenario name>.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/<timestamp>).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    participants: Annotated[int | None, typer.Option(help="Override the number of participants.")] = None,
    baseline: Annotated[bool, typer.Option(help="Also train centrally on the pooled data, same budget.")] = False,
    force: Annotated[bool, typer.Option(help="Write over the outputs of an earlier run in --out.")] = False,
) -> None:
    """Simulate a whole federation on this machine (Flower Simulation Engine)."""
    from simulations.scenario import default_out_dir, load_scenario

    names = scenarios or [None]
    try:
        runs = []
        for name in names:  # every scenario checked before anything starts
            sc = load_scenario(name)
            plan = sc.plan.with_overrides(rounds=rounds, participants=participants)
            _check_data_fits(plan)
            runs.append(sc.with_plan(plan))
        base = (out or Path(default_out_dir())).resolve()
        several = len(runs) > 1  # each run then writes OUT/<its name>, all on one Ray start
        if several:
            seen = [sc.name for sc in runs]
            twice = sorted({n for n in seen if seen.count(n) > 1})
            if twice:
                raise UserError(f"scenario name(s) given twice: {', '.join(twice)} (each run writes OUT/<name>)")
        out_dirs = [base / sc.name if several else base for sc in runs]
        for sc, out_dir in zip(runs, out_dirs, strict=True):
            _not_a_previous_run(_writable_dir(out_dir), force)
            _keep_scenario(sc, out_dir)
    except UserError as exc:
        _fail(exc)
    from simulations.runner import one_ray

    with one_ray() if several else contextlib.nullcontext():
        for i, (sc, out_dir) in enumerate(zip(runs, out_dirs, strict=True)):
            if several:
                console.rule(f"{sc.name} ({i + 1} of {len(runs)})")
            _simulate_one(sc, out_dir, baseline)


def _simulate_one(sc: Scenario, out_dir: Path, baseline: bool) -> None:
    """One scenario: run it, then its table, adversary verdict, final line, report checks."""
    from coordinator.outputs import SUMMARY, plot_run, write_json
    from simulations.runner import run_scenario

    plan = sc.plan
    observer = RichObserver()
    try:
        summary = run_scenario(sc, out_dir, observer)
    except RunFailed as exc:
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    if summary.get("interrupted"):
        _report_interrupted(observer.rows, summary, out_dir)
    if baseline:
        from simulations.baseline import centralized_baseline

        with console.status("training the centralized baseline (same model, pooled data, same budget)"):
            summary["centralized_baseline"] = centralized_baseline(plan)
        write_json(out_dir / SUMMARY, summary)
        plot_run(out_dir)
    console.print(_final_table(observer.rows, summary))
    if summary.get("adversary"):
        console.print(_adversary_line(summary["adversary"]))
    final = summary["final"]["accuracy"]
    line = f"final federated accuracy [bold]{final:.4f}[/]" if final is not None else "no final accuracy"
    if summary.get("centralized_baseline"):
        line += f" · centralized baseline {summary['centralized_baseline']['accuracy']:.4f}"
    if not summary["secure_aggregation"]:
        line += " · [bold red]secure aggregation was OFF[/]"
    console.print(line)
    if summary.get("report"):
        for name, check in summary["report"]["checks"].items():
            mark = "[bold green]PASS[/]" if check["pass"] else "[bold red]FAIL[/]"
            console.print(Text.from_markup(f"{mark} {name}: ") + Text(check["summary"]), soft_wrap=True)
        console.print(f"report: {summary['report']['report']} · plot: {summary['report']['plot']}", soft_wrap=True)
    console.print(f"outputs: {out_dir}")


def _report_interrupted(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> None:
    """What a stopped simulation kept, then exit 128 + the signal number (130 Ctrl-C, 143 SIGTERM)."""
    import signal

    if rows:
        console.print(_final_table(rows, summary))
    by = str(summary.get("interrupted_by", "SIGINT"))
    console.print(
        f"[bold yellow]interrupted ({by})[/] after {summary.get('rounds_completed', 0)} completed round(s); "
        f"partial outputs: {out_dir}",
        soft_wrap=True,
    )
    try:
        code = 128 + signal.Signals[by].value
    except KeyError:
        code = 130
    raise typer.Exit(code)


coordinator_app = _typer(no_args_is_help=True, help="Run the coordinator service.")
participant_app = _typer(no_args_is_help=True, help="Run a participant node on this member's machine.")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(participant_app, name="participant")


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@coordinator_app.command("start")
def coordinator_start(
    kit: Annotated[Path, typer.Option(help="The coordinator's kit (from `fedloom provision`).")],
    state_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints, ledger, logs, outputs (default: KIT/state).")
    ] = None,
    bind: Annotated[str | None, typer.Option(help="Public HOST:PORT (default: the federation's address).")] = None,
    app_dir: Annotated[Path, typer.Option("--app", help="The fedloom app directory whose hash the plan names.")] = Path(
        "."
    ),
    node_wait: Annotated[float, typer.Option(help="Seconds to wait for members' nodes to connect.")] = 600.0,
) -> None:
    """Start the SuperLink (loopback), the public gateway, register the members' nodes, run the plan.

    Started again on the same state directory, it resumes after the last checkpointed round."""
    from coordinator import service

    _logging()
    try:
        fed = json.loads((kit / "federation.json").read_text()) if (kit / "federation.json").exists() else {}
        address = bind or fed.get("address")
        if not address:
            raise UserError(f"no --bind given and no address in {kit / 'federation.json'}")
        _check_host_port(address, "--bind" if bind else f"address in {kit / 'federation.json'}")
        from coordinator.control import announce

        for text, style in announce(kit, state_dir or kit / "state"):
            console.print(Text(text, style=style), soft_wrap=True, highlight=False)
        code = service.start(str(kit), str(state_dir or kit / "state"), address, str(app_dir), node_wait, _print_event)
    except UserError as exc:
        _fail(exc)
    from coordinator.control import closing_line

    text, style = closing_line(state_dir or kit / "state", code)
    console.print(Text(text, style=style), soft_wrap=True, highlight=False)
    raise typer.Exit(code)


_EVENT_STYLE = {"refusal": "yellow", "refused": "bold red", "round": "bold", "resent": "yellow", "done": "bold green"}


def _print_event(event: dict[str, Any]) -> None:
    """One coordinator event as one literal line: rule names like [cohort.too-small] must stay as they are."""
    style = _EVENT_STYLE.get(str(event.get("kind")), "")
    if event.get("kind") == "round" and event.get("skipped"):
        style = "yellow"
    console.print(Text(str(event.get("text", "")), style=style), soft_wrap=True, highlight=False)


@app.command("status")
def status_command(
    state_dir: Annotated[Path, typer.Argument(help="The coordinator's state directory (its --state-dir).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print status.json (plus coordinator_running).")] = False,
) -> None:
    """Progress of a coordinator's run, from another terminal: rounds done, round and stage now, refusals."""
    from coordinator.control import status, status_lines

    try:
        report = status(state_dir)
    except UserError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for line in status_lines(report):
        console.print(Text(line), soft_wrap=True, highlight=False)


@app.command("stop")
def stop_command(
    state_dir: Annotated[Path, typer.Argument(help="The coordinator's state directory (its --state-dir).")],
    wait: Annotated[float, typer.Option(help="Seconds to wait for it to exit.")] = 60.0,
) -> None:
    """Ask the coordinator running on STATE_DIR to stop cleanly (SIGTERM); start it again to resume."""
    from coordinator.control import stop

    try:
        pid, exited = stop(state_dir, wait)
    except UserError as exc:
        _fail(exc)
    if not exited:
        print_error(f"the coordinator (pid {pid}) has not exited after {wait:.0f} s; it may still be stopping")
        raise typer.Exit(1)
    console.print(Text(f"stopped the coordinator (pid {pid}); start it again on {state_dir} to resume"))


@participant_app.command("start")
def participant_start(
    kit: Annotated[Path, typer.Option(help="This member's kit (from `fedloom provision`).")],
    data: Annotated[
        Path, typer.Option(help="This member's data: a directory with train.npz (and test.npz) or a .npz.")
    ],
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    state_dir: Annotated[
        Path | None, typer.Option(help="Where this node keeps its state (default: KIT/state).")
    ] = None,
    superlink: Annotated[str | None, typer.Option(help="Override the coordinator address in the kit.")] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Language-model tasks: this member's copy of the base (.gguf or HF directory); "
            "it must hash to the plan's base_sha256."
        ),
    ] = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            help="Seconds between this node's heartbeats (10-1800); the coordinator learns the node is gone "
            "after 2 missed ones. Shorter notices a hung machine sooner, for a little more traffic."
        ),
    ] = 30.0,
) -> None:
    """Start this member's SuperNode: it trains on its own data and device, under its own policy."""
    from participant import service

    _logging()
    try:
        code = service.start(
            str(kit),
            str(data),
            device,
            str(state_dir) if state_dir else None,
            superlink,
            str(base) if base else None,
            heartbeat,
        )
    except UserError as exc:
        _fail(exc)
    raise typer.Exit(code)


@participant_app.command("sovereign")
def participant_sovereign(
    kit: Annotated[Path, typer.Option(help="This member's kit (its plan names the task).")],
    data: Annotated[Path, typer.Option(help="This member's data, as for `participant start`.")],
    steps: Annotated[int, typer.Option(help="Fine-tuning steps on this member's own data.")] = 100,
    lr: Annotated[float, typer.Option(help="Learning rate (default: the plan's training.lr).")] = 0.0,
    state_dir: Annotated[
        Path | None, typer.Option(help="The node's state directory (default: KIT/state); models/ is in it.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Fine-tune the last shared base this node kept on this member's own data: its sovereign model.

    Reads STATE/models/base.safetensors, writes STATE/models/sovereign.safetensors and its card
    (the base's lineage, the settings); nothing leaves this machine."""
    import tasks
    from fedloom.kits import load_member_kit
    from participant.device import resolve_device
    from participant.local_data import from_path
    from participant.sovereign import SovereignSpec, build_from_directory

    try:
        if steps < 1:
            raise UserError(f"--steps must be at least 1 (got {steps})")
        member = load_member_kit(kit)
        models = (state_dir or kit / "state") / "models"
        if not (models / "base.safetensors").exists():
            raise UserError(f"no shared base in {models}: this node has not finished a training round yet")
        plan = member.plan
        local = from_path(plan.task.ref, str(data))
        dev = resolve_device(device)
        task = tasks.get_task(plan.task.ref)
        spec = SovereignSpec.from_plan(plan, steps, lr)
        with console.status(f"fine-tuning the shared base for {steps} steps on {len(local.train)} examples"):
            vector, card = build_from_directory(models, task, local.train, spec, dev)
    except (UserError, ValueError) as exc:
        _fail(exc)
    model = task.build_model()
    tasks.vector_to_model(model, vector)
    ev = task.evaluate(model, local.test, dev)
    console.print(
        f"sovereign model of {member.member.name}: {models / 'sovereign.safetensors'} · held-out loss "
        f"{ev.loss:.4f} · from base {card['derived_from'][:16]} (lineage of {len(card['lineage'])} bases)",
        soft_wrap=True,
    )


@participant_app.command("export")
def participant_export(
    kit: Annotated[Path, typer.Option(help="This member's kit (its plan names the language-model task).")],
    out: Annotated[Path, typer.Option(help="Where to write shared-base/ and <member>/.")],
    state_dir: Annotated[
        Path | None, typer.Option(help="The node's state directory (default: KIT/state); models/ is in it.")
    ] = None,
    base: Annotated[
        Path | None, typer.Option(help="This member's copy of the base, as for `participant start --base`.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Write over an earlier export in --out.")] = False,
) -> None:
    """Write the shared base and this member's own model as Hugging Face model directories.

    Language-model tasks only. Reads STATE/models/ (the last shared base received, the sovereign or
    local model); writes OUT/shared-base and OUT/<member> (weights, tokenizer, config, a model card
    with the base pin and lineage), loadable by transformers and servers that read HF directories."""
    from participant.hf_export import export_member
    from tasks.hflm_base import BASE_ENV

    _logging()
    if base:
        os.environ[BASE_ENV] = str(base.expanduser().resolve())
    try:
        with console.status("writing HF model directories"):
            written = export_member(kit.resolve(), (state_dir or kit / "state").resolve(), out.resolve(), force)
    except UserError as exc:
        _fail(exc)
    for name, directory in written.items():
        console.print(f"{name}: {directory}", soft_wrap=True)


bench_app = _typer(no_args_is_help=True, help="Benchmarks: tables on the terminal, JSON on request.")
app.add_typer(bench_app, name="bench")


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_app.command("protocol", context_settings=_PASSTHROUGH)
def bench_protocol(ctx: typer.Context) -> None:
    """Client and server seconds per round at (n, d, dropout) in-process, coordinator memory (--help)."""
    from console.bench.protocol import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("primitives", context_settings=_PASSTHROUGH)
def bench_primitives(ctx: typer.Context) -> None:
    """Mask path, quantization, X25519, Ed25519, Shamir, each beside this machine's bound (--help: options)."""
    from console.bench.primitives import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("communication", context_settings=_PASSTHROUGH)
def bench_communication(ctx: typer.Context) -> None:
    """Bytes a participant uploads and downloads per round, and the expansion over plaintext (--help)."""
    from console.bench.communication import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("rounds", context_settings=_PASSTHROUGH)
def bench_rounds(ctx: typer.Context) -> None:
    """Secure vs plain round wall time in the Simulation Engine, same scenario both ways (--help)."""
    from console.bench.rounds import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("flower", context_settings=_PASSTHROUGH)
def bench_flower(ctx: typer.Context) -> None:
    """fedloom vs Flower 1.41's own SecAgg+ per round, same (n, d, dropout), same run (--help)."""
    from console.bench.flower import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("deployment", context_settings=_PASSTHROUGH)
def bench_deployment(ctx: typer.Context) -> None:
    """A real deployment on loopback (SuperLink, gateway, TLS, SuperNodes): round, trip and CPU figures."""
    from console.bench.deployment import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("memory", context_settings=_PASSTHROUGH)
def bench_memory(ctx: typer.Context) -> None:
    """Peak RSS of the coordinator and a member in a secure round at d parameters (`--help` for options)."""
    from console.bench.memory import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


@bench_app.command("all", context_settings=_PASSTHROUGH)
def bench_all(ctx: typer.Context) -> None:
    """Every section (--quick: a few minutes) and the issue's targets checked (--help)."""
    from console.bench.suite import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


def _writable_dir(path: Path) -> Path:
    """The output directory, created now: a file in its place or no write permission is a user error
    before Ray starts, not a traceback after the first round."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to the output directory {path}")
    return path


def _builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped in simulations/ (without importing the simulation stack)."""
    import simulations

    return sorted(p.stem for p in Path(simulations.__file__).parent.glob("*.toml"))


RUN_FILES = ("summary.json", "metrics.jsonl", "model.safetensors")


def _not_a_previous_run(out_dir: Path, force: bool) -> None:
    """--out on a directory that holds a run's outputs: refused unless --force (they would be overwritten)."""
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found and not force:
        raise UserError(f"--out {out_dir} already holds a run ({', '.join(found)}); give --force to write over it")


def _keep_scenario(scenario: Any, out_dir: Path) -> None:
    """A copy of the scenario file beside its outputs (the effective plan goes to plan.json at start)."""
    from simulations.scenario import SCENARIO_DIR

    source = str(scenario.source)
    path = SCENARIO_DIR / f"{source.split(':', 1)[1]}.toml" if source.startswith("built-in:") else Path(source)
    if path.is_file():
        (out_dir / "scenario.toml").write_bytes(path.read_bytes())


def _check_host_port(address: str, what: str) -> None:
    """HOST:PORT with a port in 1..65535 (IPv6 hosts in brackets), checked before any server starts."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"{what} must be HOST:PORT with a port in 1..65535 (got {address!r})")


def _check_data_fits(plan) -> None:
    """Refuse impossible splits (more participants than samples, etc.) before starting Flower."""
    import tasks
    from tasks.partition import partition

    try:
        task = tasks.get_task(plan.task.ref)
    except tasks.UnknownTaskError as exc:
        raise UserError(str(exc)) from exc
    try:
        pool = tasks.load_pool(task if not tasks.registry.is_registered(task) else plan.task.ref, seed=plan.task.seed)
    except tasks.hflm_base.BaseModelError as exc:  # a language model's base: missing, or not the pinned one
        raise UserError(str(exc)) from None
    if plan.participants > len(pool):
        raise UserError(f"{plan.participants} participants but only {len(pool)} training samples in {plan.task.name}")
    try:
        groups = None
        if plan.task.partition == "groups":
            groups = tasks.participants.resolve_groups(plan.task.ref, plan.task.group_labels())
        partition(
            pool.y,
            plan.participants,
            plan.task.partition,
            alpha=plan.task.alpha,
            shards_per_partition=plan.task.shards,
            seed=plan.task.seed,
            groups=groups,
        )
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot split {plan.task.name} into {plan.participants} partitions: {exc}") from exc


ledger_app = _typer(
    add_completion=False,
    no_args_is_help=True,
    help="The round ledger: what the coordinator did in each round, hash-chained and signed.",
)
app.add_typer(ledger_app, name="ledger")


@ledger_app.callback()
def _ledger_root() -> None:
    """The round ledger: what the coordinator did in each round, hash-chained and signed."""


@ledger_app.command("verify")
def ledger_verify(
    target: Annotated[Path, typer.Argument(help="A ledger file, or a directory: every *.jsonl in it.")],
    key: Annotated[Path | None, typer.Option("--key", help="The coordinator's ledger.pub (hex or PEM).")] = None,
    kit: Annotated[Path | None, typer.Option("--kit", help="A member kit directory: uses KIT/ledger.pub.")] = None,
    against: Annotated[
        Path | None,
        typer.Option("--against", help="Another copy (e.g. a member's own): report a fork or a cut-off ledger."),
    ] = None,
) -> None:
    """Check a ledger: every line, hash link and signature. Exit 0 if all are intact, 1 if any is broken.

    A ledger cut off after a complete entry, or rewritten from some entry on and signed again, still verifies on
    its own: only another copy shows it. With --against, LEDGER must hold every entry of that copy (same hashes)."""
    from fedloom.ledger import compare, read_public_key, verify

    try:
        key = _ledger_key_file(key, kit)
        public_key = read_public_key(key) if key is not None else None
        files = _ledger_files(target)
        if against is not None and (len(files) != 1 or not against.is_file()):
            raise UserError(f"--against needs one ledger file and one copy file (not found or a directory: {against})")
        reports = [(f, verify(f, public_key)) for f in files]
        comparison = compare(files[0], against, public_key) if against is not None else None
    except UserError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(UserError(f"cannot read {exc.filename}: {exc.strerror or exc}"))
    console.print(_ledger_table(reports))
    _print_ledger_findings(reports, public_key is not None, comparison)
    if not all(r.ok for _, r in reports) or (comparison is not None and not comparison.ok):
        raise typer.Exit(1)


def _ledger_key_file(key: Path | None, kit: Path | None) -> Path | None:
    """The ledger public key file --key or --kit names (None: none given), refused before any ledger is read."""
    from fedloom.kits import LEDGER_PUB_FILE

    if key is not None and kit is not None:
        raise UserError("give --key or --kit, not both")
    if kit is not None:
        if not kit.is_dir():
            raise UserError(f"kit directory not found: {kit}")
        key = kit / LEDGER_PUB_FILE
        if not key.is_file():
            raise UserError(f"kit {kit} has no {LEDGER_PUB_FILE} (the coordinator's ledger public key)")
    return key


def _ledger_files(target: Path) -> list[Path]:
    """The ledgers `fedloom ledger verify` checks: the file itself, or every *.jsonl file in a directory."""
    if target.is_dir():
        files = sorted(p for p in target.glob("*.jsonl") if p.is_file())
        if not files:
            raise UserError(f"no *.jsonl ledger in {target}")
    elif target.is_file():
        files = [target]
    else:
        raise UserError(f"ledger not found: {target}")
    return files


def _ledger_table(reports: list[tuple[Path, VerifyReport]]) -> Table:
    """One row per ledger checked, so a directory of copies reads at a glance."""
    table = Table(title="fedloom ledger")
    for col, justify in (
        ("ledger", "left"),
        ("entries", "right"),
        ("rounds", "right"),
        ("key", "left"),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for f, r in reports:
        source = "kit" if r.key_source == "kit" else "genesis (self-certified)"
        status = Text("ok", style="green") if r.ok else Text("BROKEN", style="bold red")
        table.add_row(Text(str(f)), str(r.entries), str(r.rounds), source, status)
    return table


def _print_ledger_findings(
    reports: list[tuple[Path, VerifyReport]], keyed: bool, comparison: Comparison | None
) -> None:
    """What the table cannot say: each broken ledger's first error, a self-certified check, the comparison."""
    for f, r in reports:
        if not r.ok:
            console.print(Text(f"{f}: {r.first_error}"), soft_wrap=True, highlight=False)
    if not keyed:
        console.print(
            Text(
                "no --key/--kit: signatures were checked against the key the ledger names itself; "
                "that proves it is intact, not who wrote it"
            ),
            soft_wrap=True,
            highlight=False,
        )
    if comparison is not None:
        style = "green" if comparison.ok else "bold red"
        console.print(Text(f"{comparison.verdict}: ", style=style) + Text(comparison.detail), soft_wrap=True)


@app.command()
def provision(
    federation: Annotated[Path, typer.Argument(help="The federation file (see examples/federation.toml).")],
    out: Annotated[Path, typer.Option(help="Where to write the kits: OUT/ca, OUT/coordinator, OUT/<member>.")],
    app_dir: Annotated[
        Path,
        typer.Option(
            "--app",
            help="The fedloom app directory whose bundle members agree to run (its FAB hash goes into the plan).",
        ),
    ] = Path("."),
    force: Annotated[bool, typer.Option(help="Replace existing kits, private keys included (all new keys).")] = False,
) -> None:
    """Write the consortium's kits: a CA, the coordinator's kit, one kit per member."""
    from fedloom.provision import certificate_sans, load_federation
    from fedloom.provision import provision as write_kits

    try:
        spec = load_federation(federation)
        with console.status("building the app bundle and generating keys"):
            result = write_kits(spec, out, app_dir, force)
    except UserError as exc:
        _fail(exc)
    console.print(Text(f"fedloom · {spec.name} · kits in {result.out}", style="bold"), soft_wrap=True)
    # directories relative to OUT, every cell folded rather than cut: readable at 80 columns
    table = Table()
    for col in ("directory", "give to", "private keys (0600)"):
        table.add_column(col, overflow="fold")

    def rel(path: Path) -> str:
        return os.path.relpath(path, result.out) + "/"

    table.add_row(rel(result.ca_dir), "[bold red]nobody: keep offline[/]", "ca.key")
    table.add_row(rel(result.coordinator_dir), f"the coordinator host ({spec.address})", "server.key, ledger.key")
    for m in spec.members:
        who = f"member {m.name}" + (f" ({m.country})" if m.country else "")
        table.add_row(rel(result.member_dirs[m.name]), who, "identity.pem, node.key")
    console.print(table)
    console.print(f"app hash (FAB sha256): [bold]{result.plan.app_hash}[/]", soft_wrap=True)
    console.print(
        f"plan hash: {result.plan.hash} · {len(spec.members)} members · {result.plan.rounds} rounds · "
        f"TLS names: {', '.join(certificate_sans(spec))}",
        soft_wrap=True,
    )
    console.print(
        f"[bold yellow]The CA private key is {result.ca_key}: move it offline (it can mint a certificate "
        "for the coordinator's name); no running service needs it.[/]"
    )
    console.print("Hand each kit to its party over a private channel; a member's kit holds its own keys only.")
    for path in result.stale:
        console.print(f"[yellow]note: {path} is not a kit of this federation (left as it was)[/]")


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command's own handling
        print_error(exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
