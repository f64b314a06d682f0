"""Flow-matching autoencoder (a diffusion autoencoder in the manner of DiTo, Chen et al. 2025).

    audio [B, S] ─► DAC encoder (dac_vae EncoderBlocks) ─► 1×k conv ─► parameter-free LayerNorm
                                                                            │ latent [B, D, T], T = ceil(S / hop)
    noise ─► flow-matching renderer: estimator(x_t, t | latent upsampled to the frame rate)
          ─► compressed complex STFT frames [B, 2F, T·k] ─► exact inverse STFT ─► audio [B, T·hop]

What the renderer generates, and why: compressed complex STFT frames (``flowae.spectral``), not raw
samples. On the tiny CPU scale that trains fastest because (1) the estimator runs at a frame rate
(``frames_per_latent`` STFT frames per latent frame; 1 = the latent rate, 50 Hz for hop 480), not at
24 kHz, so a step costs a small fraction of a sample-rate network's (the frame-rate DAC-VAE decoder
showed the same on this machine, configs/tiny/dac_vae_frame.yaml); (2) magnitude compression gives
the flow's MSE a target whose scale is even across frequency, where a waveform MSE is ruled by the
loudest low bins; (3) the inverse STFT is exact and parameter-free, so no vocoder is trained or
needed and the output has exactly the input's length. Everything is masked per item, so a padded
item renders as it would alone (with the same seed).

The estimator predicts the clean frames and is trained through the velocity loss
(:class:`flowae.estimator.DataPrediction`): a frame has more channels (2F = 1922 for hop 480) than
the network is wide, and a velocity target carries all of the noise's channels, which a narrow
network cannot pass through (a v-predicting tiny DiT stalled at flow MSE ~1.0 on one utterance; the
x-predicting one reached 0.007 and a mel distance of 0.38 from 12.6 in 200 steps).

Latent conditioning: the latent, repeated ``frames_per_latent`` times along time, is the estimator's
``mu`` input; the estimator concatenates ``[x, mu]`` before its first layer, so the model checks at
construction that the estimator was built with ``in_channels = 2F`` and ``mu_channels = latent_dim``
(the published flow AE concatenated channels its first block did not expect). Any hop works: the
STFT frame hop is ``hop / frames_per_latent`` and audio is zero-padded to whole latent frames.

Noise synchronisation (DiTo §3.3): with probability ``noise_sync_prob`` per item, the latent is
noised to a random level ``τ ~ U(0, 1)``, ``z̃ = (1 - τ)·z + τ·ε``, and the decoder's flow time is
drawn in ``[0, 1 - τ]`` (``t = (1 - τ)·t'``, ``t'`` from the objective's sampler; ``t = 0`` is
noise): the rendered signal is never cleaner than its latent, so the decoder learns to work from
noisy latents (what Stage 2 will feed it) without being taught to invent detail at a clean level.

Objective and sampler: any object with ``loss(estimator, x1, mask, conditions, t=..., generator=...)``
and ``sample(estimator, noise, mask, conditions, n_steps=...)``, built by the YAML; the configs
use :class:`speech.flow.matching.FlowMatching` (OT-CFM, k-nearest immiscible noise). A MeanFlow
objective with that interface drops in by config (noise synchronisation needs the ``t`` argument).

Codec interface (the DAC-VAE's): ``encode``, ``decode``, ``latent_dim``, ``latent_ratio``,
``sample_rate``, ``hop``; latent files ``<utt>_latentfae.pt`` (``latent_tag``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from dac_vae.layers import WNConv1d, apply_mask, lengths_to_mask
from dac_vae.losses import MultiScaleMelLoss
from dac_vae.model import Encoder, reconstruction_media
from flowae.spectral import CompressedSTFT

__all__ = ["FlowAE"]

DETERMINISTIC_LOGS = -10.0  # the log-std written for flowae latents (a point posterior)


def layer_norm_channels(z: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the channels of each frame of ``[B, D, T]``."""
    return F.layer_norm(z.transpose(1, 2), (z.shape[1],)).transpose(1, 2)


