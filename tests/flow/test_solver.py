"""ODE solvers and t-schedules against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from speech.flow.solver import NFE_PER_STEP, euler, integrate, midpoint
from speech.flow.timesteps import time_grid


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_time_grid(schedule):
    g = time_grid(7, schedule)
    assert g.shape == (8,) and g[0] == 0 and g[-1] == 1
    assert (g[1:] > g[:-1]).all()
    if schedule == "cosine":
        s = torch.linspace(0, 1, 8, dtype=torch.float64)
        assert torch.allclose(g.double(), 1 - torch.cos(s * math.pi / 2), atol=1e-6)
    with pytest.raises(ValueError):
        time_grid(0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("sigma", [0.0, 1e-4])
def test_euler_follows_the_ot_path_exactly(schedule, sigma):
    """The conditional OT field toward x1 is constant along its straight path, so Euler is exact:
    every grid point lands on x_t = (1 - (1-σ)t)·x0 + t·x1, the last one on x1 + σ·x0."""
    torch.manual_seed(0)
    x0, x1 = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    s = 1 - sigma
    visited = []

    def field(x, t):
        visited.append((t.item(), x.clone()))
        return (x1 - s * x) / (1 - s * t.double())

    grid = time_grid(6, schedule).double()
    out = euler(field, x0.clone(), grid)
    for t, x in visited:
        assert torch.allclose(x, (1 - s * t) * x0 + t * x1, atol=1e-6)
    assert torch.allclose(out, x1 + sigma * x0, atol=1e-6)


def test_euler_and_midpoint_on_time_linear_field():
    """v = a + b·t: exact answer x0 + a + b/2; midpoint is exact, Euler is off by b·Σ dt²/2."""
    a, b = torch.tensor([0.3, -1.2]), torch.tensor([2.0, 0.7])
    x0 = torch.tensor([1.0, 2.0])
    field = lambda x, t: a + b * t  # noqa: E731
    grid = time_grid(5, "cosine")
    exact = x0 + a + b / 2
    assert torch.allclose(midpoint(field, x0, grid), exact, atol=1e-6)
    dt = grid[1:] - grid[:-1]
    assert torch.allclose(euler(field, x0, grid), exact - b * (dt**2).sum() / 2, atol=1e-6)
    assert not torch.allclose(euler(field, x0, grid), exact, atol=1e-3)


def test_constant_field_and_nfe_count():
    calls = {"n": 0}

    def field(x, t):
        calls["n"] += 1
        return torch.full_like(x, 2.0)

    for solver in ("euler", "midpoint"):
        calls["n"] = 0
        out = integrate(field, torch.zeros(3), n_steps=4, solver=solver)
        assert torch.allclose(out, torch.full((3,), 2.0))
        assert calls["n"] == 4 * NFE_PER_STEP[solver]
    with pytest.raises(ValueError):
        integrate(field, torch.zeros(3), solver="rk4")


def test_midpoint_is_second_order_on_a_nonlinear_field():
    """dx/dt = -x: error shrinks ~4x per step doubling for midpoint, ~2x for Euler."""
    field = lambda x, t: -x  # noqa: E731
    x0 = torch.ones(1, dtype=torch.float64)
    exact = math.exp(-1)
    err = {
        s: [abs(integrate(field, x0, n, s, "linear").item() - exact) for n in (8, 16)] for s in ("euler", "midpoint")
    }
    assert err["euler"][0] / err["euler"][1] == pytest.approx(2, rel=0.1)
    assert err["midpoint"][0] / err["midpoint"][1] == pytest.approx(4, rel=0.1)
