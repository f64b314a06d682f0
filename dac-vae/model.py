"""DAC-VAE: DAC's convolutional encoder/decoder with a Gaussian posterior instead of the RVQ.

Shapes: audio ``[B, S]`` in [-1, 1] with lengths ``[B]``; latents ``[B, D, T]`` with
``T = ceil(S / hop)``; decoded audio has exactly the input length.

Training follows the GAN contract of docs/contracts.md: :meth:`DACVAE.parameter_groups` returns
``{"generator": ..., "discriminator": ...}`` and the trainer calls, every iteration and in that
order, ``forward(batch, group="generator", step=s)`` then ``forward(batch, group="discriminator",
step=s)``, stepping that group's optimizer on the returned ``loss``.

The generator runs once per iteration. The generator call reconstructs the batch, takes its
reconstruction, KL and adversarial / feature-matching losses against the current discriminator,
and caches the *detached* reconstruction; the discriminator call of the same batch object and step
trains on that cached fake (no graph is kept between the calls). So, as in DAC, the discriminator
at iteration t learns from the fakes of the generator before its update of iteration t; the
generator's adversarial loss sees the discriminator before (DAC: after) that iteration's update.
Any other call order or batch object recomputes the fake under ``no_grad``: slower, never wrong.
During the generator call the discriminator's parameters do not collect gradients (they are
frozen for the duration of its forward, as the shared trainer also does), and the discriminator
call builds no generator graph, so each group's loss reaches only its own parameters. Under DDP
each call leaves the other group's parameters unused: wrap with ``find_unused_parameters=True``
(the shared trainer does so for any model with ``parameter_groups()``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from dac_vae.discriminators import Discriminator
from dac_vae.layers import (
    DecoderBlock,
    EncoderBlock,
    Snake1d,
    WNConv1d,
    apply_mask,
    lengths_to_mask,
)
from dac_vae.pitch import fill_unvoiced, pitch_to_latent, yin
from dac_vae.losses import (
    MultiScaleMelLoss,
    discriminator_loss,
    dispersive_loss,
    feature_matching_loss,
    frame_spectral_losses,
    gaussian_kl,
    generator_adversarial_loss,
)

__all__ = [
    "Encoder",
    "Decoder",
    "GaussianPosterior",
    "DACVAE",
    "Reconstruction",
    "latent_token_ratio",
    "mel_figure",
    "reconstruction_media",
]

DEFAULT_LOSS_WEIGHTS = {
    "mel": 15.0, "adversarial": 1.0, "feature": 2.0, "kl": 0.1, "dispersive": 0.0,
    # frame decoders only (dac_vae.frame_rate): direct losses on the predicted STFT frames
    "magnitude": 0.0, "phase": 0.0,
}


def latent_token_ratio(frame_rate: float, token_rate: float) -> int | float | None:
    """Latent frames per token: an int ``r >= 1`` (2 for 50 Hz, 3 for 75 Hz, 1 for 25 Hz), or ``1 / n``
    (0.5 for 12.5 Hz) for a latent rate ``n`` times below the token rate; None when neither.

    Only the continuous AR path (``speech.sled``) reads latents below the token rate; the flow needs an
    integer ratio and says so itself (``token_latent_ratio``, the inference compatibility check).
    """
    up = frame_rate / token_rate
    if up >= 1 - 1e-9:
        return int(round(up)) if abs(up - round(up)) <= 1e-9 else None
    down = token_rate / frame_rate
    return 1.0 / round(down) if abs(down - round(down)) <= 1e-9 else None


def _stage_masks(latent_len: torch.Tensor | None, n_frames: int, factors: Sequence[int]) -> list:
    """Masks ``[B, 1, n_frames * f]`` (valid = ``latent_len * f``) for each upsampling factor ``f``."""
    if latent_len is None:
        return [None] * len(factors)
    return [lengths_to_mask(latent_len * f, n_frames * f) for f in factors]


class Encoder(nn.Module):
    """Waveform ``[B, S]`` (S a multiple of the hop) -> features ``[B, C, S / hop]``.

    A k=7 conv to ``channels``, then one :class:`EncoderBlock` per stride, each doubling the
    channels, then a snake. The latent heads live in :class:`GaussianPosterior`.
    """

    def __init__(
        self, strides: Sequence[int] = (2, 3, 4, 4, 5), channels: int = 64, dilations: Sequence[int] = (1, 3, 9)
    ):
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.hop = math.prod(self.strides)
        self.conv_in = WNConv1d(1, channels, 7, padding=3)
        blocks = []
        ch = channels
        for stride in self.strides:
            blocks.append(EncoderBlock(ch, 2 * ch, stride, tuple(dilations)))
            ch *= 2
        self.blocks = nn.ModuleList(blocks)
        self.act_out = Snake1d(ch)
        self.out_channels = ch

    def forward(self, wav: torch.Tensor, latent_len: torch.Tensor | None = None) -> torch.Tensor:
        """``wav`` ``[B, S]``, ``latent_len`` ``[B]`` valid latent frames (None: all valid)."""
        n_frames = wav.shape[-1] // self.hop
        # Cumulative downsampling after each stage, expressed as frames per latent frame.
        factors = [self.hop]
        for stride in self.strides:
            factors.append(factors[-1] // stride)
        masks = _stage_masks(latent_len, n_frames, factors)
        x = apply_mask(self.conv_in(wav.unsqueeze(1)), masks[0])
        for block, mask, out_mask in zip(self.blocks, masks[:-1], masks[1:]):
            x = block(x, mask, out_mask)
        return self.act_out(x)


class Decoder(nn.Module):
    """Latent ``[B, D, T]`` -> waveform ``[B, T * hop]`` in (-1, 1).

    A k=7 conv to ``channels``, one :class:`DecoderBlock` per stride (the encoder's, reversed),
    each halving the channels, then snake, a k=7 conv to one channel and tanh.
    """

    def __init__(
        self,
        strides: Sequence[int] = (2, 3, 4, 4, 5),
        latent_dim: int = 80,
        channels: int = 1536,
        dilations: Sequence[int] = (1, 3, 9),
    ):
        super().__init__()
        self.strides = [int(s) for s in reversed(list(strides))]
        self.hop = math.prod(self.strides)
        self.latent_dim = latent_dim
        if channels % (2 ** len(self.strides)):
            raise ValueError(f"decoder channels {channels} cannot be halved {len(self.strides)} times")
        self.conv_in = WNConv1d(latent_dim, channels, 7, padding=3)
        blocks = []
        ch = channels
        for stride in self.strides:
            blocks.append(DecoderBlock(ch, ch // 2, stride, tuple(dilations)))
            ch //= 2
        self.blocks = nn.ModuleList(blocks)
        self.act_out = Snake1d(ch)
        self.conv_out = WNConv1d(ch, 1, 7, padding=3)

    def context_frames(self) -> int:
        """Latent frames on each side that can change one frame's samples (an upper bound of the
        receptive field), so a chunk decoded with this much context on both sides is exact.

        Summed over the layers in output samples: a conv of kernel ``k`` and dilation ``d`` reaches
        ``d (k - 1) / 2`` samples of its own rate each side; a transposed conv up by ``s`` (kernel
        ``2 s``) reaches at most 2 input samples each side (3 counted, for its padding offset).
        The sum is rounded up to whole latent frames (18 for the 2x strides).
        """
        out = 0  # reach in output samples
        rate = 1  # samples per latent frame at the current stage
        out += (self.conv_in.kernel_size[0] // 2) * self.hop
        for block in self.blocks:
            out += 3 * (self.hop // rate)  # transposed conv, counted at its input rate
            rate *= block.stride
            for unit in block.res:
                conv = unit.conv1
                out += conv.dilation[0] * (conv.kernel_size[0] - 1) // 2 * (self.hop // rate)
        out += self.conv_out.kernel_size[0] // 2
        return math.ceil(out / self.hop)

    def forward(
        self, z: torch.Tensor, latent_len: torch.Tensor | None = None, frame_offset: int = 0
    ) -> torch.Tensor:
        """``z`` ``[B, D, T]`` with padded frames zeroed -> ``[B, T * hop]`` (zero past ``latent_len * hop``).

        ``frame_offset`` is accepted for the chunked-decode interface and ignored: every layer is
        translation-invariant."""
        factors = [1]
        for stride in self.strides:
            factors.append(factors[-1] * stride)
        masks = _stage_masks(latent_len, z.shape[-1], factors)
        x = apply_mask(self.conv_in(z), masks[0])
        for block, mask in zip(self.blocks, masks[1:]):
            x = block(x, mask)
        x = torch.tanh(self.conv_out(self.act_out(x)))
        return apply_mask(x, masks[-1]).squeeze(1)


class GaussianPosterior(nn.Module):
    """Two linear conv heads: encoder features -> ``mu`` and ``logs`` (log standard deviation).

    Nothing follows the heads but the clamp of ``logs`` (bounds the posterior std to
    ``[exp(logs_min), exp(logs_max)]``) and the padding mask: no activation squashes the latent.
    """

    def __init__(
        self, in_channels: int, latent_dim: int, kernel_size: int = 3, logs_min: float = -10.0, logs_max: float = 2.0
    ):
        super().__init__()
        if not logs_min < logs_max:
            raise ValueError(f"logs_min ({logs_min}) must be below logs_max ({logs_max})")
        self.logs_min, self.logs_max = float(logs_min), float(logs_max)
        self.mu_head = WNConv1d(in_channels, latent_dim, kernel_size, padding=kernel_size // 2)
        self.logs_head = WNConv1d(in_channels, latent_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``[B, C, T]`` -> ``(mu, logs)`` each ``[B, D, T]``, padded frames zeroed."""
        mu = self.mu_head(h)
        logs = self.logs_head(h).clamp(self.logs_min, self.logs_max)
        return apply_mask(mu, mask), apply_mask(logs, mask)


