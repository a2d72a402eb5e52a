"""The participant: a Flower ClientApp that trains on the member's own data and device."""

import fedloom  # noqa: F401  (switches Flower/Ray telemetry off before they load)
