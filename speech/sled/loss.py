"""Energy distance between head samples and the data, per latent frame (SLED; Gneiting & Raftery 2007).

With two independent head samples ``s1, s2`` of the distribution ``P`` for a target frame ``y``::

    ED(s1, s2; y) = ‖s1 − y‖ + ‖s2 − y‖ − ‖s1 − s2‖

is an unbiased estimate of ``2 E‖X − y‖ − E‖X − X'‖`` (X, X' ~ P), twice the energy score, which
is strictly proper: its expectation over ``y ~ Q`` is minimised only by ``P = Q``. So unlike MSE
(minimised by the mean of Q) it trains a sampler of the whole distribution, multi-modal or not.
"""

from __future__ import annotations

import torch

__all__ = ["energy_distance", "frame_energy_distance"]


def frame_energy_distance(s1: torch.Tensor, s2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-frame ``‖s1 − y‖ + ‖s2 − y‖ − ‖s1 − s2‖`` over the last axis: ``[..., D]`` -> ``[...]``, fp32."""
    s1, s2, y = s1.float(), s2.float(), y.float()
    norm = torch.linalg.vector_norm
    return norm(s1 - y, dim=-1) + norm(s2 - y, dim=-1) - norm(s1 - s2, dim=-1)


def energy_distance(s1: torch.Tensor, s2: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of :func:`frame_energy_distance` over frames ``[..., D]`` where ``mask [...]`` is True.

    Padded frames contribute nothing (neither value nor gradient); no valid frame gives 0.
    """
    keep = mask.unsqueeze(-1)
    # Zero padded frames *before* the norms: a where after them would still send NaN gradients from
    # non-finite padding (0 · NaN); here padding gets exact zero gradients.
    s1, s2, y = (torch.where(keep, v.float(), torch.zeros((), device=v.device)) for v in (s1, s2, y))
    ed = frame_energy_distance(s1, s2, y)
    return (ed * mask).sum() / mask.sum().clamp_min(1)