@dataclass
class Reconstruction:
    """What one generator pass produces (training and media)."""

    audio: torch.Tensor  # [B, S], zero past each item's length
    mu: torch.Tensor  # [B, D, T]
    logs: torch.Tensor  # [B, D, T]
    latent_len: torch.Tensor  # [B]
    frames: tuple[torch.Tensor, torch.Tensor] | None = None  # frame decoders: (log_mag, phase) [B, T, F]


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without building gradients for its parameters (input gradients still flow)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class DACVAE(nn.Module):
    """The codec: encoder, Gaussian posterior, decoder; discriminator and losses for training.

    Options from DC-Speech-VAE, each a switch: ``sigma_max > 0`` adds σ-VAE noise ``σ ε`` with
    ``σ ~ U(0, sigma_max)`` per item to the training latent; ``latent_norm`` applies a parameter-free
    LayerNorm over the latent dimension before the decoder (in training *and* in :meth:`decode`);
    ``loss_weights["dispersive"] > 0`` enables the dispersive loss on ``mu``.

    For short (CPU) runs: ``kl_warmup_steps`` ramps the KL weight from 0 so latents carry information
    before the prior pulls them in; without a ``discriminator`` training is GAN-free (one
    ``generator`` group); with a frame decoder (:mod:`dac_vae.frame_rate`) ``loss_weights["magnitude"]``
    and ``["phase"]`` add direct losses on its STFT frames (:func:`dac_vae.losses.frame_spectral_losses`).
    Encoder and decoder are either the DAC ones below or the frame-rate ones: same interfaces.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        latent_dim: int = 80,
        sample_rate: int = 24000,
        token_rate: int = 25,
        posterior_kernel: int = 3,
        logs_min: float = -10.0,
        logs_max: float = 2.0,
        sigma_max: float = 0.0,
        latent_norm: bool = False,
        discriminator: Discriminator | None = None,
        mel_loss: MultiScaleMelLoss | None = None,
        loss_weights: Mapping[str, float] | None = None,
        disc_start_step: int = 0,
        kl_warmup_steps: int = 0,
        periodic_threshold: float = 0.3,
        pitch_std: float = 0.02,
    ):
        super().__init__()
        frame_weights = {k for k in ("magnitude", "phase") if (loss_weights or {}).get(k, 0) > 0}
        if frame_weights and not hasattr(decoder, "render"):
            raise ValueError(f"loss_weights {sorted(frame_weights)} need a frame decoder (dac_vae.frame_rate.FrameDecoder)")
        if getattr(decoder, "harmonic", False) and latent_norm:
            raise ValueError("a harmonic decoder reads its pitch from latent channel 0: latent_norm would mix it away")
        if encoder.hop != decoder.hop:
            raise ValueError(f"encoder hop {encoder.hop} != decoder hop {decoder.hop}: give both the same strides")
        if decoder.latent_dim != latent_dim:
            raise ValueError(f"decoder latent_dim {decoder.latent_dim} != latent_dim {latent_dim}")
        frame_rate = sample_rate / encoder.hop
        self.latent_ratio = latent_token_ratio(frame_rate, token_rate)
        if self.latent_ratio is None:
            raise ValueError(
                f"latent rate {frame_rate} Hz (sample_rate {sample_rate} / hop {encoder.hop}) is neither an integer "
                f"multiple of token_rate {token_rate} Hz nor an integer fraction of it"
            )
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss_weights {sorted(unknown)}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}")
        self.encoder = encoder
        self.posterior = GaussianPosterior(encoder.out_channels, latent_dim, posterior_kernel, logs_min, logs_max)
        self.decoder = decoder
        self.discriminator = discriminator
        self.mel_loss = mel_loss if mel_loss is not None else MultiScaleMelLoss(sample_rate)
        self.latent_dim = latent_dim
        self.sample_rate = sample_rate
        self.hop = encoder.hop
        self.token_rate = token_rate
        self.latent_rate = frame_rate  # latent frames per second
        self.sigma_max = float(sigma_max)
        self.latent_norm = bool(latent_norm)
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        self.disc_start_step = int(disc_start_step)
        self.kl_warmup_steps = int(kl_warmup_steps)
        # Harmonic decoders: latent channel 0 is the YIN pitch (frames with aperiodicity under
        # periodic_threshold; interpolated between them), with a fixed posterior std pitch_std.
        self.pitch_latent = bool(getattr(decoder, "harmonic", False))
        self.periodic_threshold = float(periodic_threshold)
        self.pitch_std = float(pitch_std)
        self._fake_cache: tuple[torch.Tensor, int, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------- inference API
    def latent_length(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Latent frames for ``n_samples`` samples: ``ceil(n / hop)``."""
        return (n_samples + self.hop - 1) // self.hop

    def encode(
        self, audio: torch.Tensor, audio_len: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``audio`` ``[B, S]`` -> ``(mu, logs, latent_len)``; latents ``[B, D, ceil(S / hop)]``.

        Items are zero-padded to a hop multiple; with ``audio_len`` each item is encoded exactly as
        it would be alone (padded frames zeroed, ``latent_len = ceil(audio_len / hop)``).
        """
        n = audio.shape[-1]
        pad = (-n) % self.hop
        if pad:
            audio = F.pad(audio, (0, pad))
        if audio_len is not None:
            audio = audio * lengths_to_mask(audio_len, audio.shape[-1]).squeeze(1)
            latent_len = self.latent_length(audio_len)
        else:  # one length: no masks needed (they would be all True)
            latent_len = torch.full(
                (audio.shape[0],), audio.shape[-1] // self.hop, dtype=torch.long, device=audio.device
            )
        pitch = self._yin(audio) if self.pitch_latent else None
        # an encoder reading pitch features over the same range reuses this YIN (~6% of a CPU training step)
        share = pitch is not None and getattr(self.encoder, "f0_range", None) == self.decoder.f0_range
        h = self.encoder(audio, None if audio_len is None else latent_len, **({"pitch": pitch} if share else {}))
        mask = None if audio_len is None else lengths_to_mask(latent_len, h.shape[-1])
        mu, logs = self.posterior(h, mask)
        return (*self._with_pitch(mu, logs, mask, pitch), latent_len)

    def _yin(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """YIN pitch and aperiodicity ``[B, T]`` of ``audio`` over the harmonic decoder's range (no grad)."""
        with torch.no_grad():
            return yin(audio.float(), self.sample_rate, self.hop, f0_min=self.decoder.f0_range[0],
                       f0_max=self.decoder.f0_range[1])

    def _with_pitch(
        self, mu: torch.Tensor, logs: torch.Tensor, mask: torch.Tensor | None,
        pitch: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For a harmonic decoder: latent channel 0 := the audio's YIN pitch (:func:`dac_vae.pitch.pitch_to_latent`),
        posterior std ``pitch_std``. A pitch read off the latent costs nothing to learn; a pitch head
        trained beside the mel loss did not learn in a short run."""
        if pitch is None:
            return mu, logs
        f0, aperiodicity = pitch
        f0 = fill_unvoiced(f0, aperiodicity < self.periodic_threshold)
        mu = torch.cat([pitch_to_latent(f0).to(mu).unsqueeze(1), mu[:, 1:]], dim=1)
        logs = torch.cat([torch.full_like(logs[:, :1], math.log(self.pitch_std)), logs[:, 1:]], dim=1)
        return apply_mask(mu, mask), apply_mask(logs, mask)

    def decode(
        self, z: torch.Tensor, latent_len: torch.Tensor | None = None, length: int | None = None, frame_offset: int = 0,
        **excitation: torch.Tensor,
    ) -> torch.Tensor:
        """``z`` ``[B, D, T]`` -> audio ``[B, T * hop]`` (or the first ``length`` samples).

        Frames past ``latent_len`` are ignored (decoded as if absent) and give zeros. ``frame_offset``:
        the index of ``z``'s first frame in its utterance, for a chunk decoded on its own
        (:mod:`dac_vae.streaming`); only a decoder whose output depends on absolute frame indices
        (the iSTFT head's phase advance) uses it.
        """
        z = self._decoder_input(z, latent_len)
        if excitation:  # a harmonic frame decoder's f0 / phase0, from a chunked decode
            audio = self.decoder(z, latent_len, frame_offset=frame_offset, **excitation)
        elif frame_offset:
            audio = self.decoder(z, latent_len, frame_offset=frame_offset)
        else:
            audio = self.decoder(z, latent_len)
        return audio if length is None else audio[..., :length]

    def pitch(self, z: torch.Tensor, latent_len: torch.Tensor | None = None) -> torch.Tensor:
        """The pitch ``[B, T]`` (Hz) a harmonic frame decoder will excite for latents ``z``."""
        return self.decoder.pitch(self._decoder_input(z, latent_len), latent_len)

    def _decoder_input(self, z: torch.Tensor, latent_len: torch.Tensor | None) -> torch.Tensor:
        if self.latent_norm:
            # Parameter-free LayerNorm over the latent dimension of each frame (DC-Speech-VAE).
            z = F.layer_norm(z.transpose(1, 2), (z.shape[1],)).transpose(1, 2)
        if latent_len is not None:
            z = apply_mask(z, lengths_to_mask(latent_len, z.shape[-1]))
        return z

    def sample_latent(self, mu: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
        """Training latent ``z = mu + exp(logs) ε`` (+ σ-VAE noise ``σ ε'``, ``σ ~ U(0, sigma_max)``)."""
        z = mu + torch.exp(logs) * torch.randn_like(mu)
        if self.sigma_max > 0:
            sigma = torch.rand(mu.shape[0], 1, 1, device=mu.device, dtype=mu.dtype) * self.sigma_max
            z = z + sigma * torch.randn_like(mu)
        return z

    def reconstruct(self, audio: torch.Tensor, audio_len: torch.Tensor | None = None) -> Reconstruction:
        """Encode, sample (``mu`` in eval mode), decode; output zeroed past each item's length."""
        mu, logs, latent_len = self.encode(audio, audio_len)
        z = self.sample_latent(mu, logs) if self.training else mu
        frames = None
        if self._frame_losses_on():
            rendered = self.decoder.render(self._decoder_input(z, latent_len), latent_len)
            out, frames = rendered.audio[..., : audio.shape[-1]], (rendered.log_mag, rendered.phase)
        else:
            out = self.decode(z, latent_len, length=audio.shape[-1])
        if audio_len is not None:
            out = out * lengths_to_mask(audio_len, out.shape[-1]).squeeze(1)
        return Reconstruction(out, mu, logs, latent_len, frames)

    def _frame_losses_on(self) -> bool:
        return self.training and (self.loss_weights["magnitude"] > 0 or self.loss_weights["phase"] > 0)

    # ----------------------------------------------------------------------------- training API
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Generator first: the trainer runs the groups in this order every iteration.

        Without a discriminator there is one group, ``generator``, trained on mel + KL alone."""
        generator = [*self.encoder.parameters(), *self.posterior.parameters(), *self.decoder.parameters()]
        if self.discriminator is None:  # GAN-free: reconstruction and KL only
            return {"generator": generator}
        return {"generator": generator, "discriminator": list(self.discriminator.parameters())}

    def forward(self, batch: Mapping[str, Any], group: str | None = None, step: int = 0) -> dict[str, torch.Tensor]:
        """One group's losses for ``batch`` (keys ``audio`` ``[B, S]``, ``audio_len`` ``[B]``).

        ``group=None`` gives the reconstruction objective only (mel, KL, dispersive): the loss of a
        plain autoencoder run, and a validation loss free of the adversarial game.
        """
        audio = batch["audio"]
        audio_len = batch.get("audio_len")
        if group == "generator":
            return self._generator_losses(audio, audio_len, step, adversarial=True)
        if group == "discriminator":
            return self._discriminator_losses(audio, audio_len, step)
        if group is None:
            return self._generator_losses(audio, audio_len, step, adversarial=False)
        raise ValueError(f"unknown parameter group {group!r}; expected 'generator', 'discriminator' or None")

    def kl_scale(self, step: int) -> float:
        """KL weight ramp: 0 at step 0, linear to 1 at ``kl_warmup_steps`` (so early latents carry
        information before the prior pulls them in; short CPU runs need it most)."""
        if self.kl_warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.kl_warmup_steps)

    def _adversarial_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start_step

    def _generator_losses(
        self, audio: torch.Tensor, audio_len: torch.Tensor | None, step: int, adversarial: bool
    ) -> dict[str, torch.Tensor]:
        rec = self.reconstruct(audio, audio_len)
        real = self._masked(audio, audio_len)
        w = self.loss_weights
        latent_mask = lengths_to_mask(rec.latent_len, rec.mu.shape[-1]).squeeze(1)
        terms = {
            "mel": self.mel_loss(rec.audio, real, audio_len),
            # the pitch channel is data, not a learned posterior: it has no KL
            "kl": gaussian_kl(rec.mu[:, int(self.pitch_latent):], rec.logs[:, int(self.pitch_latent):], latent_mask),
        }
        if w["dispersive"] > 0:
            terms["dispersive"] = dispersive_loss(rec.mu, latent_mask)
        if rec.frames is not None:
            n = latent_mask.shape[1] * self.hop
            target = self.decoder.spectral_target(F.pad(real, (0, max(0, n - real.shape[-1])))[..., :n])
            per_latent = rec.frames[0].shape[1] // latent_mask.shape[1]  # STFT frames per latent frame
            spectral = frame_spectral_losses(*rec.frames, target, latent_mask.repeat_interleave(per_latent, dim=1))
            terms.update({k: v for k, v in spectral.items() if w[k] > 0})
        if adversarial and self._adversarial_on(step):
            with _frozen(self.discriminator):
                fake_out = self.discriminator(rec.audio)
                with torch.no_grad():
                    real_out = self.discriminator(real)
            terms["adversarial"] = generator_adversarial_loss([o[-1] for o in fake_out])
            terms["feature"] = feature_matching_loss([o[:-1] for o in real_out], [o[:-1] for o in fake_out])
            self._fake_cache = (audio, step, rec.audio.detach())
        weights = {**w, "kl": w["kl"] * self.kl_scale(step)}
        loss = sum(weights[name] * value for name, value in terms.items())
        out = {name: value.detach() for name, value in terms.items()}
        with torch.no_grad():
            out["posterior_std"] = (torch.exp(rec.logs.float()) * latent_mask.unsqueeze(1)).sum() / (
                latent_mask.sum() * rec.mu.shape[1]
            ).clamp_min(1)
        out["loss"] = loss
        return out

    def _fake_for(self, audio: torch.Tensor, audio_len: torch.Tensor | None, step: int) -> torch.Tensor:
        """The generator call's reconstruction of this very batch and step, or a fresh one."""
        cache, self._fake_cache = self._fake_cache, None
        if cache is not None and cache[0] is audio and cache[1] == step:
            return cache[2]
        with torch.no_grad():
            return self.reconstruct(audio, audio_len).audio

    def _discriminator_losses(
        self, audio: torch.Tensor, audio_len: torch.Tensor | None, step: int
    ) -> dict[str, torch.Tensor]:
        if self.discriminator is None:
            raise ValueError("DACVAE has no discriminator: give one in the config to train")
        if not self._adversarial_on(step):
            self._fake_cache = None
            # Warm-up: the discriminator must not learn. A zero that touches every parameter gives
            # them exact zero gradients, so the trainer's backward and step stay uniform (with
            # AdamW, give the discriminator weight_decay 0 so the step leaves it exactly as is).
            zero = sum(p.reshape(-1)[0] for p in self.discriminator.parameters()) * 0.0
            return {"loss": zero}
        fake = self._fake_for(audio, audio_len, step)
        real_out = self.discriminator(self._masked(audio, audio_len))
        fake_out = self.discriminator(fake)
        loss = discriminator_loss([o[-1] for o in real_out], [o[-1] for o in fake_out])
        return {"loss": loss, "discriminator": loss.detach()}

    @staticmethod
    def _masked(audio: torch.Tensor, audio_len: torch.Tensor | None) -> torch.Tensor:
        if audio_len is None:
            return audio
        return audio * lengths_to_mask(audio_len, audio.shape[-1]).squeeze(1)

    @torch.no_grad()
    def media(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """First item of ``batch``: input and reconstruction (posterior mean) audio, mel images."""
        return reconstruction_media(self, batch, self.mel_loss)

    def remove_weight_norm(self) -> "DACVAE":
        """Fold weight norm into plain weights (inference speed); do it after loading a checkpoint."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self


def reconstruction_media(codec: nn.Module, batch: Mapping[str, Any], mel: MultiScaleMelLoss) -> dict[str, Any]:
    """A codec's logging media for the first item of ``batch`` (``audio [B, S]``, optional ``audio_len``):
    the input and its reconstruction (``codec.encode`` -> ``mu``, ``codec.decode``) as audio, and their
    log-mels (``mel``'s second-largest scale) as one figure (:func:`mel_figure`)."""
    audio = batch["audio"][:1]
    audio_len = batch.get("audio_len")
    n = int(audio_len[0]) if audio_len is not None else audio.shape[-1]
    audio = audio[:, :n]
    mu, _, latent_len = codec.encode(audio)
    recon = codec.decode(mu, latent_len, length=n)
    scale = len(mel.window_lengths) - 2
    mel_in, mel_out = mel.log_mel(audio, scale)[0], mel.log_mel(recon, scale)[0]
    return {
        "audio/input": (audio[0].float().cpu(), codec.sample_rate),
        "audio/reconstruction": (recon[0].float().cpu(), codec.sample_rate),
        "image/mel": mel_figure(mel_in.float().cpu(), mel_out.float().cpu()),
    }


def mel_figure(mel_in: torch.Tensor, mel_out: torch.Tensor):
    """A matplotlib figure with the input mel above the reconstruction's (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    lo, hi = float(mel_in.min()), float(mel_in.max())
    for i, (mel, title) in enumerate(((mel_in, "input"), (mel_out, "reconstruction"))):
        ax = fig.add_subplot(2, 1, i + 1)
        ax.imshow(mel.numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi, interpolation="none")
        ax.set_title(title)
        ax.set_ylabel("mel bin")
    fig.tight_layout()
    return fig
