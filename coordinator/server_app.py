"""The ServerApp: Flower starts it; it loads the plan and drives the rounds.

`fedloom simulate` builds one with its scenario and a progress display already attached
(`make_server_app(settings)`). The app `flwr run` loads is composed one floor up
(`console/server_app.py`), which picks deployment (`deployment_settings`, here) or a simulation
scenario from the run config; the coordinator never imports simulations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedloom.malloc import return_big_buffers

from .driver import RunSettings, initial_model, model_hash, run_federation
from .streaming_pull import stream_pulls


def deployment_settings(run_config: dict) -> RunSettings:
    """A real federation: the coordinator kit and state dir the run config names."""
    from fedloom.kits import load_coordinator_kit
    from fedloom.ledger import LedgerWriter

    kit = load_coordinator_kit(str(run_config["kit"]))
    state = Path(str(run_config.get("state-dir", "") or Path(str(run_config["kit"])) / "state")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    genesis = {"federation": kit.plan.federation, "plan_hash": kit.plan.hash, "roster_hash": kit.roster.digest().hex()}
    initial = None
    if not (state / "ledger.jsonl").exists():  # a new ledger pins round 1's model: members check it against this
        initial = initial_model(kit.plan)
        genesis["initial_model_hash"] = model_hash(initial)
    ledger = LedgerWriter.open(state / "ledger.jsonl", kit.ledger_key, genesis)
    return RunSettings(
        plan=kit.plan,
        out_dir=state / "outputs",
        scenario=kit.plan.federation,
        node_wait=float(run_config.get("node-wait", 600.0)),
        roster=kit.roster,
        state_dir=state,
        ledger=ledger,
        initial=initial,  # the run starts from it: built once
    )


def log_to_stdout() -> None:
    """fedloom's INFO lines on stdout, which Flower's `flwr-serverapp` uploads to the run's log
    (`flwr log RUN_ID`, `flwr run --stream`); without a handler Python drops everything below WARNING."""
    import logging
    import sys

    logger = logging.getLogger("fedloom")
    if not any(getattr(h, "_fedloom", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s fedloom: %(message)s"))
        handler._fedloom = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # once, not again through a root handler someone configured
    logger.setLevel(logging.INFO)


def make_server_app(settings: RunSettings | Callable[[dict], RunSettings]) -> ServerApp:
    """A ServerApp for these settings, or for the settings a function builds from the run config."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if callable(settings):  # Flower's own process (deployment, `flwr run`): its output is the run's log
            log_to_stdout()
        run_settings = settings(dict(context.run_config)) if callable(settings) else settings
        return_big_buffers()  # the d-long buffers of a round go back to the OS when dropped (fedloom.malloc)
        stream_pulls(grid)  # deployment: a reply's chunks are pulled as its arrays are built (streaming_pull)
        try:
            run_federation(grid, run_settings)
        finally:
            if run_settings.cleanup is not None:
                run_settings.cleanup()

    return server
