"""Where in flow time we train and where we integrate.

Convention of the whole package: ``t = 0`` is noise, ``t = 1`` is data. Training samplers draw one
``t`` per item; inference schedules give the ``n + 1`` grid points from 0 to 1 of an ODE solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["TimeSampler", "UniformTime", "LogitNormalTime", "CosineTime", "SCHEDULES", "time_grid"]


class TimeSampler:
    """Draws training times ``[n]`` in [0, 1)."""

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.transform(torch.rand(n, device=device, generator=generator))

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        """Map uniform draws ``u`` to this sampler's distribution."""
        raise NotImplementedError


class UniformTime(TimeSampler):
    """``t ~ U(0, 1)`` (Lipman et al. 2023)."""

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        return u


class LogitNormalTime(TimeSampler):
    """``t = sigmoid(n)``, ``n ~ N(mean, std)``: more weight mid-path (Esser et al. 2024, SD3 §3.1)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.sigmoid(self.mean + self.std * torch.randn(n, device=device, generator=generator))

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        # Inverse-CDF form, used when callers bring their own uniforms.
        n = math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(1e-6, 1 - 1e-6) - 1.0)
        return torch.sigmoid(self.mean + self.std * n)


class CosineTime(TimeSampler):
    """``t = 1 - cos(u·π/2)``: the density the cosine inference schedule visits, dense near noise."""

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.cos(u * (math.pi / 2))


def _linear(s: torch.Tensor) -> torch.Tensor:
    return s


def _cosine(s: torch.Tensor) -> torch.Tensor:
    # CosyVoice's schedule: small steps near the noise end, where the path bends most.
    return 1.0 - torch.cos(s * (math.pi / 2))


SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"linear": _linear, "cosine": _cosine}


def time_grid(n_steps: int, schedule: str = "cosine", device: torch.device | str = "cpu") -> torch.Tensor:
    """``[n_steps + 1]`` increasing times from exactly 0 to exactly 1 under ``schedule``."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown t-schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
    grid = SCHEDULES[schedule](torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64))
    grid[0], grid[-1] = 0.0, 1.0
    return grid.to(device=device, dtype=torch.float32)
