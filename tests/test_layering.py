"""The production packages import only downward, and no module cycle: the layer table is enforced.

Every import counts, also inside functions and `importlib.import_module("literal")` calls: a lazy
import is a dependency all the same (issue 15). docs/architecture.md shows the same table; a test
below keeps the two identical.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. A package may import its own modules and those of any LOWER row, never a higher
# row nor a sibling in its own row (siblings are independent of each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("console",),
    ("simulations",),
    ("coordinator", "participant"),
    ("fedloom", "tasks"),
    ("protocol",),
)
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


@dataclass(frozen=True)
class Edge:
    """One import of a project module by another: where it is and what it names."""

    source: str
    line: int
    target: str


def modules(root: Path, packages: set[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the given top-level packages."""
    found: dict[str, Path] = {}
    for package in sorted(packages):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _named(node: ast.AST, package: str) -> list[str]:
    """The dotted names one import statement or dynamic-import call asks for."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # `from .x import y` inside package p names p.x
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        return [base] + [f"{base}.{a.name}" for a in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in DYNAMIC_IMPORTERS and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    return []


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The most specific project module a dotted name lands in (`pkg.mod.func` -> `pkg.mod`)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges(root: Path, packages: set[str]) -> list[Edge]:
    """Every import from one project module to another, anywhere in the module."""
    known = modules(root, packages)
    out: set[Edge] = set()
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for asked in _named(node, package):
                if asked.split(".")[0] not in packages:
                    continue
                target = _resolve(asked, known)
                if target and target != name:
                    out.add(Edge(name, node.lineno, target))
    return sorted(out, key=lambda e: (e.source, e.line, e.target))


def rank(layers: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    return {package: row for row, names in enumerate(layers) for package in names}


def layer_violations(found: list[Edge], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Imports of a higher row or of a sibling: `source:line imports target`."""
    row = rank(layers)
    bad = []
    for e in found:
        src, dst = e.source.split(".")[0], e.target.split(".")[0]
        if src != dst and row[dst] <= row[src]:
            where = "a sibling" if row[dst] == row[src] else "a higher layer"
            bad.append(f"{e.source}:{e.line} imports {e.target} ({dst} is {where} of {src})")
    return bad


def cycles(found: list[Edge]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected group of modules."""
    graph: dict[str, set[str]] = {}
    for e in found:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    out = []
    for group in _strongly_connected(graph):
        if len(group) > 1:
            out.append(_cycle_in(min(group), graph, group))
    return sorted(out)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph can be deeper than Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def _cycle_in(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from `start` back to itself inside its strongly connected group."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{start} is in no cycle")  # pragma: no cover


def documented_layers(doc: str) -> tuple[tuple[str, ...], ...]:
    """The layer rows of docs/architecture.md's diagram: lines that start with `name/ · name/`."""
    block = doc.split("## Layers", 1)[1].split("```", 2)[1]
    rows = []
    for line in block.splitlines():
        match = re.match(r"^ ?([a-z_]+/(?: · [a-z_]+/)*)\s", line)
        if match:
            rows.append(tuple(name.strip().rstrip("/") for name in match.group(1).split("·")))
    return tuple(rows)


# ---------------------------------------------------------------------------------- the project
PACKAGES = {p for row in LAYERS for p in row}


def test_every_top_level_package_has_a_layer():
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == PACKAGES


def test_imports_go_only_downward():
    assert layer_violations(edges(ROOT, PACKAGES), LAYERS) == []


def test_no_import_cycles_between_modules():
    assert cycles(edges(ROOT, PACKAGES)) == []


def test_the_architecture_doc_shows_this_table():
    assert documented_layers((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")) == LAYERS


def test_the_scan_sees_lazy_imports_in_the_project():
    """The checks above could pass vacuously; the scan finds imports known to be inside functions."""
    found = edges(ROOT, PACKAGES)
    lazy = _line_of("console/server_app.py", "from simulations.harness")
    assert Edge("console.server_app", lazy, "simulations.harness") in found
    assert any(e.source == "console.cli" and e.target == "coordinator.service" for e in found)


def _line_of(path: str, text: str) -> int:
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


# ---------------------------------------------------------------------------------- the checker
def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_reports_an_inverted_import_and_a_cycle(tmp_path):
    _tree(
        tmp_path,
        {
            "top/__init__.py": "",
            "top/app.py": "import low.b\n",  # downward: allowed
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from top.app import main\n",  # upward, inside a function
            "low/b.py": "from . import c\n",
            "low/c.py": "import importlib\n\ndef g():\n    importlib.import_module('low.b')\n",  # b -> c -> b
            "side/__init__.py": "",
            "side/x.py": "from low import a\n",
            "other/__init__.py": "",
            "other/y.py": "import side.x\n",  # a sibling
        },
    )
    layers = (("top",), ("side", "other"), ("low",))
    found = edges(tmp_path, {"top", "side", "other", "low"})
    assert layer_violations(found, layers) == [
        "low.a:2 imports top.app (top is a higher layer of low)",
        "other.y:1 imports side.x (side is a sibling of other)",
    ]
    assert cycles(found) == [["low.b", "low.c", "low.b"]]


def test_the_checker_passes_a_clean_tree(tmp_path):
    _tree(tmp_path, {"top/__init__.py": "", "top/a.py": "import low\n", "low/__init__.py": "x = 1\n"})
    found = edges(tmp_path, {"top", "low"})
    assert found == [Edge("top.a", 1, "low")]
    assert layer_violations(found, (("top",), ("low",))) == [] and cycles(found) == []


def test_the_doc_parser_reads_rows_and_skips_descriptions():
    doc = "## Layers\n\n```\n a/        x\n           more about a\n b/ · c/   y\n```\n"
    assert documented_layers(doc) == (("a",), ("b", "c"))
