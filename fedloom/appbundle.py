"""The Flower app bundle (FAB) members agree to run, and its hash.

`flwr run <dir>` (flwr 1.41, `flwr/cli/run/run.py`) builds the FAB with
`flwr.cli.build.build_fab_from_disk(dir)` and submits `Fab(hash_str=sha256(fab).hexdigest(), ...)`;
the SuperLink recomputes that SHA-256 over the bytes it receives and stores it as `Run.fab_hash`,
and SuperNodes fetch the FAB by it. We call the same function, so `app_bundle_hash(dir)` is the
hash Flower will report for a run started from `dir` — byte for byte, not a re-implementation.

What the hash depends on (measured and read in flwr's build code):
- the bytes of every file `[tool.flwr.app] fab-include` selects (minus `.gitignore`d files and
  Flower's built-in excludes, e.g. tests and `__pycache__`), untracked files included;
- pyproject.toml *as parsed* (Flower re-serializes it with tomli-w and drops
  `[tool.flwr.federations]`), so its comments and formatting do not count, its values do;
- the zip writer: entries are sorted and dated 2024-10-01, so builds are deterministic, but they
  are DEFLATE-compressed by the running zlib (and the TOML written by the installed tomli-w): build
  where `flwr run` will run (same image / same flwr, zlib, tomli-w) when the hash must match.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tomllib
import warnings
import zipfile
from pathlib import Path

from fedloom.errors import UserError

APP_PROJECT = "fedloom"


def _app_dir(app_dir: str | Path) -> Path:
    app = Path(app_dir).expanduser().resolve()
    pyproject = app / "pyproject.toml"
    if not pyproject.is_file():
        raise UserError(f"app directory {app} has no pyproject.toml (run from the fedloom checkout or pass --app DIR)")
    try:
        config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"invalid TOML in {pyproject}: {exc}") from exc
    name = config.get("project", {}).get("name")
    if name != APP_PROJECT or "app" not in config.get("tool", {}).get("flwr", {}):
        raise UserError(
            f"{pyproject} is not the fedloom Flower app (project name {name!r}, "
            "expected 'fedloom' with [tool.flwr.app])"
        )
    return app


# Directories Flower's publish filter drops whatever else the rules say (flwr.supercore.constant
# APP_PUBLISH_EXCLUDE_PATTERNS: ".flwr/**", ".venv/**", "**/__pycache__/**"). Not walking them gives
# the same file set as flwr.cli.utils.collect_files, minus ~45,000 virtualenv files (7 s → 0.1 s).
_PRUNE_AT_ROOT = {".flwr": ".flwr/**", ".venv": ".venv/**"}
_PRUNE_ANYWHERE = {"__pycache__": "**/__pycache__/**"}


def _collect_files(root: Path) -> dict[str, Path]:
    """`flwr.cli.utils.collect_files(root)` without descending into directories Flower always drops."""
    from flwr.cli.utils import collect_files
    from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS

    patterns = {*_PRUNE_AT_ROOT.values(), *_PRUNE_ANYWHERE.values()}
    if not patterns <= set(APP_PUBLISH_EXCLUDE_PATTERNS):  # a Flower that no longer drops them: walk everything
        return collect_files(root)
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        at_root = Path(dirpath) == root
        dirnames[:] = [d for d in dirnames if d not in _PRUNE_ANYWHERE and not (at_root and d in _PRUNE_AT_ROOT)]
        for filename in filenames:  # the rest as collect_files: no symlinks, nothing resolving outside root
            path = Path(dirpath) / filename
            if path.is_symlink() or not path.resolve().is_relative_to(root):
                continue
            files[path.relative_to(root).as_posix()] = path
    return files


def build_app_bundle(app_dir: str | Path) -> bytes:
    """The FAB bytes exactly as `flwr run <app_dir>` builds them (`build_fab_from_disk`)."""
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import AppPathDepthError

    app = _app_dir(app_dir)
    try:
        with warnings.catch_warnings():  # flwr 1.41 uses pathspec's deprecated 'gitwildmatch' name
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pathspec(\.|$)")
            return build_fab_from_files(_collect_files(app))[0]
    except AppPathDepthError as exc:
        raise UserError(f"cannot bundle {app}: a file lies too deep ({exc})") from exc
    except ValueError as exc:  # Flower's own messages: invalid config, unresolved fab-include, size
        first = str(exc).strip().splitlines()
        raise UserError(f"cannot bundle {app}: {' '.join(line.strip() for line in first)}") from exc


def fab_hash(fab: bytes) -> str:
    """Flower's FAB hash (`Fab.hash_str`, `Run.fab_hash`): hex SHA-256 of the bundle's bytes."""
    return hashlib.sha256(fab).hexdigest()


def app_bundle_hash(app_dir: str | Path) -> str:
    return fab_hash(build_app_bundle(app_dir))


def stage_app_bundle(app_dir: str | Path, dest: Path) -> str:
    """Copy into `dest` exactly the files the app's bundle holds; returns the bundle's hash, which
    `flwr run dest` reproduces (checked here: the staged copy must build the same bytes).

    `flwr run DIR` walks all of DIR before its filters drop files, the virtualenv's ~50,000 too:
    15 s on a quiet 2-core machine, 30-45 s on a busy one, on every coordinator start. The staged
    copy holds ~120 files."""
    app = _app_dir(app_dir)
    fab = build_app_bundle(app)
    with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
        names = [n for n in bundle.namelist() if not n.startswith(".info/")]  # Flower's own manifest
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(app / name, target)  # pyproject.toml as on disk: Flower re-serializes it again
    staged = app_bundle_hash(dest)
    if staged != fab_hash(fab):
        raise RuntimeError(f"the staged copy of {app} bundles to {staged[:16]}…, not {fab_hash(fab)[:16]}…")
    return staged
