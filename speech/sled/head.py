"""The generative head: (hidden state, fresh noise) -> one latent patch, a sampler trained by energy distance.

As in SLED (after MAR's diffusion head): the noise is lifted to the model width, then residual MLP
blocks whose LayerNorm is modulated by the hidden state (AdaLN: shift, scale, gate from ``h``) mix
the two; a final modulated norm and a linear layer give the patch. Each call with new noise is an
independent sample of the head's distribution for that hidden state.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GenerativeHead"]


class _AdaLNBlock(nn.Module):
    """``x + gate(h) · MLP(LN(x) · (1 + scale(h)) + shift(h))``."""

    def __init__(self, width: int, cond: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mult * width), nn.SiLU(), nn.Linear(mult * width, width))
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(cond, 3 * width))
        nn.init.zeros_(self.mod[1].weight)
        nn.init.zeros_(self.mod[1].bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(h).chunk(3, dim=-1)
        return x + (1 + gate) * self.mlp(self.norm(x) * (1 + scale) + shift)


class GenerativeHead(nn.Module):
    """``h [..., in_dim]``, ``noise [..., noise_dim]`` -> a sample ``[..., out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 3, noise_dim: int = 64):
        super().__init__()
        self.in_dim, self.out_dim, self.noise_dim = in_dim, out_dim, noise_dim
        self.cond = nn.Linear(in_dim, width)
        self.noise_in = nn.Linear(noise_dim, width)
        self.blocks = nn.ModuleList(_AdaLNBlock(width, width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mod_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim)

    def forward(self, h: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        c = self.cond(h)
        x = self.noise_in(noise.to(c.dtype)) + c
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.mod_out(c).chunk(2, dim=-1)
        return self.out(self.norm_out(x) * (1 + scale) + shift)
