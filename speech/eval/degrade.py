"""Controlled degradations of reference audio, to calibrate the metrics (what does "-10 dB" cost?).

Each degradation is ``fn(wav [N], sample_rate, generator) -> wav [N]``; :data:`DEGRADATIONS` names
the ones the CLI's ``--degrade`` mode knows (``clean``, ``lowpass8k`` (8 kHz sampling, i.e. a
4 kHz band), ``noise20db``, ``noise10db``, ``noise0db``, ``mulaw8k``, and ``whitenoise``: no speech
at all, white noise at the signal's power, the floor of every metric) and :func:`parse_degradation`
also reads ``noiseNdb`` / ``lowpassNk`` for any N.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import torch
import torchaudio

from speech.audio import resample

__all__ = ["band_limit", "add_white_noise", "white_noise_like", "mu_law", "parse_degradation", "DEGRADATIONS"]

Degradation = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def band_limit(wav: torch.Tensor, sample_rate: int, low_rate: int = 8000) -> torch.Tensor:
    """Down-sample to ``low_rate`` and back: keeps only the band below ``low_rate / 2``."""
    out = resample(resample(wav, sample_rate, low_rate), low_rate, sample_rate)
    return _fit(out, wav.shape[-1])


def add_white_noise(wav: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise at ``snr_db`` relative to the signal's mean power."""
    noise = torch.randn(wav.shape, generator=generator, dtype=torch.float32).to(wav)
    signal_power = wav.double().pow(2).mean()
    noise_power = noise.double().pow(2).mean()
    # SNR = 10 log10(P_s / P_n)  =>  scale the noise to P_n = P_s / 10^(SNR/10).
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return wav + (scale * noise.double()).to(wav.dtype)


def mu_law(wav: torch.Tensor, sample_rate: int, low_rate: int = 8000) -> torch.Tensor:
    """Telephone channel: 8 kHz sampling and 8-bit mu-law quantisation (G.711-like)."""
    low = resample(wav, sample_rate, low_rate).clamp(-1.0, 1.0)
    q = torchaudio.functional.mu_law_encoding(low, 256)
    out = resample(torchaudio.functional.mu_law_decoding(q, 256), low_rate, sample_rate)
    return _fit(out, wav.shape[-1])


def white_noise_like(wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """White Gaussian noise with the power and length of ``wav`` and no trace of it."""
    noise = torch.randn(wav.shape, generator=generator, dtype=torch.float32).to(wav)
    return noise * wav.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt()


def _fit(wav: torch.Tensor, n: int) -> torch.Tensor:
    if wav.shape[-1] >= n:
        return wav[..., :n]
    return torch.nn.functional.pad(wav, (0, n - wav.shape[-1]))


def _clean(wav: torch.Tensor, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    return wav.clone()


def _noise(wav: torch.Tensor, sample_rate: int, generator: torch.Generator, snr_db: float) -> torch.Tensor:
    return add_white_noise(wav, snr_db, generator)


def _lowpass(wav: torch.Tensor, sample_rate: int, generator: torch.Generator, low_rate: int) -> torch.Tensor:
    return band_limit(wav, sample_rate, low_rate)


def _white(wav: torch.Tensor, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    return white_noise_like(wav, generator)


def _mulaw(wav: torch.Tensor, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    return mu_law(wav, sample_rate)


def parse_degradation(name: str) -> Degradation:
    """``clean``, ``noise<N>db``, ``lowpass<N>k`` or ``mulaw8k`` -> the degradation function."""
    if name in DEGRADATIONS:
        return DEGRADATIONS[name]
    if m := re.fullmatch(r"noise(-?\d+(?:\.\d+)?)db", name):
        return functools.partial(_noise, snr_db=float(m.group(1)))
    if m := re.fullmatch(r"lowpass(\d+)k", name):
        return functools.partial(_lowpass, low_rate=int(m.group(1)) * 1000)
    raise ValueError(f"unknown degradation {name!r}: use {', '.join(DEGRADATIONS)}, noise<N>db or lowpass<N>k")


DEGRADATIONS: dict[str, Degradation] = {
    "clean": _clean,
    "lowpass8k": functools.partial(_lowpass, low_rate=8000),
    "noise20db": functools.partial(_noise, snr_db=20.0),
    "noise10db": functools.partial(_noise, snr_db=10.0),
    "noise0db": functools.partial(_noise, snr_db=0.0),
    "mulaw8k": _mulaw,
    "whitenoise": _white,
}
