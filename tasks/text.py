"""Byte-level text helpers: UTF-8 character boundaries, fixed-length windows, character counts.

Text is modelled as its UTF-8 bytes (a vocabulary of 256), so any script works without a
tokenizer. A *window* is ``context + 1`` consecutive bytes: the model reads the first ``context``
and predicts the last ``context`` (each byte from the ones before it).
"""

from __future__ import annotations

import numpy as np

VOCAB_SIZE = 256
PAD = 0  # NUL: never occurs in the texts; pads short windows and is ignored as a target


def is_lead_byte(b: np.ndarray) -> np.ndarray:
    """True where a byte starts a UTF-8 character (anything but a 0b10xxxxxx continuation byte)."""
    return (np.asarray(b) & 0xC0) != 0x80


def char_boundary(data: bytes, position: int) -> int:
    """The first character boundary at or after byte ``position`` (``len(data)`` at the end)."""
    position = max(0, min(position, len(data)))
    while position < len(data) and (data[position] & 0xC0) == 0x80:
        position += 1
    return position


def split_bytes(data: bytes, test_fraction: float) -> tuple[bytes, bytes]:
    """(head, tail) where the tail is the last ``test_fraction`` of the bytes, cut at a character."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cut = char_boundary(data, round(len(data) * (1 - test_fraction)))
    return data[:cut], data[cut:]


def windows(data: bytes, context: int, stride: int, *, pad_tail: bool) -> np.ndarray:
    """Windows of ``context + 1`` bytes starting every ``stride`` bytes, as a uint8 (N, context + 1) array.

    The end of ``data`` is always covered: with ``pad_tail`` the last window is filled up with
    :data:`PAD` (so with ``stride == context`` every byte after the first is a target exactly once);
    without it, one extra window is aligned to the end (its targets may repeat earlier ones).
    """
    if len(data) < 2:
        raise ValueError(f"need at least 2 bytes to make a window, got {len(data)}")
    return token_windows(np.frombuffer(data, dtype=np.uint8), context, stride, pad_tail=pad_tail, pad=PAD)


def token_windows(arr: np.ndarray, context: int, stride: int, *, pad_tail: bool, pad: int) -> np.ndarray:
    """:func:`windows` over any 1-D integer sequence (bytes, token ids, per-token counts); short
    windows are filled with ``pad``. The result keeps ``arr``'s dtype."""
    if context < 1 or stride < 1:
        raise ValueError(f"context and stride must be >= 1, got {context} and {stride}")
    arr = np.asarray(arr)
    if arr.ndim != 1 or len(arr) < 2:
        raise ValueError(f"need a 1-D sequence of at least 2 items to make a window, got shape {arr.shape}")
    size = context + 1
    if pad_tail:
        starts = range(0, len(arr) - 1, stride)  # every window has at least one real target
        out = np.full((len(starts), size), pad, dtype=arr.dtype)
        for row, start in enumerate(starts):
            chunk = arr[start : start + size]
            out[row, : chunk.size] = chunk
        return out
    if len(arr) < size:
        raise ValueError(f"need at least {size} items for an unpadded window, got {len(arr)}")
    starts_list = list(range(0, len(arr) - size + 1, stride))
    if starts_list[-1] != len(arr) - size:
        starts_list.append(len(arr) - size)
    return np.stack([arr[s : s + size] for s in starts_list])
