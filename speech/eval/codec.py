"""Reconstruction metrics of a test waveform against its reference (codec / vocoder evaluation).

Every function takes two 1-D float waveforms at the same sample rate; the longer one is trimmed to
the shorter (codecs pad to a multiple of their hop). Lower is better for the two distances, higher
for SI-SDR, PESQ and STOI.

- multi-scale mel distance: mean over scales of the L1 distance of log10 mel magnitudes (the DAC
  codec's 7 scales: windows 32..2048, 5..320 mels, hop = window / 4, floor 1e-5);
- multi-resolution STFT distance: mean over resolutions of spectral convergence + L1 of log
  magnitudes (the Parallel WaveGAN resolutions);
- SI-SDR (Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019, eq. 3-4), zero-mean;
- PESQ-WB (ITU-T P.862.2) through ``pesq`` at 16 kHz; STOI through ``pystoi`` at 10 kHz.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
import torchaudio
from pesq import PesqError, pesq
from pystoi import stoi as _stoi

from speech.audio import MelSpectrogram, resample

__all__ = [
    "CodecMetrics",
    "MelDistance",
    "STFTDistance",
    "si_sdr",
    "pesq_wb",
    "stoi",
    "trim_to_common",
]

log = logging.getLogger(__name__)

MEL_SCALES: tuple[tuple[int, int], ...] = ((32, 5), (64, 10), (128, 20), (256, 40), (512, 80), (1024, 160), (2048, 320))
STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
PESQ_RATE = 16000
STOI_RATE = 10000


def trim_to_common(ref: torch.Tensor, hyp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut both 1-D signals to the shorter length."""
    n = min(ref.shape[-1], hyp.shape[-1])
    return ref[..., :n], hyp[..., :n]


def si_sdr(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB: ``10 log10(|a s|^2 / |a s - e|^2)`` with ``a = <e, s> / |s|^2``."""
    ref, est = trim_to_common(ref.double(), est.double())
    ref = ref - ref.mean()
    est = est - est.mean()
    alpha = (est @ ref) / (ref @ ref + eps)
    target = alpha * ref
    noise = est - target
    return float(10.0 * torch.log10((target @ target + eps) / (noise @ noise + eps)))


class MelDistance(torch.nn.Module):
    """Multi-scale log-mel L1 distance (see module docstring); 0 for identical signals."""

    def __init__(self, sample_rate: int, scales: Sequence[tuple[int, int]] = MEL_SCALES, floor: float = 1e-5):
        super().__init__()
        self.mels = torch.nn.ModuleList(
            MelSpectrogram(sample_rate, n_fft=win, hop_length=win // 4, n_mels=n_mels, floor=floor)
            for win, n_mels in scales
        )

    def forward(self, ref: torch.Tensor, hyp: torch.Tensor) -> torch.Tensor:
        ref, hyp = trim_to_common(ref, hyp)
        # MelSpectrogram returns natural logs; divide by ln 10 so the figure is in log10 units.
        dists = [(mel(ref) - mel(hyp)).abs().mean() / math.log(10.0) for mel in self.mels]
        return torch.stack(dists).mean()


class STFTDistance(torch.nn.Module):
    """Multi-resolution STFT distance: spectral convergence + log-magnitude L1, averaged."""

    def __init__(self, resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS, floor: float = 1e-7):
        super().__init__()
        self.floor = floor
        self.specs = torch.nn.ModuleList(
            torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop, win_length=win, power=1.0)
            for n_fft, hop, win in resolutions
        )

    def forward(self, ref: torch.Tensor, hyp: torch.Tensor) -> torch.Tensor:
        ref, hyp = trim_to_common(ref.float(), hyp.float())
        dists = []
        for spec in self.specs:
            r, h = spec(ref), spec(hyp)
            convergence = torch.linalg.norm(r - h) / torch.linalg.norm(r).clamp_min(self.floor)
            log_l1 = (torch.log(r.clamp_min(self.floor)) - torch.log(h.clamp_min(self.floor))).abs().mean()
            dists.append(convergence + log_l1)
        return torch.stack(dists).mean()


def pesq_wb(ref: torch.Tensor, hyp: torch.Tensor, sample_rate: int) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0..4.64) at 16 kHz; NaN when PESQ finds no speech."""
    ref, hyp = trim_to_common(
        resample(ref.float(), sample_rate, PESQ_RATE), resample(hyp.float(), sample_rate, PESQ_RATE)
    )
    if not (ref.abs().amax() > 0 and hyp.abs().amax() > 0):
        log.warning("PESQ undefined for an all-zero signal: NaN")
        return float("nan")
    try:
        return float(pesq(PESQ_RATE, ref.numpy().astype(np.float32), hyp.numpy().astype(np.float32), "wb"))
    except PesqError as exc:
        log.warning("PESQ undefined for this pair (%s): NaN", type(exc).__name__)
        return float("nan")


def stoi(ref: torch.Tensor, hyp: torch.Tensor, sample_rate: int, extended: bool = False) -> float:
    """STOI (0..1) at its native 10 kHz; ``extended`` gives ESTOI."""
    ref, hyp = trim_to_common(
        resample(ref.float(), sample_rate, STOI_RATE), resample(hyp.float(), sample_rate, STOI_RATE)
    )
    return float(_stoi(ref.double().numpy(), hyp.double().numpy(), STOI_RATE, extended=extended))


class CodecMetrics:
    """All intrusive metrics of one (reference, test) pair: ``metrics(ref, hyp) -> {name: value}``."""

    names = ("mel_distance", "stft_distance", "si_sdr", "pesq_wb", "stoi")

    def __init__(self, sample_rate: int = 24000):
        self.sample_rate = sample_rate
        self.mel_distance = MelDistance(sample_rate)
        self.stft_distance = STFTDistance()

    @torch.inference_mode()
    def __call__(self, ref: torch.Tensor, hyp: torch.Tensor) -> dict[str, float]:
        """``ref`` and ``hyp`` are 1-D waveforms at ``self.sample_rate``."""
        if ref.dim() != 1 or hyp.dim() != 1:
            raise ValueError(f"expected 1-D waveforms, got {tuple(ref.shape)} and {tuple(hyp.shape)}")
        return {
            "mel_distance": float(self.mel_distance(ref, hyp)),
            "stft_distance": float(self.stft_distance(ref, hyp)),
            "si_sdr": si_sdr(ref, hyp),
            "pesq_wb": pesq_wb(ref, hyp, self.sample_rate),
            "stoi": stoi(ref, hyp, self.sample_rate),
        }
