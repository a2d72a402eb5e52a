"""Test-wide setup: no telemetry from Flower or Ray, quiet Ray, small thread counts."""

import os

import fedloom  # noqa: F401  (sets FLWR_TELEMETRY_ENABLED=0 and RAY_USAGE_STATS_ENABLED=0 first)

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
