"""Play a scenario on Flower's Simulation Engine: the SAME ServerApp and ClientApp as deployment.

Ray stays private and on loopback (single-machine mode so every component binds 127.0.0.1, see
`fedloom.localray`; its own temp dir, no dashboard, only this machine's CPUs), and no SuperLink is
started (the in-process engine), so nothing outlives the run. Several runs in one process
(`fedloom simulate A B ...`) share one Ray inside `one_ray()`: started by the first, shut down on
leaving; between runs only the runs' actors go.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from coordinator.driver import RunObserver
from coordinator.outputs import SUMMARY
from coordinator.server_app import make_server_app
from coordinator.stop import STOP
from fedloom.errors import RunFailed
from fedloom.localray import keep_ray_on_loopback
from participant.client_app import app as client_app

from .harness import prepare, run_settings
from .interrupt import SignalGuard, write_minimal_summary
from .scenario import Scenario


def ray_backend_config(scenario: Scenario, ray_dir: str) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    return {
        "init_args": {
            "address": "local",  # never join a Ray cluster someone else started on this machine
            "num_cpus": cpus,
            "include_dashboard": False,
            # loopback only because of keep_ray_on_loopback(): otherwise Ray rewrites 127.0.0.1 to this
            # machine's external address and listens on every interface
            "_node_ip_address": "127.0.0.1",
            "_temp_dir": ray_dir,
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
        "client_resources": {"num_cpus": min(scenario.simulation.cpus_per_participant, cpus), "num_gpus": 0},
    }


def start_ray(init_args: dict[str, Any]) -> None:
    """ray.init as Flower's RayBackend would do it (it skips its own when Ray is up), but here, so
    that the signal handlers installed after it are the ones that count (see simulations.interrupt)."""
    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath  # Ray's workers need the driver's import path
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            with _ray_leaves_signals_to_us():
                ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
            return
        except Exception as exc:  # Ray raises a bare Exception for this one
            if RAY_START_TIMEOUT not in str(exc) or attempt == RAY_START_ATTEMPTS:
                raise
            ray.shutdown()  # whatever it started (GCS, raylet) goes, even though init did not finish
            log.warning(
                "Ray did not start within its fixed 30 s (a busy machine?); starting it again (try %d)", attempt + 1
            )


log = logging.getLogger("fedloom.simulate")


@contextlib.contextmanager
def _ray_leaves_signals_to_us() -> Iterator[None]:
    """Ctrl-C and SIGTERM reach fedloom's SignalGuard alone, which stops the run and shuts Ray down.

    Two things in Ray's start-up undo that. (1) ray.init installs SIGTERM handlers that exit at once
    (code 15 or 1): a SIGTERM during Ray's start-up (seconds on a busy machine) then left no outputs;
    Ray's Python-level installer does nothing inside this block. (2) The processes Ray starts (GCS,
    raylet, agents; the raylet starts the workers) share the foreground process group, so a SIGTERM
    to the group (`kill -TERM -pgid`, a supervisor stopping the job) killed the raylet too, and Ray's
    core worker then ended the driver with code 1 and no outputs. Ray blocks SIGINT in them, not
    SIGTERM; here each starts in its own session instead. They still die with the driver: Ray
    starts them with kernel fate-sharing (PR_SET_PDEATHSIG), and ray.shutdown() stops them. The one
    difference: a SIGKILL to the old group no longer reaches them at once; GCS and raylet still die
    with the driver, and Ray's two agents (children of the raylet) notice and exit within about a
    minute (measured: gone 20-65 s after `kill -9` of the driver). Blocking SIGTERM in them instead
    would keep them in the group, but Ray stops its own processes with SIGTERM, then waits a second
    for each before SIGKILL: seconds more on every Ctrl-C.
    """
    import ray._private.services as ray_services
    import ray._private.utils as ray_utils

    class _OwnSessionPopen(ray_services.ConsolePopen):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["start_new_session"] = True
            super().__init__(*args, **kwargs)

    originals = (ray_utils.set_sigterm_handler, ray_services.ConsolePopen)
    ray_utils.set_sigterm_handler = lambda handler: None
    ray_services.ConsolePopen = _OwnSessionPopen
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler, ray_services.ConsolePopen = originals


# Ray waits a fixed 30 s for its raylet to register (ray/_private/node.py, not configurable); on a
# machine busy with other work that can run out although nothing is wrong: try again, twice at most.
RAY_START_TIMEOUT = "timed out during startup"
RAY_START_ATTEMPTS = 3


def ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


_shared_ray_dir: str | None = None  # set inside one_ray(): the runs' common Ray temp dir


def _terminate_actors_only(backend: Any) -> None:
    """Flower's RayBackend.terminate without its ray.shutdown(): the run's actors go, Ray stays."""
    if backend.pool:
        backend.pool.terminate_all_actors()


@contextlib.contextmanager
def one_ray() -> Iterator[None]:
    """Runs inside share one Ray instance (started by the first run, shut down on leaving): Ray's
    start-up (~10 s, more on a busy machine) is paid once for a campaign of scenarios. Flower's
    RayBackend.terminate ends every run with ray.shutdown(); inside, it only ends the run's actors."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    global _shared_ray_dir
    if _shared_ray_dir is not None:
        raise RuntimeError("one_ray() is already active")
    terminate = RayBackend.terminate
    _shared_ray_dir = tempfile.mkdtemp(prefix="flr-", dir="/tmp")  # short: Ray's socket paths are length-limited
    RayBackend.terminate = _terminate_actors_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayBackend.terminate = terminate  # type: ignore[method-assign]
        stop_ray()
        shutil.rmtree(_shared_ray_dir, ignore_errors=True)
        _shared_ray_dir = None


