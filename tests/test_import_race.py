"""Issue 17: under `flwr run` the ServerApp must never import the ClientApp module.

Flower's Simulation Engine runs the ServerApp on one thread and loads `participant.client_app:app`
on another; its loader takes the module from sys.modules if it is there, initialised or not. When
the ServerApp's run-config path imported participant.client_app (through simulations.harness),
Flower could get the half-imported module and fail with "partially initialized module
'participant.client_app' has no attribute 'app'" (exit code 700) while `flwr run` still exited 0.

Each check runs in a fresh interpreter: this pytest process may already hold participant.client_app.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT_APP = "participant.client_app"
PROJECT_PACKAGES = ("console", "fedloom", "protocol", "coordinator", "participant", "simulations", "tasks")

# The ServerApp's own path in `flwr run`: import it, then build its settings from a run config
# (a simulation: the branch that provisions throwaway kits through simulations.harness).
SERVER_PATH = """
import json, sys
import console.server_app as server_app
settings = server_app.settings_from_run_config({"rounds": 1, "participants": 3, "out-dir": sys.argv[1]})
settings.cleanup()
print(json.dumps(sorted(sys.modules)))
"""

# The race, made deterministic: a meta-path gate pauses the ServerApp thread the moment it starts
# executing participant.client_app (the module is already in sys.modules, `app` not yet defined);
# meanwhile the main thread loads the ClientApp exactly as the Simulation Engine does. Without the
# gate the same interleaving happens only by chance (on a slow, cold first import).
THREADED_RACE = """
import sys, threading
from importlib.machinery import PathFinder

from flwr.clientapp import ClientApp
from flwr.clientapp.utils import get_load_client_app_fn

import console.server_app as server_app

entered, loaded = threading.Event(), threading.Event()


class PauseServerThreadInClientApp:
    def find_spec(self, name, path=None, target=None):
        if name != "participant.client_app" or threading.current_thread() is not server:
            return None
        spec = PathFinder.find_spec(name, path)
        run_body = spec.loader.exec_module

        def exec_module(module):
            entered.set()
            loaded.wait(60)
            run_body(module)

        spec.loader.exec_module = exec_module
        return spec


def server_side():
    settings = server_app.settings_from_run_config({"rounds": 1, "participants": 3, "out-dir": sys.argv[1]})
    settings.cleanup()


sys.meta_path.insert(0, PauseServerThreadInClientApp())
server = threading.Thread(target=server_side)
server.start()
while not entered.is_set() and server.is_alive():
    entered.wait(0.05)
try:
    load = get_load_client_app_fn("participant.client_app:app", app_path=sys.argv[2], multi_app=False)
    app = load("", "", "")
    outcome = "loaded" if isinstance(app, ClientApp) else f"not a ClientApp: {app!r}"
except Exception as err:
    outcome = f"{type(err).__name__}: {err} (cause: {err.__cause__!r})"
finally:
    loaded.set()
    server.join(60)
print("server thread entered participant.client_app:", entered.is_set())
print("OUTCOME", outcome)
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def server_closure(tmp_path_factory) -> list[str]:
    """The project modules loaded after the ServerApp's import and run-config path."""
    proc = _python(SERVER_PATH, str(tmp_path_factory.mktemp("out")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    return [m for m in loaded if m.split(".")[0] in PROJECT_PACKAGES]


def test_server_app_run_config_path_never_imports_the_client_app(server_closure):
    assert "simulations.harness" in server_closure  # the path under test really ran
    assert CLIENT_APP not in server_closure


def _lazy_imports_of(module: str) -> set[str]:
    """Every module an import statement in `module` names, including imports inside functions."""
    parts = module.split(".")
    source = ROOT.joinpath(*parts).with_suffix(".py")
    if not source.exists():
        source = ROOT.joinpath(*parts, "__init__.py")
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` in package p names p.x
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_module_on_the_server_path_imports_the_client_app_later(server_closure):
    """Import time is not all: a function-level import would reopen the race when the round runs."""
    offenders = [m for m in server_closure if CLIENT_APP in _lazy_imports_of(m)]
    assert offenders == []


def test_lazy_import_scan_sees_the_client_app_import(server_closure):
    """The scan above could pass vacuously; it does find the import where one is known to be."""
    assert CLIENT_APP in _lazy_imports_of("simulations.runner")  # `fedloom simulate` passes the app itself
    assert "fedloom.policy" in _lazy_imports_of("simulations.scenario")  # a function-level import


def test_client_app_loads_while_the_server_app_reads_its_run_config(tmp_path):
    proc = _python(THREADED_RACE, str(tmp_path / "out"), str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = next(line for line in proc.stdout.splitlines() if line.startswith("OUTCOME"))
    assert outcome == "OUTCOME loaded", proc.stdout + proc.stderr[-3000:]
    assert "server thread entered participant.client_app: False" in proc.stdout
