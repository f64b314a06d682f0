"""Which noise each training item flows from: independent draws or immiscible assignment.

Immiscible diffusion (Li et al. 2024, arXiv 2406.12303) pairs the batch's noise draws with its data
items by minimum total distance, so paths cross less and training converges faster. Its cheaper
k-nearest variant (Li et al. 2025, "Improved Immiscible Diffusion") draws ``k`` noises per item and
keeps the closest. Distances count **valid frames only**: padding never decides a pairing.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "masked_sq_distances",
    "min_cost_permutation",
    "NoiseAssignment",
    "IndependentNoise",
    "LinearSumAssignment",
    "KNearestNoise",
]


def masked_sq_distances(x1: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` squared distances between data ``x1[b]`` and noise ``noise[k]`` over ``x1[b]``'s valid frames.

    ``x1`` ``[B, D, T]``, ``noise`` ``[K, D, T]``, ``mask`` ``[B, T]``. Expanded as
    ``|x|² - 2<x, n> + |n|²`` (each restricted to the item's frames) to stay ``O(B·K)`` in memory.
    """
    x1, noise = x1.float(), noise.float()
    m = mask.float()
    xm = x1 * m[:, None, :]
    data_sq = (xm * xm).sum(dim=(1, 2))  # [B]
    cross = torch.einsum("bdt,kdt->bk", xm, noise)
    noise_sq = m @ (noise * noise).sum(dim=1).T  # [B, K]: item b's frames of noise k
    return (data_sq[:, None] - 2.0 * cross + noise_sq).clamp_min(0.0)


def min_cost_permutation(x1: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``perm`` ``[B]`` minimising ``sum_b dist(x1[b], noise[perm[b]])`` (Hungarian algorithm, scipy).

    The cost matrix goes to the host: one sync per step, the price of the exact assignment (use
    :class:`KNearestNoise` where that matters).
    """
    cost = masked_sq_distances(x1, noise, mask).detach().cpu().numpy().astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.as_tensor(perm, dtype=torch.long, device=x1.device)


class NoiseAssignment:
    """Draws the source noise ``x0`` ``[B, D, T]`` for data ``x1`` with valid ``mask`` ``[B, T]``."""

    def __call__(self, x1: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(shape, device=like.device, dtype=torch.float32, generator=generator)


class IndependentNoise(NoiseAssignment):
    """Plain conditional flow matching: an independent Gaussian draw per item."""

    def __call__(self, x1: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._randn(tuple(x1.shape), x1, generator)


class LinearSumAssignment(NoiseAssignment):
    """Batch-level immiscible assignment: draw ``B`` noises, pair them to items by minimum total distance."""

    def __call__(self, x1: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = self._randn(tuple(x1.shape), x1, generator)
        return noise[min_cost_permutation(x1, noise, mask)]


class KNearestNoise(NoiseAssignment):
    """k-nearest immiscible variant: ``k`` noise draws per item, keep the closest (no host sync)."""

    def __init__(self, k: int = 4):
        if k < 1:
            raise ValueError(f"KNearestNoise needs k >= 1, got {k}")
        self.k = k

    def __call__(self, x1: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, D, T = x1.shape
        noise = self._randn((B, self.k, D, T), x1, generator)
        m = mask[:, None, None, :].float()
        dist = (((x1.float()[:, None] - noise) ** 2) * m).sum(dim=(2, 3))  # [B, k]
        best = dist.argmin(dim=1)
        return noise[torch.arange(B, device=x1.device), best]
