"""Padding masks. Convention everywhere: ``[B, T]`` bool, True = valid frame."""
from __future__ import annotations

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, T]`` mask with True on the first ``lengths[b]`` frames.

    Pass ``max_len`` (e.g. the padded tensor's size) to avoid a host sync on ``lengths.max()``.
    """
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` (broadcast to ``x``) is True."""
    mask = mask.to(x.dtype).expand_as(x)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)
