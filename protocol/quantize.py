"""Centred stochastic rounding into the ring, with the member's weight carried inside the vector.

x is clipped to [-clip, clip], scaled so clip maps to L = 2^(bits-1) - 1, and rounded down after
adding uniform dither u in [0, 1): E[q] = x * scale exactly, so the secure mean is unbiased and
each coordinate's error is below one step. q is multiplied by the integer weight w and w itself is
appended, so the unmasked sum yields both sum(w x) and sum(w). The dither comes from AES-CTR under a
fresh secret key, not numpy.random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crypto import Randomness
from .errors import ProtocolError, Rule
from .masking import MASK_KEY_BYTES, uniform_floats
from .params import ProtocolParams

CHUNK = 1 << 20


@dataclass(frozen=True)
class QuantizedInput:
    vector: np.ndarray  # ring dtype, length d + 1, last element = weight
    clipped: int  # coordinates that hit the clip range (reported so users can tune `clip`)


def check_input(x: np.ndarray, weight: int, params: ProtocolParams) -> None:
    if x.ndim != 1 or x.shape[0] != params.vector_length:
        raise ProtocolError(
            Rule.INPUT_LENGTH, f"input has shape {x.shape}, plan says ({params.vector_length},)"
        )
    if not np.isfinite(x).all():
        raise ProtocolError(Rule.INPUT_NONFINITE, "input contains NaN or Inf")
    if not 0 <= weight <= params.max_weight:
        raise ProtocolError(Rule.INPUT_WEIGHT, f"weight {weight} outside 0..{params.max_weight}")


def quantize(x: np.ndarray, weight: int, params: ProtocolParams, randomness: Randomness) -> QuantizedInput:
    """The ring vector [w * q(x), w] for one member's input."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ProtocolError(Rule.INPUT_LENGTH, f"input must be floating point, got {x.dtype}")
    check_input(x, weight, params)
    d = params.vector_length
    out = np.empty(d + 1, dtype=params.dtype)
    dither_key = randomness(MASK_KEY_BYTES)
    clipped = 0
    for s in range(0, d, CHUNK):
        e = min(d, s + CHUNK)
        xc = x[s:e].astype(np.float64)
        clipped += int(np.count_nonzero(np.abs(xc) > params.clip))
        np.clip(xc, -params.clip, params.clip, out=xc)
        xc *= params.scale
        xc += uniform_floats(dither_key, e - s, offset=s)
        q = np.floor(xc).astype(np.int64)
        if weight != 1:
            q *= weight
        out[s:e] = q.astype(params.dtype)  # two's complement wrap into the ring
    out[d] = weight
    return QuantizedInput(out, clipped)


def dequantize(total: np.ndarray, params: ProtocolParams) -> tuple[np.ndarray, int]:
    """(sum of w*x as float64, sum of w) from an unmasked ring sum."""
    if total.shape != (params.masked_length,) or total.dtype != params.dtype:
        raise ProtocolError(Rule.INPUT_LENGTH, "aggregate has the wrong shape or dtype")
    signed = total[:-1].view(np.int32 if params.ring_bits == 32 else np.int64)
    return signed.astype(np.float64) / params.scale, int(total[-1])
