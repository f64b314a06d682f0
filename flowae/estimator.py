"""Data (x) prediction for a velocity estimator: the renderer's frames are wider than its network.

A velocity ``v = x1 - x0`` carries the noise ``x0`` in full: every one of the ``2F`` channels of a
frame (1922 for n_fft 1920) must pass through the estimator's hidden width (a few hundred), which it
cannot, so a v-predicting network stalls at the noise's variance. Predicting the clean frames ``x̂1``
(low-dimensional: they are what the latent describes) and converting,

    v = (x̂1 - x_t) / (1 - t),

keeps the flow-matching velocity loss and sampler unchanged (Li & He 2025, "Back to Basics: Let
Denoising Generative Models Denoise": x-prediction with a v-loss is what makes high-dimensional
patch diffusion work). ``1 - t`` is clamped at ``min_gap`` near the data end. One Euler step from
``t = 0`` returns ``x̂1`` itself.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DataPrediction"]


class DataPrediction(nn.Module):
    """Wraps an estimator that outputs clean data ``x̂1`` so that it returns the velocity."""

    def __init__(self, estimator: nn.Module, min_gap: float = 0.05):
        super().__init__()
        if not 0 < min_gap <= 1:
            raise ValueError(f"min_gap must be in (0, 1], got {min_gap}")
        self.estimator = estimator
        self.min_gap = float(min_gap)
        for name in ("in_channels", "out_channels", "mu_channels", "spk_channels", "cond_channels"):
            setattr(self, name, getattr(estimator, name, None))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor | None, t: torch.Tensor,
                **kwargs) -> torch.Tensor:
        """Velocity ``[B, D, T]`` at ``x`` and flow time ``t`` ``[B]`` (zero on padded frames)."""
        x1 = self.estimator(x, mask, mu, t, **kwargs).float()
        gap = (1.0 - t.float()).clamp_min(self.min_gap).view(-1, 1, 1)
        return (x1 - x.float()) / gap * mask[:, None, :].to(x1.dtype)
