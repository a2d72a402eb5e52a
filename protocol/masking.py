"""Mask expansion: AES-128-CTR keystreams added straight into an accumulator, mod 2^ring_bits.

Why this shape: the keystream is generated in 256 KiB chunks into one preallocated buffer
(`update_into`, no allocation) and added in place while the accumulator chunk is still in cache;
numpy's unsigned add wraps mod 2^32 / 2^64 for free. Every mask is the full 128-bit-key AES-CTR
stream, so each ring element is uniform (unlike Flower SecAgg+'s 28-bit seeds and `randint`).
Ranges start at chunk boundaries so threads can each take a slice (the cipher releases the GIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MASK_KEY_BYTES = 16
CHUNK_BYTES = 1 << 18
_ZEROS = bytes(CHUNK_BYTES)


def _encryptor(key: bytes, byte_offset: int):
    if byte_offset % 16:
        raise ValueError("keystream offsets must be block aligned")
    counter = (byte_offset // 16).to_bytes(16, "big")
    return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()


def _apply_range(acc: np.ndarray, plus: Sequence[bytes], minus: Sequence[bytes], start: int, stop: int) -> None:
    item = acc.itemsize
    chunk = CHUNK_BYTES // item
    buf = bytearray(CHUNK_BYTES + 16)
    ks = np.frombuffer(buf, dtype=acc.dtype, count=chunk)
    zeros = memoryview(_ZEROS)
    streams = [(_encryptor(k, start * item), np.add) for k in plus]
    streams += [(_encryptor(k, start * item), np.subtract) for k in minus]
    for off in range(start, stop, chunk):
        m = min(chunk, stop - off)
        view = acc[off : off + m]
        part = ks[:m]
        for enc, op in streams:
            enc.update_into(zeros[: m * item], buf)
            op(view, part, out=view)


def apply_masks(acc: np.ndarray, plus: Sequence[bytes] = (), minus: Sequence[bytes] = (), workers: int = 1) -> None:
    """acc += sum(PRG(k) for k in plus) - sum(PRG(k) for k in minus), in place, mod 2^bits."""
    if acc.dtype not in (np.uint32, np.uint64) or not acc.flags.c_contiguous:
        raise TypeError("accumulator must be a contiguous uint32 or uint64 array")
    if not plus and not minus:
        return
    n = acc.shape[0]
    chunk = CHUNK_BYTES // acc.itemsize
    workers = max(1, min(workers, -(-n // chunk)))
    if workers == 1:
        _apply_range(acc, plus, minus, 0, n)
        return
    per = -(-n // (workers * chunk)) * chunk
    bounds = [(s, min(n, s + per)) for s in range(0, n, per)]
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        for f in [pool.submit(_apply_range, acc, plus, minus, s, e) for s, e in bounds]:
            f.result()


def expand(key: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """The whole mask vector of one key (tests and the reference path; not the hot path)."""
    acc = np.zeros(length, dtype=dtype)
    apply_masks(acc, plus=[key])
    return acc


def uniform_floats(key: bytes, length: int, offset: int = 0) -> np.ndarray:
    """Uniform [0, 1) doubles from the AES-CTR stream of `key` (dither for stochastic rounding)."""
    enc = _encryptor(key, offset * 4)
    raw = np.frombuffer(enc.update(bytes(4 * length)), dtype=np.uint32)
    return raw * (1.0 / 4294967296.0)
