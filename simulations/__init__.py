"""Scenario files and the runner that plays them on Flower's Simulation Engine."""

import fedloom  # noqa: F401  (switches Flower/Ray telemetry off before they load)
