"""protocol/ is sans-IO: no network, clock, framework or ambient randomness; only its inputs."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import secrets
from pathlib import Path

import pytest

import protocol

PACKAGE = Path(protocol.__file__).parent
SOURCES = sorted(PACKAGE.glob("*.py"))
# Tooling that lives beside the protocol but is no part of it: exempt from the sans-IO rules,
# and no protocol module may import it (checked below).
TOOLING: dict[str, str] = {}  # none: benchmarks live in console/bench, outside the sans-IO package
CORE = [p for p in SOURCES if p.name not in TOOLING]
FORBIDDEN = {
    "flwr",
    "torch",
    "socket",
    "ssl",
    "asyncio",
    "http",
    "urllib",
    "requests",
    "grpc",
    "time",
    "datetime",
    "random",
    "threading",
    "_thread",
    "multiprocessing",
    "subprocess",
    "selectors",
    "socketserver",
    "urllib3",
    "httpx",
    "aiohttp",
    "tensorflow",
    "jax",
}
ALLOWED_DOTTED = {"concurrent.futures"}  # threads only through an executor (mask expansion)
PRODUCTION_RANDOMNESS = (os.urandom, secrets.token_bytes)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import, including `from x import y` as x.y."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _violations(tree: ast.Module) -> list[str]:
    bad = []
    for line, name in _imported_modules(tree):
        top = name.split(".")[0]
        if any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_DOTTED):
            continue
        if top in FORBIDDEN:
            bad.append(f"line {line}: imports {name}")
        if name == "numpy.random" or name.startswith("numpy.random."):
            bad.append(f"line {line}: imports {name}")
        if top == "concurrent" and name not in ("concurrent",):
            bad.append(f"line {line}: imports {name} (only concurrent.futures is allowed)")
    numpy_names = {"numpy"}
    for node in ast.walk(tree):  # names numpy is bound to (import numpy as np)
        if isinstance(node, ast.Import):
            numpy_names |= {a.asname or a.name for a in node.names if a.name == "numpy"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "random"
            and isinstance(node.value, ast.Name)
            and node.value.id in numpy_names | {"np"}
        ):
            bad.append(f"line {node.lineno}: uses {node.value.id}.random")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("__import__", "open", "exec", "eval", "input")
        ):
            bad.append(f"line {node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Name) and node.id == "importlib":
            bad.append(f"line {node.lineno}: dynamic import")
    return bad


def test_the_package_has_sources():
    names = {p.name for p in SOURCES}
    assert {"codec.py", "messages.py", "participant.py", "coordinator.py", "masking.py"} <= names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_module_is_sans_io(path):
    assert _violations(_tree(path)) == []


def test_protocol_depends_on_nothing_else_in_the_project():
    """Layering: the protocol is the bottom layer; adapters import it, never the reverse."""
    upper = {"fedloom", "coordinator", "participant", "simulations", "tasks"}
    for path in CORE:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            else:
                continue
            assert not {m.split(".")[0] for m in mods} & upper, (path.name, mods)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import socket", "socket"),
        ("import urllib.request", "urllib.request"),
        ("from http import client", "http"),
        ("import time as t", "time"),
        ("from datetime import datetime", "datetime"),
        ("import random", "random"),
        ("import threading", "threading"),
        ("import flwr.common", "flwr.common"),
        ("import torch", "torch"),
        ("import grpc", "grpc"),
        ("import numpy as np\nx = np.random.default_rng()", "np.random"),
        ("import numpy as npy\nx = npy.random.rand(3)", "npy.random"),
        ("import numpy\nx = numpy.random.rand(3)", "numpy.random"),
        ("from numpy import random", "numpy.random"),
        ("from numpy.random import default_rng", "numpy.random"),
        ("import concurrent.interpreters", "concurrent.interpreters"),
        ("m = __import__('socket')", "__import__"),
    ],
)
def test_the_checker_catches_io(source, expected):
    """The checker itself must flag each of these (or it would pass on anything)."""
    found = _violations(ast.parse(source))
    assert found, source
    if expected:
        assert any(expected in v for v in found), found


def test_the_checker_allows_what_protocol_needs():
    ok = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import concurrent.futures\n"
        "import numpy as np\nimport hashlib, os, struct\n"
        "from . import shamir\nfrom .codec import Reader\n"
        "x = np.zeros(3)\nrng = x.random\n"
    )
    assert _violations(ast.parse(ok)) == []


def _randomness_parameters():
    """Every function or method in protocol/ that takes a `randomness` parameter with a default."""
    found = []
    for path in CORE:
        mod = importlib.import_module(f"protocol.{path.stem}")
        for _, obj in inspect.getmembers(mod):
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            funcs = [obj] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                funcs = [f for _, f in inspect.getmembers(obj, inspect.isfunction)]
            for f in funcs:
                param = inspect.signature(f).parameters.get("randomness")
                if param is not None and param.default is not inspect.Parameter.empty:
                    found.append((f.__qualname__, param.default))
    return found


def test_participant_defaults_to_os_randomness():
    from protocol.participant import Participant

    default = inspect.signature(Participant.__init__).parameters["randomness"].default
    assert default is os.urandom
    params = _randomness_parameters()
    assert ("Participant.__init__", os.urandom) in params
    for name, default in params:  # no production default is ever a reproducible source
        assert default in PRODUCTION_RANDOMNESS, (name, default)


def test_seeded_randomness_is_only_test_tooling():
    """Only local.py (the in-memory test transport) may build reproducible randomness."""
    for path in CORE:
        if path.name == "local.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "seeded_randomness" not in text, path.name
        tree = _tree(path)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"default_rng", "RandomState", "SystemRandom"}, path.name