def run_scenario(scenario: Scenario, out_dir: Path, observer: RunObserver) -> dict[str, Any]:
    """Run the whole federation; returns summary.json's content.

    Ctrl-C or SIGTERM stops it within seconds (simulations.interrupt): the summary returned is then
    marked "interrupted" and no report is built."""
    # The public flwr.simulation.run_simulation only adds a deprecation notice (and a telemetry
    # event) around this function; flwr is pinned to 1.41.0, so call it directly.
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    keep_ray_on_loopback()  # again, right before Ray starts: holds even if ray was imported before fedloom
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = _shared_ray_dir
    ray_dir = shared or tempfile.mkdtemp(prefix="flr-", dir="/tmp")  # short: Ray's socket paths are length-limited
    private: list[Callable[[], None]] = [] if shared else [lambda: shutil.rmtree(ray_dir, ignore_errors=True)]

    def cleanup() -> None:
        for step in private:
            step()

    with SignalGuard(out_dir, scenario.name, cleanup) as guard:
        try:
            workspace = prepare(scenario, out_dir)
            private.append(workspace.close)  # the throwaway federation's private keys go with it
            settings = run_settings(scenario, workspace, out_dir, scenario.simulation.node_wait, observer=observer)
            backend = ray_backend_config(scenario, ray_dir)
            if not guard.interrupted:
                if not (shared and ray_is_up()):
                    start_ray(backend["init_args"])
                guard.install()
            if not guard.interrupted:
                try:
                    _run_simulation(
                        server_app=make_server_app(settings),
                        client_app=client_app,
                        num_supernodes=scenario.plan.participants,
                        backend_config=backend,
                        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                    )
                except Exception:
                    # A signal sent to the whole process group also reaches Ray's processes: Flower
                    # then fails on the dead actors before the coordinator loop sees STOP. That is
                    # the interruption, not a failed run (the partial outputs are written below).
                    if not guard.interrupted:
                        raise
                    log.debug("Flower stopped with an error after %s", STOP.signum, exc_info=True)
        finally:
            if not shared or guard.interrupted:
                stop_ray()
            cleanup()
        if guard.interrupted:
            write_minimal_summary(out_dir, scenario.name, STOP.signum or signal.SIGINT, guard.started)
    summary_path = out_dir / SUMMARY
    if not summary_path.exists():
        raise RunFailed(f"the simulation ended without writing {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text())
    if not summary.get("interrupted"):
        finish(scenario, out_dir, summary, getattr(observer, "note", None))
    return summary


def finish(scenario: Scenario, out_dir: Path, summary: dict[str, Any], note: Callable[[str], None] | None) -> None:
    """After a finished run: the consortium report ([report]), then, for a Hugging Face LM task, the
    N+1 models as HF model directories (simulations/hf_models.py); both noted in summary.json."""
    from coordinator.outputs import SUMMARY, write_json

    from .hf_models import export_run, is_hf_task

    changed = False
    if scenario.report.enabled:
        from .tapestry import build_report

        if note:
            note("report: training the member-alone and centralized baselines and the sovereign builds")
        summary["report"] = build_report(scenario, out_dir, summary, note)
        changed = True
    if (out_dir / "model.safetensors").is_file() and is_hf_task(scenario.plan):
        summary["hf_models"] = export_run(scenario, out_dir, summary, note)
        changed = True
    if changed:
        write_json(out_dir / SUMMARY, summary)
