"""Energy distance: equals a direct per-frame reference, ignores padding, and its expectation is
minimised by the data distribution (a head trained with it learns both modes of a 2-D mixture; MSE
collapses to the mean)."""

from __future__ import annotations

import math

import torch

from speech.sled import GenerativeHead, energy_distance


def test_equals_direct_per_frame_reference_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    s1, s2, y = (torch.randn(3, 7, 5, generator=g) for _ in range(3))
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]
    ref, n = 0.0, 0
    for b in range(3):
        for t in range(7):
            if mask[b, t]:
                a = math.dist(s1[b, t].tolist(), y[b, t].tolist())
                c = math.dist(s2[b, t].tolist(), y[b, t].tolist())
                e = math.dist(s1[b, t].tolist(), s2[b, t].tolist())
                ref, n = ref + a + c - e, n + 1
    assert torch.allclose(energy_distance(s1, s2, y, mask), torch.tensor(ref / n), atol=1e-5)

    # Padded frames: any values (even inf/nan there) change neither the loss nor any gradient.
    p1 = s1.clone().requires_grad_()
    p2 = s1.clone()
    p2[~mask] = float("nan")
    p2.requires_grad_()
    l1, l2 = energy_distance(p1, s2, y, mask), energy_distance(p2, s2, y, mask)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2)
    assert torch.equal(p2.grad[~mask], torch.zeros_like(p2.grad[~mask]))
    assert torch.allclose(p1.grad[mask], p2.grad[mask])
    assert energy_distance(s1, s2, y, torch.zeros_like(mask)) == 0


def _mixture(n: int, g: torch.Generator) -> torch.Tensor:
    """Two equally likely modes at (±2, 1), std 0.1."""
    sign = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0
    return torch.cat([sign * 2.0, torch.ones(n, 1)], 1) + 0.1 * torch.randn(n, 2, generator=g)


def test_expected_energy_distance_is_minimised_by_the_data_distribution():
    g = torch.Generator().manual_seed(1)
    y = _mixture(20000, g)
    ones = torch.ones(20000, dtype=torch.bool)

    def expected(sampler):
        return float(energy_distance(sampler(), sampler(), y, ones))

    data = expected(lambda: _mixture(20000, g))
    mean = expected(lambda: y.mean(0).expand(20000, 2) + 0.1 * torch.randn(20000, 2, generator=g))
    one_mode = expected(lambda: torch.tensor([2.0, 1.0]) + 0.1 * torch.randn(20000, 2, generator=g))
    wide = expected(lambda: _mixture(20000, g) * 1.5)
    assert data < mean - 0.5 and data < one_mode - 0.5 and data < wide - 0.1, (data, mean, one_mode, wide)


def test_head_learns_both_modes_where_mse_learns_the_mean():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    h = torch.zeros(256, 4)  # one fixed condition: the head must learn the whole distribution from noise
    heads = {name: GenerativeHead(4, 2, width=32, depth=2, noise_dim=4) for name in ("ed", "mse")}
    for name, head in heads.items():
        opt = torch.optim.Adam(head.parameters(), lr=5e-3)
        for _ in range(150):
            y = _mixture(256, g)
            s1, s2 = head(h, torch.randn(256, 4)), head(h, torch.randn(256, 4))
            if name == "ed":
                loss = energy_distance(s1, s2, y, torch.ones(256, dtype=torch.bool))
            else:
                loss = (s1 - y).square().sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        ed = heads["ed"](torch.zeros(2000, 4), torch.randn(2000, 4))
        mse = heads["mse"](torch.zeros(2000, 4), torch.randn(2000, 4))
    near = lambda s, x: ((s - torch.tensor([x, 1.0])).norm(dim=-1) < 0.6).float().mean()  # noqa: E731
    assert near(ed, 2.0) > 0.3 and near(ed, -2.0) > 0.3, (near(ed, 2.0), near(ed, -2.0))
    assert near(mse, 2.0) < 0.05 and near(mse, -2.0) < 0.05
    assert mse[:, 0].abs().mean() < 0.5  # the mean of the two modes
