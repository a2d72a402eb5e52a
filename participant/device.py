"""Pick the torch device a participant trains on (`--device auto|cpu|cuda|cuda:N`)."""

from __future__ import annotations

import torch

from fedloom.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' takes CUDA when this machine has it, else the CPU; explicit choices are checked."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise UserError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def configure_cpu_threads(device: torch.device, threads: int) -> None:
    """On the CPU, cap torch's threads: simulated participants share a few cores, and torch's
    default (one thread per core each) made small-batch training 20-50x slower here."""
    if device.type == "cpu" and threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
