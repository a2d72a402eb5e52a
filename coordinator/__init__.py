"""The coordinator: a Flower ServerApp that drives rounds and combines updates securely."""

import fedloom  # noqa: F401  (switches Flower/Ray telemetry off before they load)
