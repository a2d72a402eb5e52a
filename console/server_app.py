"""The Flower ServerApp component (`[tool.flwr.app.components] serverapp`): what `flwr run` loads.

It composes the floors below: a run config that names a coordinator kit is a deployment
(`coordinator.server_app.deployment_settings`); any other is a simulation scenario played through
`flwr run` on a local simulation connection (`simulations.harness`). Only this top floor knows both,
so the coordinator never imports simulations. `fedloom simulate` does not come through here: it
builds its ServerApp with its settings already made (`simulations.runner`).

Under `flwr run` this module runs while Flower loads participant.client_app on another thread:
nothing imported here may import that module (issue 17; tests/test_import_race.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from coordinator.driver import RunSettings
from coordinator.server_app import deployment_settings, make_server_app


def settings_from_run_config(run_config: dict) -> RunSettings:
    """Deployment when the run config names a coordinator kit; else a simulation scenario."""
    if str(run_config.get("kit", "")):
        return deployment_settings(run_config)
    return simulation_settings(run_config)


def simulation_settings(run_config: dict) -> RunSettings:
    """A simulation through `flwr run`: provision a throwaway federation, as `fedloom simulate` does."""
    # imported here: a deployment's ServerApp never loads the simulation machinery
    from simulations.harness import prepare, run_settings
    from simulations.scenario import default_out_dir, load_scenario

    scenario = load_scenario(str(run_config.get("scenario", "default")))
    rounds = int(run_config.get("rounds", 0) or 0)
    participants = int(run_config.get("participants", 0) or 0)
    plan = scenario.plan.with_overrides(rounds=rounds or None, participants=participants or None)
    scenario = replace(scenario, plan=plan)
    out = str(run_config.get("out-dir", "") or "") or default_out_dir()
    workspace = prepare(scenario)
    settings = run_settings(scenario, workspace, Path(out).resolve(), float(run_config.get("node-wait", 120.0)))
    settings.cleanup = workspace.close
    return settings


app = make_server_app(settings_from_run_config)
