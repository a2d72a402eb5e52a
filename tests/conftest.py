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



# The longest files first (each is one xdist work unit under --dist loadfile): the suite's wall time
# is its longest worker, and a long file handed out last would run alone at the end. Seconds measured
# in CI (pytest --durations) on 2 cores, longest first; the other files follow in their usual order.
LONGEST_FIRST = (
    "test_deployment.py",  # a secure federation, a member killed mid-round (~480 s)
    "test_adversary_sim.py",  # seven attack simulations (~250 s)
    "test_deployment_resume.py",  # a crashed and a reference federation side by side (~220 s)
    "test_deployment_secure_resume.py",  # ~170 s
    "test_deployment_netns.py",
    "test_deploy_latency.py",
    "test_simulation_e2e.py",
    "test_flwr_run.py",
    "test_secure_simulation.py",
    "test_interrupt.py",
    "test_tapestry.py",
    "test_loopback_only.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Hand the longest files to the xdist workers first (longest-processing-time-first)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="module")
def shared_ray():
    """In-process simulations of one module share one Ray start (`simulations.runner.one_ray`, what
    `fedloom simulate A B ...` uses); it is shut down when the module's tests are done."""
    from simulations.runner import one_ray

    with one_ray():
        yield
