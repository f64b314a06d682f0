"""Loss terms of the codec: multi-scale mel L1, LSGAN, feature matching, KL, dispersive.

Every function returns a scalar tensor; the model weights and sums them (weights from YAML) and
logs each term by name. Masks are ``[B, T]`` bool, True = valid.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

__all__ = [
    "MultiScaleMelLoss",
    "gaussian_kl",
    "dispersive_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "feature_matching_loss",
    "anti_wrap",
    "frame_spectral_losses",
]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` ``[B, ..., T]`` over the positions where ``mask`` ``[B, T]`` is True."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).reshape(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1]).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


class MultiScaleMelLoss(nn.Module):
    """L1 between log10 mel magnitudes at several STFT resolutions, summed over the scales.

    DAC's recipe: windows 32..2048 (hop = window / 4, Hann), 5..320 mel bands, magnitudes floored
    at ``clamp_eps`` before log10. A frame (centred STFT) counts when its centre sample is valid.
    Filterbanks come from torchaudio and are non-persistent buffers (not in checkpoints).
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        clamp_eps: float = 1e-5,
        f_min: float = 0.0,
        f_max: float | None = None,
    ):
        super().__init__()
        if len(window_lengths) != len(n_mels):
            raise ValueError(f"window_lengths ({len(window_lengths)}) and n_mels ({len(n_mels)}) differ in length")
        self.window_lengths = [int(w) for w in window_lengths]
        self.clamp_eps = clamp_eps
        for i, (win, mels) in enumerate(zip(self.window_lengths, n_mels)):
            fb = torchaudio.functional.melscale_fbanks(
                n_freqs=win // 2 + 1,
                f_min=f_min,
                f_max=f_max if f_max is not None else sample_rate / 2,
                n_mels=int(mels),
                sample_rate=sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )
            self.register_buffer(f"fb{i}", fb, persistent=False)  # [F, n_mels]
            self.register_buffer(f"win{i}", torch.hann_window(win), persistent=False)

    def log_mel(self, wav: torch.Tensor, scale: int) -> torch.Tensor:
        """``[B, S]`` -> ``[B, n_mels, T]`` log10 mel magnitude at one scale (fp32, centred STFT)."""
        win = self.window_lengths[scale]
        spec = torch.stft(
            wav.float(),
            n_fft=win,
            hop_length=win // 4,
            window=getattr(self, f"win{scale}"),
            center=True,
            return_complex=True,
        ).abs()
        mel = torch.matmul(spec.transpose(1, 2), getattr(self, f"fb{scale}")).transpose(1, 2)
        return mel.clamp_min(self.clamp_eps).log10()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over scales of the masked mean |log mel(pred) - log mel(target)|; inputs ``[B, S]``."""
        total = pred.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            for i, win in enumerate(self.window_lengths):
                diff = (self.log_mel(pred, i) - self.log_mel(target, i)).abs()
                mask = None
                if lengths is not None:
                    centres = torch.arange(diff.shape[-1], device=diff.device) * (win // 4)
                    mask = centres.unsqueeze(0) < lengths.unsqueeze(1)
                total = total + _masked_mean(diff, mask)
        return total


def gaussian_kl(mu: torch.Tensor, logs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, exp(logs)^2) || N(0, 1)) per latent element, averaged over valid frames and dims.

    ``logs`` is the log *standard deviation*, so per element
    ``KL = 0.5 (mu^2 + exp(2 logs) - 1 - 2 logs)`` (not the log-variance form with ``exp(logs)``).
    Shapes: ``mu``, ``logs`` ``[B, D, T]``; ``mask`` ``[B, T]``.
    """
    mu, logs = mu.float(), logs.float()
    kl = 0.5 * (mu.pow(2) + torch.exp(2.0 * logs) - 1.0 - 2.0 * logs)
    return _masked_mean(kl, mask)


