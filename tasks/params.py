"""Flat parameter vectors: the single representation of a model that crosses the wire.

Secure aggregation and federated averaging operate on one float32 vector per participant, so the
mapping model <-> vector must be a fixed, exact bijection. The order is ``state_dict()`` order and
covers every parameter and every floating-point buffer (integer buffers such as BatchNorm's
``num_batches_tracked`` are not averageable and are left out).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch


def _named_entries(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors that make up the vector, by name, in ``state_dict`` order (they alias the model)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            yield name, tensor


def _entries(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    return (tensor for _, tensor in _named_entries(model))


def num_parameters(model: torch.nn.Module) -> int:
    """Length of :func:`model_to_vector` for this model (parameters plus float buffers)."""
    return sum(t.numel() for t in _entries(model))


def model_to_vector(model: torch.nn.Module) -> np.ndarray:
    """Copy the model's parameters and float buffers into one float32 1-D array."""
    parts = [t.detach().to("cpu", torch.float32).reshape(-1).numpy() for t in _entries(model)]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def model_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The vector's entries by ``state_dict`` name, as float32 arrays that share the model's memory
    on the CPU (a copy per tensor elsewhere): writing a model out costs no d-long vector. Their
    concatenation in this order is :func:`model_to_vector`."""
    return {name: t.detach().to("cpu", torch.float32).contiguous().numpy() for name, t in _named_entries(model)}


def _float32_tensor(vec: np.ndarray) -> torch.Tensor:
    """`vec` as a float32 CPU tensor sharing its memory (it is only read from): no d-long copy. A
    read-only array (a view into a received message) is wrapped the same way; torch's warning that
    writes through the tensor would be undefined does not apply to a tensor that is only copied from."""
    src = np.ascontiguousarray(vec, dtype=np.float32)
    if src.flags.writeable:
        return torch.from_numpy(src)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(src)


def vector_to_model(model: torch.nn.Module, vec: np.ndarray) -> None:
    """Write ``vec`` into the model in place; the exact inverse of :func:`model_to_vector`.

    Raises ValueError if ``vec`` is not 1-D or its length does not match the model, so a vector
    for a different architecture can never be half-loaded.
    """
    vec = np.asarray(vec)
    if vec.ndim != 1:
        raise ValueError(f"parameter vector must be 1-D, got shape {vec.shape}")
    expected = num_parameters(model)
    if vec.shape[0] != expected:
        raise ValueError(f"parameter vector has {vec.shape[0]} entries, but the model needs {expected}")
    flat = _float32_tensor(vec)
    offset = 0
    with torch.no_grad():
        for tensor in _entries(model):
            n = tensor.numel()
            chunk = flat[offset : offset + n].view(tensor.shape)
            tensor.copy_(chunk.to(device=tensor.device, dtype=tensor.dtype))
            offset += n
