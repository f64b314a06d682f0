"""Patching: ``k`` consecutive latent frames per autoregressive step.

Latents ``[B, D, T]`` <-> steps ``[B, ceil(T / k), k·D]``; step ``s`` holds frames ``s·k .. s·k + k − 1``
flattened frame-major (``[f0 d0..dD-1, f1 d0..]``). A last, partial patch is zero-filled; its
missing frames are masked by :func:`frame_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speech.utils.mask import lengths_to_mask

__all__ = ["frame_mask", "patchify", "step_lengths", "unpatchify"]


def step_lengths(latent_len: torch.Tensor, k: int) -> torch.Tensor:
    """AR steps that cover ``latent_len`` frames: ``ceil(latent_len / k)``."""
    return torch.div(latent_len + k - 1, k, rounding_mode="floor")


def patchify(latent: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, D, T]`` -> ``[B, ceil(T / k), k·D]`` (zero-filled up to a multiple of ``k``)."""
    b, d, t = latent.shape
    latent = F.pad(latent, (0, (-t) % k))
    return latent.transpose(1, 2).reshape(b, -1, k * d)


def unpatchify(steps: torch.Tensor, k: int, n_frames: int | None = None) -> torch.Tensor:
    """``[B, S, k·D]`` -> ``[B, D, S·k]`` (or its first ``n_frames`` frames): the inverse of :func:`patchify`."""
    b, s, kd = steps.shape
    out = steps.reshape(b, s * k, kd // k).transpose(1, 2)
    return out if n_frames is None else out[..., :n_frames]


def frame_mask(latent_len: torch.Tensor, n_steps: int, k: int) -> torch.Tensor:
    """``[B, n_steps, k]``: True where frame ``j`` of step ``s`` (frame ``s·k + j``) is a valid frame."""
    return lengths_to_mask(latent_len, n_steps * k).view(-1, n_steps, k)
