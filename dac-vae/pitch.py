"""Pitch for the harmonic decoder: a YIN tracker (training targets) and a harmonic excitation.

A frame-rate decoder that must *draw* a harmonic comb at the right pitch in every STFT frame learns
slowly without a discriminator: short runs give the right spectral envelope filled with noise. A
source-filter decoder instead multiplies a predicted envelope with the spectrum of a harmonic
excitation at a predicted pitch (:class:`dac_vae.frame_rate.FrameDecoder` with ``harmonic=True``),
so the comb and its phase coherence come for free. Its pitch head is trained on YIN targets.

Framing matches the codec: frame ``t`` stands for samples ``[t * hop, (t + 1) * hop)`` and is
analysed centred on that block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["yin", "fill_unvoiced", "pitch_to_latent", "latent_to_pitch", "per_sample_f0", "harmonic_excitation"]


def yin(
    audio: torch.Tensor,
    sample_rate: int,
    hop: int,
    window: int | None = None,
    f0_min: float = 60.0,
    f0_max: float = 500.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """YIN (de Cheveigné & Kawahara 2002) per block: ``audio`` ``[B, T * hop]`` → ``(f0, aperiodicity)``
    ``[B, T]``.

    For each frame, the cumulative-mean-normalised difference ``d'(τ)`` over a ``window``-sample
    segment centred on the block; the period is the first lag in ``[sr / f0_max, sr / f0_min]``
    where ``d'`` falls under 0.15 (else the global minimum), refined to its local minimum and by
    parabolic interpolation. ``aperiodicity`` is ``d'`` there (0: perfectly periodic, ~1: noise);
    callers threshold it for voicing. Runs on whole batches with FFTs (no per-frame loops).
    """
    b, s = audio.shape
    t = s // hop
    tau_max = int(math.ceil(sample_rate / f0_min))
    tau_min = max(2, int(sample_rate / f0_max))
    window = int(window or 2 * hop)
    span = window + tau_max
    pad_left = (window - hop) // 2
    x = F.pad(audio.float(), (pad_left, span))
    frames = x.unfold(-1, span, hop)[:, :t]  # [B, T, window + tau_max]
    n = 1 << (2 * span - 1).bit_length()
    seg = frames[..., :window]
    corr = torch.fft.irfft(torch.fft.rfft(seg, n=n).conj() * torch.fft.rfft(frames, n=n), n=n)[..., : tau_max + 1]
    energy = F.pad(frames.pow(2).cumsum(-1), (1, 0))
    lags = torch.arange(tau_max + 1, device=audio.device)
    e_tau = energy[..., lags + window] - energy[..., lags]  # energy of the segment shifted by tau
    diff = (e_tau[..., :1] + e_tau - 2 * corr).clamp_min(0)
    mean = diff[..., 1:].cumsum(-1) / torch.arange(1, tau_max + 1, device=audio.device)
    cmnd = torch.cat([torch.ones_like(diff[..., :1]), diff[..., 1:] / mean.clamp_min(1e-9)], dim=-1)
    cmnd[..., :tau_min] = 2.0  # outside the pitch range
    below = cmnd < 0.15
    first = torch.where(below.any(-1), below.float().argmax(-1), cmnd.argmin(-1))
    # Walk from the first dip to its local minimum (within one octave of the shortest period).
    idx = (first.unsqueeze(-1) + torch.arange(tau_min, device=audio.device)).clamp(max=tau_max)
    tau = idx.gather(-1, cmnd.gather(-1, idx).argmin(-1, keepdim=True)).squeeze(-1)
    left = cmnd.gather(-1, (tau - 1).clamp(min=1).unsqueeze(-1)).squeeze(-1)
    mid = cmnd.gather(-1, tau.unsqueeze(-1)).squeeze(-1)
    right = cmnd.gather(-1, (tau + 1).clamp(max=tau_max).unsqueeze(-1)).squeeze(-1)
    curve = left - 2 * mid + right
    shift = torch.where(curve.abs() > 1e-9, 0.5 * (left - right) / curve, torch.zeros_like(curve)).clamp(-1, 1)
    f0 = sample_rate / (tau.float() + shift)
    silent = seg.pow(2).mean(-1) < 1e-6
    aperiodicity = torch.where(silent, torch.ones_like(mid), mid.clamp(0, 1))
    return f0.clamp(f0_min, f0_max), aperiodicity


def fill_unvoiced(f0: torch.Tensor, voiced: torch.Tensor, default: float = 120.0) -> torch.Tensor:
    """``[B, T]`` f0 with unvoiced frames replaced by log-linear interpolation between the nearest
    voiced frames (held constant past the first/last; ``default`` for an item with none): the smooth
    pitch track an excitation needs through consonants and pauses."""
    b, t = f0.shape
    idx = torch.arange(t, device=f0.device).expand(b, t)
    log_f0 = f0.clamp_min(1e-3).log()
    prev = torch.where(voiced, idx, torch.full_like(idx, -1)).cummax(-1).values
    nxt = torch.where(voiced, idx, torch.full_like(idx, t)).flip(-1).cummin(-1).values.flip(-1)
    has_prev, has_next = prev >= 0, nxt < t
    p, q = prev.clamp(min=0), nxt.clamp(max=t - 1)
    lp, lq = log_f0.gather(-1, p), log_f0.gather(-1, q)
    frac = (idx - prev).float() / (nxt - prev).clamp(min=1).float()
    inner = lp + frac * (lq - lp)
    filled = torch.where(has_prev & has_next, inner, torch.where(has_prev, lp, lq))
    filled = torch.where(voiced.any(-1, keepdim=True), filled, torch.full_like(filled, math.log(default)))
    return torch.where(voiced, log_f0, filled).exp()


PITCH_CENTRE_HZ = 150.0
PITCH_SCALE = 0.5  # log f0 units per latent unit: 60-500 Hz spans about -1.8..2.4


def pitch_to_latent(f0: torch.Tensor) -> torch.Tensor:
    """Pitch (Hz) → the value latent channel 0 of a harmonic codec carries: ``(log f0 - log 150) / 0.5``."""
    return (f0.clamp_min(1e-3).log() - math.log(PITCH_CENTRE_HZ)) / PITCH_SCALE


def latent_to_pitch(value: torch.Tensor, f0_min: float, f0_max: float) -> torch.Tensor:
    """Inverse of :func:`pitch_to_latent`, clamped to ``[f0_min, f0_max]`` (generated latents can stray)."""
    log_f0 = math.log(PITCH_CENTRE_HZ) + PITCH_SCALE * value
    return log_f0.clamp(math.log(f0_min), math.log(f0_max)).exp()


def per_sample_f0(f0: torch.Tensor, hop: int) -> torch.Tensor:
    """Frame f0 ``[B, T]`` → sample f0 ``[B, T * hop]``, linear between block centres, held at the ends.

    The weights depend only on a sample's place in its block, so a window of frames gives exactly
    the samples the whole track gives there (chunked decoding relies on it)."""
    b, t = f0.shape
    w = (torch.arange(hop, dtype=f0.dtype, device=f0.device) + 0.5) / hop - 0.5  # position from the centre
    padded = F.pad(f0.unsqueeze(1), (1, 1), mode="replicate").squeeze(1)
    cur = padded[:, 1:-1, None]
    neighbour = torch.where(w < 0, padded[:, :-2, None], padded[:, 2:, None])  # [B, T, hop]
    return (cur + (neighbour - cur) * w.abs()).reshape(b, t * hop)


def harmonic_excitation(
    f0: torch.Tensor, hop: int, sample_rate: int, phase0: torch.Tensor | None = None
) -> torch.Tensor:
    """A band-limited harmonic signal ``[B, T * hop]`` following ``f0`` ``[B, T]`` (Hz, per frame).

    ``sum_{k=1..K} sin(k φ)`` with ``K = floor(sr / 2 / f0)`` per sample (no aliasing), in closed
    form ``sin(K φ/2) sin((K+1) φ/2) / sin(φ/2)``; ``φ`` integrates the per-sample f0 from ``phase0``
    (``[B]``, radians; 0 by default). Scaled by ``2 sqrt(f0 / sr)`` so its power is ~1 at any pitch,
    like unit white noise: a decoder's envelope then means the same for both.
    """
    f = per_sample_f0(f0.double(), hop)
    phase = 2 * math.pi * torch.cumsum(f / sample_rate, dim=-1)
    if phase0 is not None:
        phase = phase + phase0.double().unsqueeze(-1)
    phase = torch.remainder(phase, 2 * math.pi)
    k = torch.floor(sample_rate / 2 / f).clamp(min=1)
    half = 0.5 * phase
    den = torch.sin(half)
    safe = den.abs() > 1e-6
    comb = torch.sin(k * half) * torch.sin((k + 1) * half) / torch.where(safe, den, torch.ones_like(den))
    comb = torch.where(safe, comb, torch.zeros_like(comb))  # the limit at φ = 0 (mod 2π)
    return (comb * 2 * torch.sqrt(f / sample_rate)).float()
