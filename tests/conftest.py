"""Test-wide setup: no telemetry from Flower or Ray, quiet Ray, hypothesis profiles, and the Flower
runs several modules share (tests/shared_runs.py)."""

import os

import profiles
from shared_runs import flwr_local_run, simulate_run  # noqa: F401  (session-wide Flower runs)

import fedloom  # noqa: F401  (sets FLWR_TELEMETRY_ENABLED=0 and RAY_USAGE_STATS_ENABLED=0 first)

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
HYPOTHESIS_PROFILE = profiles.register()


def pytest_report_header(config) -> str:
    """Say which hypothesis profile ran (CI logs: `ci`, derandomized)."""
    return f"hypothesis profile: {HYPOTHESIS_PROFILE} (tests/profiles.py)"