def dispersive_loss(latent: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared cosine similarity between the latents of different batch items.

    Each item's latent ``[D, T]`` (padded frames zeroed) is flattened to one vector; pushing the
    off-diagonal cosine similarities towards 0 spreads items apart (a dispersive loss in the spirit
    of arXiv 2506.09027, every other item being a negative, as in DC-Speech-VAE). Zero for B < 2.
    """
    b = latent.shape[0]
    if b < 2:
        return latent.new_zeros((), dtype=torch.float32)
    x = latent.float()
    if mask is not None:
        x = x * mask.unsqueeze(1).to(x.dtype)
    x = F.normalize(x.reshape(b, -1), dim=1, eps=1e-8)
    sim = x @ x.t()
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=x.device)
    return sim[off_diagonal].pow(2).mean()


def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss summed over sub-discriminators: ``E(D(x)-1)^2 + E D(G(z))^2``."""
    total = real_logits[0].new_zeros((), dtype=torch.float32)
    for real, fake in zip(real_logits, fake_logits):
        total = total + (real.float() - 1.0).pow(2).mean() + fake.float().pow(2).mean()
    return total


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss summed over sub-discriminators: ``E (D(G(z)) - 1)^2``."""
    total = fake_logits[0].new_zeros((), dtype=torch.float32)
    for fake in fake_logits:
        total = total + (fake.float() - 1.0).pow(2).mean()
    return total


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """L1 between discriminator feature maps of real (detached) and generated audio, each map's
    mean summed over layers and sub-discriminators (MelGAN / DAC)."""
    total = fake_features[0][0].new_zeros((), dtype=torch.float32)
    for real_maps, fake_maps in zip(real_features, fake_features):
        for real, fake in zip(real_maps, fake_maps):
            total = total + (fake.float() - real.detach().float()).abs().mean()
    return total


def anti_wrap(x: torch.Tensor) -> torch.Tensor:
    """Distance of a phase difference to the nearest multiple of 2 pi: ``|x - 2 pi round(x / 2 pi)|``."""
    return (x - 2 * torch.pi * torch.round(x / (2 * torch.pi))).abs()


def frame_spectral_losses(
    log_mag: torch.Tensor, phase: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> dict[str, torch.Tensor]:
    """Direct losses on predicted STFT frames against the target's frames of the same framing.

    ``magnitude``: L1 of log magnitudes. ``phase``: the anti-wrapped instantaneous-phase, group-delay
    (difference along frequency) and instantaneous-frequency (difference along time) errors of APNet
    (Ai & Ling 2023, eqs. 5-7), summed; each is weighted by the target's magnitude (normalised to mean 1
    over valid bins), since the phase of a near-silent bin is noise that no decoder can predict.
    Shapes: ``log_mag``, ``phase`` ``[B, T, F]`` real; ``target`` ``[B, T, F]`` complex; ``mask``
    ``[B, T]`` valid frames.
    """
    target = target.detach()
    mag = target.abs()
    valid = torch.ones_like(mag) if mask is None else mask.unsqueeze(-1).to(mag.dtype).expand_as(mag)
    weight = mag * valid
    weight = weight / (weight.sum() / valid.sum().clamp_min(1.0)).clamp_min(1e-8)
    true_phase = torch.angle(target)
    magnitude = ((log_mag - mag.clamp_min(eps).log()).abs() * valid).sum() / valid.sum().clamp_min(1.0)

    def weighted(err: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (err * w).sum() / w.sum().clamp_min(1e-8)  # all-silent batch: 0

    ip = weighted(anti_wrap(phase - true_phase), weight)
    w_f = 0.5 * (weight[..., 1:] + weight[..., :-1])
    gd = weighted(anti_wrap(phase.diff(dim=-1) - true_phase.diff(dim=-1)), w_f)
    w_t = 0.5 * (weight[:, 1:] + weight[:, :-1])
    iaf = weighted(anti_wrap(phase.diff(dim=1) - true_phase.diff(dim=1)), w_t)
    return {"magnitude": magnitude, "phase": ip + gd + iaf}
