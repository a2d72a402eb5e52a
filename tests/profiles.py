"""Hypothesis profiles: what CI runs, and a thorough run for nightly or manual use.

- `ci` (the default when CI=true): derandomized (the same examples every run, so a red CI is
  reproducible and never a lucky draw), no example database, a per-example deadline.
- `thorough` (HYPOTHESIS_PROFILE=thorough): ten times the examples of every property test, random,
  no deadline. Nothing in CI depends on it; run it before a release or after touching protocol/.
- `dev` (otherwise): CI's counts and deadline, random draws and the local example database, so a
  quick local loop still explores and replays what failed before.

Every property test states its CI example count through `examples(n)`: an explicit
`max_examples` would override any profile, so the count scales here instead.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import settings

THOROUGH_FACTOR = 10
DEADLINE = timedelta(seconds=5)  # per example: a runaway example fails instead of stalling CI (typical: < 0.2 s)
SLOW_EXAMPLE = timedelta(seconds=30)  # for properties that play whole protocol rounds (1-2 s an example, loaded)


def chosen() -> str:
    """The profile this run uses: HYPOTHESIS_PROFILE wins, then CI=true means `ci`."""
    name = os.environ.get("HYPOTHESIS_PROFILE")
    if name:
        return name
    return "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"


def register() -> str:
    """Register the three profiles and load the chosen one; returns its name."""
    settings.register_profile("ci", deadline=DEADLINE, derandomize=True, database=None, print_blob=True)
    settings.register_profile("dev", deadline=DEADLINE)
    settings.register_profile("thorough", max_examples=100 * THOROUGH_FACTOR, deadline=None)
    name = chosen()
    settings.load_profile(name)  # an unknown name fails here, at collection, naming the profile
    return name


def examples(n: int) -> int:
    """A property test's example count: `n` in CI and locally, THOROUGH_FACTOR times more in `thorough`."""
    return n * THOROUGH_FACTOR if chosen() == "thorough" else n
