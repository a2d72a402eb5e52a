"""Test-wide setup: no telemetry from Flower or Ray, quiet Ray, hypothesis profiles, and the Flower
runs several modules share (tests/shared_runs.py)."""

import os

import profiles
import pytest
from shared_runs import flwr_local_run, simulate_run  # noqa: F401  (session-wide Flower runs)

import fedloom  # noqa: F401  (sets FLWR_TELEMETRY_ENABLED=0 and RAY_USAGE_STATS_ENABLED=0 first)

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
HYPOTHESIS_PROFILE = profiles.register()


def pytest_report_header(config) -> str:
    """Say which hypothesis profile ran (CI logs: `ci`, derandomized)."""
    return f"hypothesis profile: {HYPOTHESIS_PROFILE} (tests/profiles.py)"


SHARED_RUNS = {"simulate_run", "flwr_local_run"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    """Keep what shares a Flower start-up on one xdist worker (`--dist loadgroup`): a module's tests
    stay together (its module fixtures start a federation once), and the tests of any module that
    use the session's shared runs go to one worker, so each shared run starts once. A test marked
    with its own `xdist_group` (a long one that needs no module fixture) may run beside the others."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        shared = SHARED_RUNS & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.xdist_group("shared-runs" if shared else item.module.__name__))
