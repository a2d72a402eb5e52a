"""Scenario files: a plan plus what only a simulation has (faults, adversaries, verification).

A scenario is a TOML file. Top-level keys and the [task], [training], [strategy], [secure]
tables make the plan (see fedloom.plan); `name`, `description` and [simulation] are the
scenario's own. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom.errors import UserError
from fedloom.plan import Plan, _build

SCENARIO_DIR = Path(__file__).parent


@dataclass(frozen=True)
class SimulationSpec:
    cpus_per_participant: int = 1
    node_wait: float = 120.0  # seconds to wait for the virtual participants to come up


@dataclass(frozen=True)
class Scenario:
    name: str
    plan: Plan
    description: str = ""
    simulation: SimulationSpec = field(default_factory=SimulationSpec)
    source: str = "built-in"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(spec: str | Path | None = None) -> Scenario:
    """A scenario from a path, or a built-in name ('default' when empty)."""
    spec = str(spec) if spec else "default"
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"scenario file not found: {spec}")
        return parse_scenario(path.read_bytes(), source=str(path))
    builtin = SCENARIO_DIR / f"{spec}.toml"
    if not builtin.is_file():
        raise UserError(f"unknown scenario {spec!r}: not a file, and built-in scenarios are {', '.join(builtin_names())}")
    return parse_scenario(builtin.read_bytes(), source=f"built-in:{spec}")


def parse_scenario(raw: bytes, source: str = "<string>") -> Scenario:
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"invalid TOML in {source}: {exc}") from exc
    name = data.pop("name", Path(source).stem)
    description = data.pop("description", "")
    sim = _build(SimulationSpec, data.pop("simulation", {}), "simulation")
    if sim.cpus_per_participant < 1:
        raise UserError("simulation.cpus_per_participant must be at least 1")
    if not isinstance(name, str) or not isinstance(description, str):
        raise UserError(f"{source}: name and description must be strings")
    plan = Plan.from_dict(data)
    return Scenario(name=name, plan=plan, description=description, simulation=sim, source=source)


def default_out_dir() -> str:
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