class FlowAE(nn.Module):
    """DAC-style encoder → LayerNorm latent → flow-matching renderer of compressed STFT frames."""

    latent_tag = "fae"  # latent files <utt>_latentfae.pt, statistics latentfae_stats.json

    def __init__(
        self,
        encoder: Encoder,
        estimator: nn.Module,
        objective: Any,
        latent_dim: int = 80,
        sample_rate: int = 24000,
        token_rate: int = 25,
        frames_per_latent: int = 1,
        n_fft: int | None = None,
        compress_power: float = 0.5,
        compress_scale: float = 1.0,
        latent_kernel: int = 3,
        noise_sync_prob: float = 0.1,
        n_steps: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.hop = int(encoder.hop)
        frame_rate = sample_rate / self.hop
        ratio = frame_rate / token_rate
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(f"latent rate {frame_rate} Hz is not an integer multiple of token_rate {token_rate} Hz")
        if self.hop % frames_per_latent:
            raise ValueError(f"hop {self.hop} is not a multiple of frames_per_latent {frames_per_latent}")
        if not 0.0 <= noise_sync_prob <= 1.0:
            raise ValueError(f"noise_sync_prob must be in [0, 1], got {noise_sync_prob}")
        self.encoder = encoder
        self.latent_head = WNConv1d(encoder.out_channels, latent_dim, latent_kernel, padding=latent_kernel // 2)
        self.frames_per_latent = int(frames_per_latent)
        self.spec = CompressedSTFT(self.hop // self.frames_per_latent, n_fft, compress_power, compress_scale)
        _check_estimator(estimator, self.spec.channels, latent_dim)
        self.estimator = estimator
        self.objective = objective
        self.latent_dim = int(latent_dim)
        self.sample_rate = int(sample_rate)
        self.token_rate = int(token_rate)
        self.latent_ratio = int(round(ratio))
        self.noise_sync_prob = float(noise_sync_prob)
        self.n_steps = n_steps
        self.seed = int(seed)
        self.discriminator = None  # the codec loaders drop a GAN's discriminator; there is none here
        self._mel = MultiScaleMelLoss(sample_rate)

    # ----------------------------------------------------------------------------- codec interface
    def latent_length(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Latent frames for ``n_samples`` samples: ``ceil(n / hop)``."""
        return (n_samples + self.hop - 1) // self.hop

    def _encode(self, audio: torch.Tensor, audio_len: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio`` ``[B, S]`` → (normalised latent ``[B, D, ceil(S / hop)]``, ``latent_len``)."""
        pad = (-audio.shape[-1]) % self.hop
        if pad:
            audio = F.pad(audio, (0, pad))
        if audio_len is None:
            latent_len = torch.full((audio.shape[0],), audio.shape[-1] // self.hop, dtype=torch.long,
                                    device=audio.device)
            return layer_norm_channels(self.latent_head(self.encoder(audio))), latent_len
        audio = audio * lengths_to_mask(audio_len, audio.shape[-1])[:, 0]
        latent_len = self.latent_length(audio_len)
        mask = lengths_to_mask(latent_len, audio.shape[-1] // self.hop)
        z = self.latent_head(self.encoder(audio, latent_len))
        return apply_mask(layer_norm_channels(z), mask), latent_len

    def encode(
        self, audio: torch.Tensor, audio_len: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``audio`` ``[B, S]`` → ``(mu, logs, latent_len)`` like the DAC-VAE's; ``logs`` is a constant
        (the latent is deterministic), kept so latent files have one layout for both codecs."""
        mu, latent_len = self._encode(audio, audio_len)
        logs = apply_mask(torch.full_like(mu, DETERMINISTIC_LOGS), lengths_to_mask(latent_len, mu.shape[-1]))
        return mu, logs, latent_len

    def _condition(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, D, T]`` → the estimator's ``mu`` ``[B, D, T·k]`` (each frame repeated k times)."""
        return z.repeat_interleave(self.frames_per_latent, dim=-1) if self.frames_per_latent > 1 else z

    def noise(self, batch: int, n_frames: int, device: torch.device, seed: int) -> torch.Tensor:
        """``[B, 2F, N]`` starting noise, the same for every item and drawn frame by frame, so an item's
        first ``n`` frames do not depend on how long the batch is (batched = alone)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(n_frames, self.spec.channels, generator=g).t().to(device)
        return x.unsqueeze(0).expand(batch, -1, -1).contiguous()

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        latent_len: torch.Tensor | None = None,
        length: int | None = None,
        n_steps: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """``z`` ``[B, D, T]`` → audio ``[B, T * hop]`` (or its first ``length`` samples).

        Renders with ``n_steps`` ODE steps (default: the model's, else the objective's) from noise
        seeded with ``seed`` (default: the model's): the same latent always gives the same audio.
        Frames past ``latent_len`` are ignored and give zeros.
        """
        z = layer_norm_channels(z.float())  # idempotent on encoder output; projects predicted latents
        T = z.shape[-1]
        if latent_len is None:
            latent_len = torch.full((z.shape[0],), T, dtype=torch.long, device=z.device)
        n = T * self.frames_per_latent
        mask = lengths_to_mask(latent_len * self.frames_per_latent, n)[:, 0]
        cond = self._condition(apply_mask(z, mask[:, None, :: self.frames_per_latent]))
        x0 = self.noise(z.shape[0], n, z.device, self.seed if seed is None else seed)
        steps = n_steps if n_steps is not None else self.n_steps
        kwargs = {} if steps is None else {"n_steps": steps}
        frames = self.objective.sample(self.estimator, x0, mask, {"mu": cond}, **kwargs)
        audio = self.spec.synthesis(frames, mask).clamp(-1.0, 1.0)
        return audio if length is None else audio[..., :length]

    # ----------------------------------------------------------------------------------- training
    def noise_sync(
        self, z: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """With probability ``noise_sync_prob`` per item: latent noised to level ``τ ~ U(0, 1)`` and the
        decoder time moved into ``[0, 1 - τ]``. Returns ``(z̃, t, τ)`` (``τ = 0`` where not synced)."""
        B = z.shape[0]
        synced = torch.rand(B, device=z.device, generator=generator) < self.noise_sync_prob
        tau = torch.rand(B, device=z.device, generator=generator) * synced
        eps = torch.randn(z.shape, device=z.device, generator=generator, dtype=z.dtype)
        tt = tau.to(z.dtype).view(B, 1, 1)
        return (1.0 - tt) * z + tt * eps, (1.0 - tau) * t, tau

    def forward(self, batch: Mapping[str, Any], **_: Any) -> dict[str, torch.Tensor]:
        """Flow-matching loss of rendering ``batch["audio"]`` ``[B, S]`` (``audio_len`` ``[B]``)."""
        audio = batch["audio"]
        audio_len = batch.get("audio_len")
        if audio_len is None:
            audio_len = torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
        z, latent_len = self._encode(audio, audio_len)
        pad = z.shape[-1] * self.hop - audio.shape[-1]
        target = F.pad(audio, (0, pad)) * lengths_to_mask(audio_len, audio.shape[-1] + pad)[:, 0]
        x1 = self.spec.analysis(target)
        mask = lengths_to_mask(latent_len * self.frames_per_latent, x1.shape[-1])[:, 0]
        kwargs: dict[str, Any] = {}
        stats = {}
        if self.noise_sync_prob > 0 and self.training:
            sampler = getattr(self.objective, "time_sampler", None)  # an objective without one: uniform t
            t = sampler(z.shape[0], z.device) if sampler is not None else torch.rand(z.shape[0], device=z.device)
            z, t, tau = self.noise_sync(z, t)
            z = apply_mask(z, mask[:, None, :: self.frames_per_latent])
            kwargs["t"] = t
            stats["noise_sync_share"] = (tau > 0).float().mean()
        out = self.objective.loss(self.estimator, x1, mask, {"mu": self._condition(z)}, **kwargs)
        return {**out, **stats}

    @torch.no_grad()
    def mel_distance(self, reference: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Multi-scale log-mel L1 distance (the DAC-VAE's training loss) between ``[B, S]`` waveforms."""
        return self._mel(audio, reference)

    @torch.no_grad()
    def media(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """First item of ``batch``: input and rendered reconstruction audio, mel images."""
        return reconstruction_media(self, batch, self._mel)

    def remove_weight_norm(self) -> "FlowAE":
        """Fold weight norm into plain weights (inference speed); do it after loading a checkpoint."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self


def _check_estimator(estimator: nn.Module, data_channels: int, latent_dim: int) -> None:
    """The estimator's first layer must expect ``[x (2F), latent (D)]`` and nothing else."""
    want = {"in_channels": data_channels, "out_channels": data_channels, "mu_channels": latent_dim,
            "spk_channels": 0, "cond_channels": 0}
    got = {k: getattr(estimator, k, None) for k in want}
    if got != want:
        bad = ", ".join(f"{k}={got[k]} (need {v})" for k, v in want.items() if got[k] != v)
        raise ValueError(
            f"flowae: the estimator's input layout does not match the renderer: {bad}; its first layer takes "
            f"[x, latent] = {data_channels} + {latent_dim} channels (2F for n_fft {2 * (data_channels // 2 - 1)})"
        )

