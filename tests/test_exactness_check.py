"""The simulation's exactness check (harness._exactness) in place, with the same result as its formula."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from protocol.params import ProtocolParams
from simulations.harness import _exactness


def test_the_in_place_check_equals_the_formula(tmp_path):
    rng = np.random.default_rng(3)
    params = ProtocolParams(vector_length=1000, clip=0.5)
    updates = {m: rng.normal(0, 0.4, 1000).astype(np.float32) for m in (1, 2, 4)}
    examples = {1: 10, 2: 30, 4: 7}
    for m, u in updates.items():
        np.savez(tmp_path / f"r3-m{m}.npz", update=u, examples=examples[m])
    ws = SimpleNamespace(verify=tmp_path)
    mean = rng.normal(0, 0.1, 1000)
    for weights in (None, {1: 1, 2: 1, 4: 2}):
        w = {m: (weights[m] if weights else params.fedavg_weight(examples[m])) for m in updates}
        total = sum(np.clip(updates[m].astype(np.float64), -0.5, 0.5) * w[m] for m in updates)
        expected = float(np.max(np.abs(total / sum(w.values()) - mean)))
        assert _exactness(ws, 3, [1, 2, 4], mean, params, weights) == expected
    assert _exactness(ws, 3, [1, 5], mean, params) is None  # a survivor without its true update: not verified
