"""Fixed-grid ODE solvers for ``dx/dt = v(x, t)`` from noise (t = 0) to data (t = 1).

A field is called as ``field(x, t)`` with ``t`` a 0-dim tensor on ``x``'s device; no host syncs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from speech.flow.timesteps import time_grid

__all__ = ["Field", "euler", "midpoint", "SOLVERS", "NFE_PER_STEP", "integrate"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler(field: Field, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Explicit Euler over ``grid``: one field evaluation per step, first order."""
    for i in range(grid.numel() - 1):
        t0, t1 = grid[i], grid[i + 1]
        x = x + (t1 - t0) * field(x, t0)
    return x


def midpoint(field: Field, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Explicit midpoint (RK2) over ``grid``: two evaluations per step, second order."""
    for i in range(grid.numel() - 1):
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        x_half = x + 0.5 * dt * field(x, t0)
        x = x + dt * field(x_half, t0 + 0.5 * dt)
    return x


SOLVERS: dict[str, Callable[[Field, torch.Tensor, torch.Tensor], torch.Tensor]] = {"euler": euler, "midpoint": midpoint}
NFE_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2}


def integrate(
    field: Field, x0: torch.Tensor, n_steps: int = 10, solver: str = "euler", schedule: str = "cosine"
) -> torch.Tensor:
    """Integrate ``field`` from ``x0`` at t = 0 to t = 1 with ``n_steps`` of ``solver`` on ``schedule``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; choose from {sorted(SOLVERS)}")
    grid = time_grid(n_steps, schedule, device=x0.device)
    return SOLVERS[solver](field, x0, grid)
