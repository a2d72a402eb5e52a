"""The ServerApp: Flower starts it; it loads the plan and drives the rounds.

`fedloom simulate` builds one with its scenario and a progress display already attached
(`make_server_app(settings)`); `flwr run .` uses the module-level `app`, which reads the
scenario from the run config (`scenario`, `out-dir`, `rounds`).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .driver import RunSettings, initial_model, model_hash, run_federation


def settings_from_run_config(run_config: dict) -> RunSettings:
    """Deployment when the run config names a coordinator kit; else a simulation scenario."""
    if str(run_config.get("kit", "")):
        return deployment_settings(run_config)
    from dataclasses import replace

    # runs while Flower loads participant.client_app on another thread: nothing imported here may
    # import that module (issue 17; tests/test_import_race.py)
    from simulations.harness import hooks_for, prepare
    from simulations.scenario import default_out_dir, load_scenario

    scenario = load_scenario(str(run_config.get("scenario", "default")))
    rounds = int(run_config.get("rounds", 0) or 0)
    participants = int(run_config.get("participants", 0) or 0)
    plan = scenario.plan.with_overrides(rounds=rounds or None, participants=participants or None)
    scenario = replace(scenario, plan=plan)
    out = str(run_config.get("out-dir", "") or "") or default_out_dir()
    wait = float(run_config.get("node-wait", 120.0))
    # a simulation through `flwr run`: provision a throwaway federation, as `fedloom simulate` does
    workspace = prepare(scenario)
    settings = RunSettings(
        plan=plan,
        out_dir=Path(out).resolve(),
        scenario=scenario.name,
        node_wait=wait,
        roster=workspace.roster,
        hooks=hooks_for(scenario, workspace),
    )
    settings.cleanup = workspace.close
    return settings


def deployment_settings(run_config: dict) -> RunSettings:
    from fedloom.kits import load_coordinator_kit
    from fedloom.ledger import LedgerWriter

    kit = load_coordinator_kit(str(run_config["kit"]))
    state = Path(str(run_config.get("state-dir", "") or Path(str(run_config["kit"])) / "state")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    genesis = {"federation": kit.plan.federation, "plan_hash": kit.plan.hash, "roster_hash": kit.roster.digest().hex()}
    if not (state / "ledger.jsonl").exists():  # a new ledger pins round 1's model: members check it against this
        genesis["initial_model_hash"] = model_hash(initial_model(kit.plan))
    ledger = LedgerWriter.open(state / "ledger.jsonl", kit.ledger_key, genesis)
    return RunSettings(
        plan=kit.plan,
        out_dir=state / "outputs",
        scenario=kit.plan.federation,
        node_wait=float(run_config.get("node-wait", 600.0)),
        roster=kit.roster,
        state_dir=state,
        ledger=ledger,
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


def make_server_app(settings: RunSettings | None = None) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if settings is None:  # Flower's own process (deployment, `flwr run`): its output is the run's log
            log_to_stdout()
        run_settings = settings or settings_from_run_config(dict(context.run_config))
        try:
            run_federation(grid, run_settings)
        finally:
            if run_settings.cleanup is not None:
                run_settings.cleanup()

    return server


app = make_server_app()
