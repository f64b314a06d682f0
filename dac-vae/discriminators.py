"""Discriminators: multi-period (HiFi-GAN) and multi-band complex STFT (DAC).

Each sub-discriminator returns its list of feature maps; the last one is the logit map. The
:class:`Discriminator` returns one such list per sub-discriminator, so the losses see
``list[list[Tensor]]`` whatever the mix.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["PeriodDiscriminator", "BandSTFTDiscriminator", "Discriminator"]

LEAKY_SLOPE = 0.1


def _wn_conv2d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """Folds the waveform into ``[B, 1, S / p, p]`` and applies (5, 1) convs along time.

    Sees periodic structure at period ``p`` (HiFi-GAN, Kong et al. 2020, section 2.2).
    """

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        self.period = period
        layers = []
        in_ch = 1
        for i, out_ch in enumerate(channels):
            stride = 1 if i == len(channels) - 1 else 3
            layers.append(_wn_conv2d(in_ch, out_ch, (5, 1), (stride, 1), padding=(2, 0)))
            in_ch = out_ch
        self.convs = nn.ModuleList(layers)
        self.post = _wn_conv2d(in_ch, 1, (3, 1), padding=(1, 0))

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """``[B, S]`` -> feature maps, logits last."""
        x = wav.unsqueeze(1)
        pad = (-x.shape[-1]) % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect")
        x = x.reshape(x.shape[0], 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            features.append(x)
        features.append(self.post(x))
        return features


class BandSTFTDiscriminator(nn.Module):
    """Complex STFT (real, imaginary as 2 channels) split into frequency bands, each band through
    its own 2-D conv stack, re-joined along frequency for a final conv (DAC, Kumar et al. 2023).

    The STFT runs in fp32 even under autocast.
    """

    def __init__(
        self,
        fft_size: int,
        channels: int = 32,
        bands: Sequence[Sequence[float]] = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)),
    ):
        super().__init__()
        self.fft_size = fft_size
        self.hop = fft_size // 4
        n_bins = fft_size // 2 + 1
        self.bands = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in bands]
        self.register_buffer("window", torch.hann_window(fft_size), persistent=False)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    _wn_conv2d(2, channels, (3, 9), (1, 1), padding=(1, 4)),
                    _wn_conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    _wn_conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    _wn_conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    _wn_conv2d(channels, channels, (3, 3), (1, 1), padding=(1, 1)),
                ]
            )

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = _wn_conv2d(channels, 1, (3, 3), (1, 1), padding=(1, 1))

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """``[B, S]`` -> feature maps ``[B, C, T, F_band]`` of every band and layer, logits last."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = torch.stft(
                wav.float(), self.fft_size, self.hop, window=self.window, center=True, return_complex=True
            )
        x = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2, T, F]
        features = []
        outputs = []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            h = x[..., lo:hi]
            for conv in convs:
                h = F.leaky_relu(conv(h), LEAKY_SLOPE)
                features.append(h)
            outputs.append(h)
        logits = self.post(torch.cat(outputs, dim=-1))
        features.append(logits)
        return features


class Discriminator(nn.Module):
    """All sub-discriminators: one per period and one per STFT size."""

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        period_channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        fft_sizes: Sequence[int] = (2048, 1024, 512),
        band_channels: int = 32,
        bands: Sequence[Sequence[float]] = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)),
    ):
        super().__init__()
        subs: list[nn.Module] = [PeriodDiscriminator(p, period_channels) for p in periods]
        subs += [BandSTFTDiscriminator(n, band_channels, bands) for n in fft_sizes]
        if not subs:
            raise ValueError("Discriminator needs at least one period or one fft size")
        self.discriminators = nn.ModuleList(subs)

    def forward(self, wav: torch.Tensor) -> list[list[torch.Tensor]]:
        """``[B, S]`` -> per sub-discriminator, its feature maps with the logits last."""
        return [d(wav) for d in self.discriminators]
