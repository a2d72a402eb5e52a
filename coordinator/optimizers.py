"""Outer optimizers: they see only the (secure) mean update, never an individual one.

Convention: the mean update is  u = sum_i w_i (local_i - global) / sum_i w_i, and the
pseudo-gradient is g = -u. FedAvg applies u; the others treat g like a gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fedloom.plan import StrategySpec


class OuterOptimizer(ABC):
    name: str

    @abstractmethod
    def step(self, model: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """New global model from the current one and the round's mean update."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Optimizer state for checkpoints (arrays only, so safetensors can hold it)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state to load")


class FedAvg(OuterOptimizer):
    """McMahan et al. 2017: the new model is the weighted mean of the local models."""

    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(self, model: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        # model + lr * update with one new vector, not three (the product, the sum, the astype copy)
        out = np.multiply(mean_update, self.lr, dtype=model.dtype)
        out += model
        return out


class _Stateful(OuterOptimizer):
    def __init__(self) -> None:
        self.state: dict[str, np.ndarray] = {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v) for k, v in state.items()}

    def _buf(self, key: str, like: np.ndarray) -> np.ndarray:
        if key not in self.state:
            self.state[key] = np.zeros_like(like, dtype=np.float32)
        return self.state[key]


class FedAvgM(_Stateful):
    """Hsu et al. 2019: server momentum on the pseudo-gradient."""

    name = "fedavgm"

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr, self.momentum = lr, momentum

    def step(self, model: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        m = self._buf("momentum", model)
        m *= self.momentum
        m -= mean_update  # + g
        return (model - self.lr * m).astype(model.dtype)


class FedAdam(_Stateful):
    """Reddi et al. 2021 (Adaptive Federated Optimization), with Adam's bias correction."""

    name = "fedadam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__()
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau

    def step(self, model: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        m, v = self._buf("m", model), self._buf("v", model)
        t = self.state.setdefault("t", np.zeros(1, dtype=np.float32))
        t += 1
        m *= self.beta1
        m += (1 - self.beta1) * mean_update
        v *= self.beta2
        v += (1 - self.beta2) * np.square(mean_update)
        lr = self.lr * np.sqrt(1 - self.beta2 ** t[0]) / (1 - self.beta1 ** t[0])
        return (model + lr * m / (np.sqrt(v) + self.tau)).astype(model.dtype)


class DiLoCo(_Stateful):
    """Douillard et al. 2023: Nesterov momentum on the outer pseudo-gradient (lr 0.7, mu 0.9)."""

    name = "diloco"

    def __init__(self, lr: float = 0.7, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr, self.momentum = lr, momentum

    def step(self, model: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        m = self._buf("momentum", model)
        m *= self.momentum
        m -= mean_update
        nesterov = -mean_update + self.momentum * m
        return (model - self.lr * nesterov).astype(model.dtype)


def make_optimizer(spec: StrategySpec) -> OuterOptimizer:
    if spec.name == "fedavg":
        return FedAvg(spec.server_lr)
    if spec.name == "fedavgm":
        return FedAvgM(spec.server_lr, spec.server_momentum)
    if spec.name == "fedadam":
        return FedAdam(spec.server_lr, spec.beta1, spec.beta2, spec.tau)
    if spec.name == "diloco":
        return DiLoCo(spec.server_lr, spec.server_momentum)
    raise ValueError(f"unknown strategy {spec.name!r}")
