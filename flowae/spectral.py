"""The renderer's data space: compressed complex STFT frames, exactly invertible to the waveform.

Waveform ``[B, S]`` (``S`` a multiple of ``frame_hop``) ↔ frames ``[B, 2F, S / frame_hop]``
(``F = n_fft / 2 + 1``; real parts, then imaginary parts). Each bin is compressed as
``c = scale · |X|^power · e^{i∠X}`` (power 0.5: the magnitude compression of SGMSE+ / RFWave, which
evens out the dynamic range between loud low bins and quiet high bins, so a flow trained with an
MSE on ``c`` with unit Gaussian noise spends its capacity across the spectrum). The map is a
pointwise bijection and the STFT is inverted by the exact block-centred inverse of
:func:`dac_vae.frame_rate.block_istft` (frame ``t`` centred on samples
``[t * frame_hop, (t + 1) * frame_hop)``, Hann window), so ``synthesis(analysis(x)) == x`` to float
precision for any length that is a multiple of ``frame_hop``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dac_vae.frame_rate import block_istft

__all__ = ["CompressedSTFT"]


class CompressedSTFT(nn.Module):
    """Compressed complex STFT analysis / synthesis with block-centred frames (no parameters)."""

    def __init__(self, frame_hop: int, n_fft: int | None = None, power: float = 0.5, scale: float = 1.0):
        super().__init__()
        n_fft = int(n_fft or 4 * frame_hop)
        if n_fft < frame_hop or (n_fft - frame_hop) % 2:
            raise ValueError(f"n_fft {n_fft} must be >= frame_hop {frame_hop} with n_fft - frame_hop even")
        if not 0 < power <= 1 or scale <= 0:
            raise ValueError(f"power must be in (0, 1] and scale > 0, got {power}, {scale}")
        self.frame_hop, self.n_fft = int(frame_hop), n_fft
        self.n_freq = n_fft // 2 + 1
        self.channels = 2 * self.n_freq
        self.power, self.scale = float(power), float(scale)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def analysis(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` → ``[B, 2F, S / frame_hop]`` (fp32); zero-padded at both ends like the synthesis."""
        pad = (self.n_fft - self.frame_hop) // 2
        spec = torch.stft(
            F.pad(wav.float(), (pad, pad)), n_fft=self.n_fft, hop_length=self.frame_hop, window=self.window,
            center=False, return_complex=True,
        )  # [B, F, N]
        mag = spec.abs()
        # |X|^p e^{i phi} = X |X|^(p - 1); the clamp keeps silent bins (|X| = 0) at 0, not NaN.
        spec = spec * (mag.clamp_min(1e-12).pow(self.power - 1.0) * self.scale)
        return torch.cat([spec.real, spec.imag], dim=1)

    def synthesis(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 2F, N]`` → ``[B, N * frame_hop]`` (fp32); ``frame_mask`` ``[B, N]`` (valid frames)."""
        real, imag = frames.float().chunk(2, dim=1)
        c = torch.complex(real, imag) / self.scale
        mag = c.abs()
        spec = c * mag.clamp_min(1e-12).pow(1.0 / self.power - 1.0)  # |c|^(1/p) e^{i phi}
        return block_istft(spec.transpose(1, 2), self.window, self.frame_hop, frame_mask)
