"""fedloom: consortium training on Flower with secure aggregation."""

import os

# Sovereign by default: neither Flower nor Ray may phone home from a member's machine.
# Both read these when first imported, so fedloom sets them before anything imports flwr or ray.
# (A user who wants telemetry can set them explicitly; setdefault keeps their choice.)
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Private by default: a simulation's Ray (which runs code for whoever connects) listens on loopback only.
# Ray too reads this at import; it also holds for `flwr run`, whose engine loads the ClientApp before importing ray.
from fedloom.localray import keep_ray_on_loopback

keep_ray_on_loopback()

__version__ = "0.1.0"
