"""Data files that ship inside installed packages, found without importing the package.

`importlib.util.find_spec` locates a package without running its `__init__`: scikit-learn's import
alone costs ~2.6 s (scipy, pandas), paid by every Ray actor, warm member process and simulation
that only needs the digits CSV inside it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, parts: tuple[str, ...], task: str, install: str) -> Path:
    """Path of `parts` inside the installed `package`; a one-line error naming `install` if missing."""
    spec = importlib.util.find_spec(package)  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"task '{task}' reads its data from the '{package}' package, which is not installed; "
            f"install it with: pip install {install}",
            name=package,
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location, *parts)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"task '{task}': the installed '{package}' has no {'/'.join(parts)}; install {install}")
