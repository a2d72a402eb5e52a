"""The top floor: what a user starts (the `fedloom` command, benchmarks, the Flower ServerApp component).

Nothing below imports it (tests/test_layering.py).
"""

import fedloom  # noqa: F401  (switches Flower/Ray telemetry off before they load)
