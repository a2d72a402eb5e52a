"""Flower Arrays cross pickle protocol 5 out of band: Ray hands them over without copying them.

Flower's Simulation Engine moves every Message between the coordinator's process and the member's
Ray actor by pickling it into Ray's shared object store. `Array.data` (bytes) pickles in band: the
sender copies the model or the masked input into the pickle stream and then into the store, and the
receiver copies it out of the store into a new bytes object. With the bytes behind a
`pickle.PickleBuffer`, Ray writes them into the store once and the receiver gets a read-only view of
the store's memory (as it does for numpy arrays): two copies of the vector fewer on each side of
every message. The view keeps the store's object alive until the Message is dropped.

A received Array's `data` is then a read-only memoryview, not bytes: read it (`np.frombuffer`,
`fedloom.records`, Flower's `.numpy()`), do not hand it on to `Array(...)` or Flower's protobuf serde,
which take bytes only; fedloom builds every record it sends from numpy arrays. The view pins the whole
Ray object it came in (in a simulation a reply and the member's Context travel as one object), so a
coordinator that holds many replies at once holds them in Ray's store rather than on its heap.

Deployment does not pickle Messages (Flower deflates them into its own wire format), so this changes
nothing there; below protocol 5, or without a buffer callback, pickling stays in band as before.
"""

from __future__ import annotations

import pickle
from typing import Any

from flwr.app import Array


def _array_from_parts(dtype: str, shape: tuple[int, ...], stype: str, data: Any) -> Array:
    """An Array around `data` as given: bytes when pickled in band, a read-only view when out of band.

    Array's constructor accepts only bytes (it would copy a view), so the fields are set directly."""
    array = Array.__new__(Array)
    raw = data if isinstance(data, bytes) else memoryview(data).cast("B")
    array.__dict__.update(dtype=dtype, shape=shape, stype=stype, data=raw)
    return array


def _reduce_ex(array: Array, protocol: int) -> tuple[Any, ...]:
    """Protocol 5: the bytes as a PickleBuffer (out of band where the pickler takes buffers, as Ray's
    does; in band as bytes otherwise). Below 5 (copy.deepcopy, old picklers): bytes, in band."""
    data = array.data
    if protocol < 5:
        return _array_from_parts, (array.dtype, array.shape, array.stype, bytes(data))
    return _array_from_parts, (array.dtype, array.shape, array.stype, pickle.PickleBuffer(data))


def pickle_arrays_out_of_band() -> None:
    """Install the protocol-5 reduction on Flower's Array class (idempotent; every fedloom process
    that builds or reads fedloom's records calls it when `fedloom.records` is imported)."""
    Array.__reduce_ex__ = _reduce_ex  # type: ignore[assignment, method-assign]
