"""Building blocks of the DAC-style encoder and decoder.

Shapes: activations are ``[B, C, T]``. A ``mask`` is ``[B, 1, T]`` bool, True on valid frames (a
product with it keeps the activation's dtype, fp32 or bf16), or ``None`` when every item fills the
tensor. Every block zeroes the padded
frames of its output, so a padded item in a batch sees exactly the zeros that a convolution's own
zero padding would give it alone: batched encode/decode equals one-by-one encode/decode.
Snake keeps zeros at zero (snake(0) = 0), so only convolutions (which add a bias) need the mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = [
    "Snake1d",
    "WNConv1d",
    "WNConvTranspose1d",
    "ResidualUnit",
    "EncoderBlock",
    "DecoderBlock",
    "apply_mask",
    "lengths_to_mask",
]


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B]`` valid lengths -> ``[B, 1, max_len]`` bool mask (True = valid) with no host sync."""
    steps = torch.arange(max_len, device=lengths.device)
    return (steps.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1)


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded frames of ``x`` (identity when ``mask`` is None)."""
    return x if mask is None else x * mask


class _SnakeFunction(torch.autograd.Function):
    """``y = x + r sin^2(alpha x)``, ``r = 1 / (alpha + eps)``, saving only ``x`` and ``alpha``.

    Plain autograd would keep ``alpha x``, ``sin(alpha x)`` and its square for every activation of
    the network (the bulk of a DAC model's activation memory); the backward recomputes instead:
    ``dy/dx = 1 + r alpha sin(2 alpha x)`` and ``dy/dalpha = r x sin(2 alpha x) - r^2 sin^2(alpha x)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        return x + (alpha + SNAKE_EPS).reciprocal() * torch.sin(alpha * x).pow(2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, alpha = ctx.saved_tensors
        r = (alpha + SNAKE_EPS).reciprocal()
        ax = alpha * x
        sin2 = torch.sin(2.0 * ax)
        grad_x = grad * (1.0 + r * alpha * sin2) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            local = r * x * sin2 - r.pow(2) * torch.sin(ax).pow(2)
            grad_alpha = (grad * local).sum(dim=(0, 2), keepdim=True)
        return grad_x, grad_alpha


SNAKE_EPS = 1e-9  # keeps 1 / alpha finite if an alpha is driven to zero


class Snake1d(nn.Module):
    """Snake activation ``x + sin^2(alpha x) / alpha`` with a learned per-channel ``alpha``.

    Periodic inductive bias for audio (Ziyin et al. 2020, "Neural networks fail to learn periodic
    functions and how to fix it"; used throughout DAC). ``snake(0) = 0`` keeps padding at zero.
    The backward recomputes the sines (:class:`_SnakeFunction`) to save activation memory.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SnakeFunction.apply(x, self.alpha.to(x.dtype))


def WNConv1d(*args, **kwargs) -> nn.Module:  # noqa: N802 (reads as a layer class in model code)
    """A weight-normalised ``nn.Conv1d`` (Salimans & Kingma 2016), as DAC uses everywhere.

    PyTorch's default initialisation is kept: it is what DAC effectively trains with (its
    truncated-normal re-init writes to the recomputed ``weight``, not to the normed parameters).
    """
    return weight_norm(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.Module:  # noqa: N802
    """A weight-normalised ``nn.ConvTranspose1d``."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


class ResidualUnit(nn.Module):
    """snake -> dilated conv (k=7) -> snake -> 1x1 conv, added to the input; length preserved."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 7):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.act1 = Snake1d(channels)
        self.conv1 = WNConv1d(channels, channels, kernel_size, dilation=dilation, padding=pad)
        self.act2 = Snake1d(channels)
        self.conv2 = WNConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = apply_mask(self.conv1(self.act1(x)), mask)
        y = apply_mask(self.conv2(self.act2(y)), mask)
        return x + y


def down_padding(stride: int) -> int:
    """Padding of a ``kernel = 2 * stride`` strided conv so that ``T_out = T_in / stride`` exactly
    for ``T_in`` a multiple of the stride: ``floor((T + 2 ceil(s/2) - 2s) / s) + 1 = T / s`` for odd
    and even ``s`` alike."""
    return math.ceil(stride / 2)


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``in_channels``, then a strided conv down."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations: tuple[int, ...] = (1, 3, 9)):
        super().__init__()
        self.stride = stride
        self.res = nn.ModuleList(ResidualUnit(in_channels, d) for d in dilations)
        self.act = Snake1d(in_channels)
        self.down = WNConv1d(in_channels, out_channels, 2 * stride, stride=stride, padding=down_padding(stride))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, out_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for unit in self.res:
            x = unit(x, mask)
        return apply_mask(self.down(self.act(x)), out_mask)


class DecoderBlock(nn.Module):
    """A transposed conv up by ``stride``, then three residual units (dilations 1, 3, 9)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations: tuple[int, ...] = (1, 3, 9)):
        super().__init__()
        self.stride = stride
        self.act = Snake1d(in_channels)
        # T_out = (T - 1) s - 2p + k + output_padding with k = 2s, p = ceil(s/2), output_padding = s mod 2
        # gives exactly T * s for odd and even strides (DAC's odd strides lose one sample otherwise).
        self.up = WNConvTranspose1d(
            in_channels,
            out_channels,
            2 * stride,
            stride=stride,
            padding=down_padding(stride),
            output_padding=stride % 2,
        )
        self.res = nn.ModuleList(ResidualUnit(out_channels, d) for d in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` is the mask at the *output* (upsampled) resolution."""
        x = apply_mask(self.up(self.act(x)), mask)
        for unit in self.res:
            x = unit(x, mask)
        return x
