"""Centred stochastic rounding into the ring, with the member's weight carried inside the vector.

x is clipped to [-clip, clip], scaled so clip maps to L = 2^(bits-1) - 1, and rounded down after
adding uniform dither u in [0, 1): E[q] = x * scale exactly, so the secure mean is unbiased and
each coordinate's error is below one step. The result is clamped to [-L, L] so float rounding can
never step outside the range the ring check was made for. q is multiplied by the integer weight w and
w itself is appended, so the unmasked sum yields both sum(w x) and sum(w). The dither comes from
AES-CTR under a fresh secret key, not numpy.random.

Public weights (chosen by the coordinator) are applied differently: the member multiplies x by its
fraction alpha = w / sum(weights of C1) BEFORE rounding (scale N*L/clip). Multiplying integers by
coordinator-chosen weights would let it pick weights (g+1 for a target, g for everyone else) whose
sum, taken mod g, is the target's quantized input; after rounding real-valued alpha*x, the sum is
the weighted mean plus every member's independent rounding noise, with no integer structure to use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .crypto import Randomness
from .errors import ProtocolError, Rule
from .masking import MASK_KEY_BYTES, _encryptor
from .params import ProtocolParams

CHUNK = 1 << 15  # elements per step of the quantizer


@dataclass(frozen=True)
class QuantizedInput:
    vector: np.ndarray  # ring dtype, length d + 1, last element = weight
    clipped: int  # coordinates that hit the clip range (reported so users can tune `clip`)


def check_input(x: np.ndarray, weight: int, params: ProtocolParams) -> None:
    if x.ndim != 1 or x.shape[0] != params.vector_length:
        raise ProtocolError(Rule.INPUT_LENGTH, f"input has shape {x.shape}, plan says ({params.vector_length},)")
    if not np.isfinite(x).all():
        raise ProtocolError(Rule.INPUT_NONFINITE, "input contains NaN or Inf")
    if not 1 <= weight <= params.max_weight:
        raise ProtocolError(Rule.INPUT_WEIGHT, f"weight {weight} outside 1..{params.max_weight}")


def quantize(
    x: np.ndarray, weight: int, params: ProtocolParams, randomness: Randomness, fraction: float | None = None
) -> QuantizedInput:
    """The ring vector [w * q(x), w] for one member's input; with a public weight `fraction`
    (w / sum of C1's public weights), [q(fraction * x) at the public scale, w] instead."""
    if fraction is not None and not 0 < fraction <= 1:
        raise ProtocolError(Rule.WEIGHTS, f"public weight fraction {fraction} outside (0, 1]")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ProtocolError(Rule.INPUT_LENGTH, f"input must be floating point, got {x.dtype}")
    check_input(x, weight, params)
    d = params.vector_length
    out = np.empty(d + 1, dtype=params.dtype)
    # q fits the signed ring type (the ring check bounds n * W * L), so floats convert straight
    # into it: the same two's complement bits as int64 then a wrap into the ring
    signed = out.view(np.int32 if params.ring_bits == 32 else np.int64)
    dither_key = randomness(MASK_KEY_BYTES)
    dither = _encryptor(dither_key, 0)  # one pass over the same stream uniform_floats reads
    step = min(CHUNK, d)
    xc = np.empty(step, dtype=np.float64)  # work buffers, reused: each chunk stays in cache
    u = np.empty(step, dtype=np.float64)
    over = np.empty(step, dtype=np.bool_)
    raw = bytearray(4 * step + 16)
    ks = np.frombuffer(raw, dtype=np.uint32, count=step)
    zeros = memoryview(bytes(4 * step))
    clip = params.clip
    if fraction is None:
        scale, bound, multiplier = params.scale, float(params.level), weight
    else:
        scale = params.public_scale * fraction
        bound, multiplier = float(math.ceil(params.level * params.max_members * fraction)), 1
    clipped = 0
    for s in range(0, d, step):
        m = min(d, s + step) - s
        xv, uv, ov = xc[:m], u[:m], over[:m]
        np.copyto(xv, x[s : s + m], casting="unsafe")
        clipped += int(np.count_nonzero(np.greater(np.abs(xv, out=uv), clip, out=ov)))
        np.clip(xv, -clip, clip, out=xv)
        xv *= scale
        dither.update_into(zeros[: 4 * m], raw)
        xv += np.multiply(ks[:m], 1.0 / 4294967296.0, out=uv)  # dither u in [0, 1)
        np.floor(xv, out=xv)
        np.clip(xv, -bound, bound, out=xv)  # float rounding of x*scale + u must not step past the bound
        q = signed[s : s + m]
        np.copyto(q, xv, casting="unsafe")
        if multiplier != 1:
            q *= multiplier
    out[d] = weight
    return QuantizedInput(out, clipped)


def weighted_mean(
    total: np.ndarray, params: ProtocolParams, public_total: int | None = None
) -> tuple[np.ndarray | None, int]:
    """(sum of w*x / sum of w as float32, sum of w) from an unmasked ring sum; (None, sum of w) when
    the weights sum to zero or less. The same float64 arithmetic as `dequantize` then a division,
    bit for bit, but chunk by chunk: no d-long float64 vectors (8 bytes per coordinate each)."""
    if total.shape != (params.masked_length,) or total.dtype != params.dtype:
        raise ProtocolError(Rule.INPUT_LENGTH, "aggregate has the wrong shape or dtype")
    weight = int(total[-1])
    if weight <= 0:
        return None, weight
    signed = total[:-1].view(np.int32 if params.ring_bits == 32 else np.int64)
    out = np.empty(signed.shape[0], dtype=np.float32)
    step = min(CHUNK, max(1, signed.shape[0]))
    buf = np.empty(step, dtype=np.float64)
    for s in range(0, signed.shape[0], step):
        part = buf[: min(step, signed.shape[0] - s)]
        np.copyto(part, signed[s : s + part.shape[0]], casting="unsafe")
        if public_total is None:
            part /= params.scale
        else:
            part *= public_total / params.public_scale
        part /= weight
        out[s : s + part.shape[0]] = part
    return out, weight


def dequantize(total: np.ndarray, params: ProtocolParams, public_total: int | None = None) -> tuple[np.ndarray, int]:
    """(sum of w*x as float64, sum of w) from an unmasked ring sum. `public_total`: the sum of C1's
    public weights, when inputs were pre-multiplied by their fractions of it."""
    if total.shape != (params.masked_length,) or total.dtype != params.dtype:
        raise ProtocolError(Rule.INPUT_LENGTH, "aggregate has the wrong shape or dtype")
    signed = total[:-1].view(np.int32 if params.ring_bits == 32 else np.int64)
    if public_total is None:
        return signed.astype(np.float64) / params.scale, int(total[-1])
    return signed.astype(np.float64) * (public_total / params.public_scale), int(total[-1])
