"""Frame-rate encoder and decoder: ConvNeXt blocks at the latent rate, STFT in and inverse STFT out.

DAC's encoder and decoder run most of their layers at high sample rates, where small convolutions
and elementwise activations dominate CPU time (a tiny DAC encoder takes ~10x longer per step than
everything else). :class:`FrameEncoder` reads log-mel frames at a few sub-frames per latent frame
(stacked as channels, so timing detail finer than the latent hop survives) and works at the latent
rate from its first layer.

DAC's decoder upsamples with transposed convolutions and runs most of its residual units at high
sample rates: strong at full size, slow to learn on a CPU budget. This decoder does all of its work
at the latent frame rate (50 Hz for hop 480) and predicts one complex STFT frame per latent frame, or
``subframes`` of them (log-magnitude and phase), which an inverse STFT turns into ``hop`` samples — the
design of Vocos (Siuzdak 2023) and WavTokenizer. Per second of audio it costs a small fraction of the DAC decoder's
FLOPs, so short CPU runs see many more steps.

Same interfaces as :class:`dac_vae.model.Encoder` / :class:`dac_vae.model.Decoder` (``hop``, ``latent_dim``, ``forward(z,
latent_len)`` → ``[B, T * hop]``), so a config swaps one for the other with ``!new:``.

Framing: latent frame ``t`` stands for samples ``[t * hop, (t + 1) * hop)`` (the encoder's block),
so its STFT frame of ``n_fft`` samples is centred on that block, and overlap-add output is trimmed
to exactly ``T * hop`` samples. The overlap-add is normalised by the window envelope of each item's
own valid frames: a padded item in a batch decodes exactly as it would alone.

Receptive field (bounded, so streaming can decode chunks with finite context): each ConvNeXt
block sees ``kernel_size // 2`` frames on each side, the input conv as many, and a frame's samples
spread ``(n_fft - frame_hop) / 2`` samples beyond its block — see :meth:`FrameDecoder.context_frames`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from dac_vae.layers import apply_mask, lengths_to_mask
from dac_vae.pitch import harmonic_excitation, latent_to_pitch, pitch_to_latent, yin

__all__ = ["Rendered", "ConvNeXtBlock", "ISTFTHead", "block_istft", "FrameEncoder", "FrameDecoder"]


class Rendered(NamedTuple):
    """A frame decoder's output: audio ``[B, T * hop]`` and the log-magnitude and phase ``[B, T * subframes, F]``
    of the complex frames it overlap-added (what direct spectral losses compare)."""

    audio: torch.Tensor
    log_mag: torch.Tensor
    phase: torch.Tensor


class ConvNeXtBlock(nn.Module):
    """Depthwise conv → LayerNorm → pointwise MLP (GELU) → layer scale, added to the input."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7, layer_scale: float = 1e-2):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, intermediate_dim)
        self.pw2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, C, T]`` with padded frames zeroed; ``mask`` ``[B, 1, T]``."""
        y = self.dwconv(x).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return apply_mask(x + (self.gamma * y).transpose(1, 2), mask)


class ISTFTHead(nn.Module):
    """Hidden frames ``[B, C, T]`` → waveform ``[B, T * hop]`` through ``subframes`` complex STFT frames each.

    A linear layer predicts, per STFT frame, ``n_fft / 2 + 1`` log-magnitudes and as many phases; the
    magnitude is capped at ``max_magnitude`` (an exp can overflow early in training). Frames are
    inverse-FFT'd, Hann-windowed, overlap-added with ``frame_hop = hop / subframes`` and divided by the
    summed squared window of the item's valid frames (the least-squares inverse of a Hann-windowed STFT).
    ``subframes > 1`` trades frequency resolution for time resolution at the same output size (Vocos
    renders 24 kHz with a 10.7 ms hop; one frame per 20 ms latent smears onsets over its whole window).
    """

    def __init__(
        self, dim: int, hop: int, n_fft: int | None = None, max_magnitude: float = 100.0, phase_advance: bool = False,
        subframes: int = 1,
    ):
        super().__init__()
        self.phase_advance = bool(phase_advance)
        if subframes < 1 or hop % subframes:
            raise ValueError(f"subframes {subframes} must be >= 1 and divide the hop {hop}")
        self.hop, self.subframes = int(hop), int(subframes)
        self.frame_hop = self.hop // self.subframes
        n_fft = int(n_fft or 4 * self.frame_hop)
        if n_fft < self.frame_hop or (n_fft - self.frame_hop) % 2:
            raise ValueError(f"n_fft {n_fft} must be >= the frame hop {self.frame_hop} with n_fft - frame hop even")
        self.n_fft = n_fft
        self.n_freq = n_fft // 2 + 1
        self.proj = nn.Linear(dim, 2 * self.n_freq * self.subframes)
        self.log_max_magnitude = math.log(max_magnitude)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, frame_offset: int = 0) -> torch.Tensor:
        """``x`` ``[B, C, T]``, ``mask`` ``[B, 1, T]`` → audio ``[B, T * hop]`` (fp32); ``x``'s first frame
        is frame ``frame_offset`` of its utterance (a chunk decoded on its own)."""
        return self.render(x, mask, frame_offset)[0]

    def render(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, frame_offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio ``[B, T * hop]`` and the frames it was made of: log-magnitude and phase ``[B, T * subframes, F]``
        (the phase as predicted, before any wrap: what spectral losses compare)."""
        log_mag, phase = self.frames(x, frame_offset)
        frame_mask = None if mask is None else self.frame_mask(mask[:, 0])
        audio = self.istft(torch.polar(torch.exp(log_mag), phase), frame_mask)
        return audio, log_mag, phase

    def per_frame(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, T, subframes * K]`` (one row per latent frame) → ``[B, T * subframes, K]`` (one per STFT frame)."""
        b, t, _ = y.shape
        return y.reshape(b, t * self.subframes, -1)

    def frame_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Valid latent frames ``[B, T]`` → valid STFT frames ``[B, T * subframes]``."""
        return mask.repeat_interleave(self.subframes, dim=1)

    def frames(self, x: torch.Tensor, frame_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted log-magnitude (capped) and phase ``[B, T * subframes, F]`` (fp32)."""
        log_mag, phase = self.per_frame(self.proj(x.transpose(1, 2)).float()).chunk(2, dim=-1)
        log_mag = log_mag.clamp(max=self.log_max_magnitude)
        if self.phase_advance:
            phase = phase + self.advance(x.shape[-1] * self.subframes, x.device, offset=frame_offset * self.subframes)
        return log_mag, phase

    def analysis(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, T * hop]`` → complex frames ``[B, T * subframes, F]`` with this head's framing: the STFT that
        :meth:`istft` inverts exactly (Hann window, frame ``t`` centred on samples ``[t, t + 1) * frame_hop``)."""
        pad = (self.n_fft - self.frame_hop) // 2
        spec = torch.stft(
            F.pad(audio.float(), (pad, pad)), n_fft=self.n_fft, hop_length=self.frame_hop, window=self.window,
            center=False, return_complex=True,
        )
        return spec.transpose(1, 2)

    def advance(self, n_frames: int, device: torch.device, offset: int = 0) -> torch.Tensor:
        """``[T, F]`` phase of bin-centred sinusoids at STFT frames ``offset..offset+T-1``:
        ``2 pi k frame_hop t / n_fft``.

        A translation-invariant network outputs the same phase for the same local input; overlap-add
        needs frame ``t + 1`` to lead frame ``t`` by ``2 pi k frame_hop / n_fft`` in bin ``k``. Adding this
        reference (computed exactly in integers mod ``n_fft``) leaves the network the residual only.
        """
        t = torch.arange(offset, offset + n_frames, device=device).unsqueeze(1)
        k = torch.arange(self.n_freq, device=device).unsqueeze(0)
        return (2 * math.pi / self.n_fft) * ((k * t * self.frame_hop) % self.n_fft).float()

    def istft(self, spec: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Complex frames ``[B, T * subframes, n_fft / 2 + 1]`` → ``[B, T * hop]`` (:func:`block_istft`);
        ``frame_mask`` ``[B, T * subframes]``."""
        return block_istft(spec, self.window, self.frame_hop, frame_mask)


def block_istft(
    spec: torch.Tensor, window: torch.Tensor, hop: int, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Complex frames ``[B, T, n_fft / 2 + 1]`` → ``[B, T * hop]``; frame ``t`` centred on samples
    ``[t * hop, (t + 1) * hop)``; samples past the last valid frame's block are zero.

    Windowed overlap-add divided by the summed squared window of each item's valid frames: the
    least-squares inverse of a ``window``-ed STFT with the same framing (exact for a consistent
    spectrogram), and a padded item decodes exactly as it would alone.
    """
    n_fft = window.shape[0]
    b, t, _ = spec.shape
    frames = torch.fft.irfft(spec, n=n_fft, dim=-1) * window  # [B, T, n_fft]
    valid = torch.ones(b, t, device=spec.device, dtype=frames.dtype) if frame_mask is None else frame_mask.to(
        frames.dtype
    )
    frames = frames * valid.unsqueeze(-1)
    envelope = window.pow(2).unsqueeze(0).unsqueeze(-1) * valid.unsqueeze(1)  # [B, n_fft, T]
    out_len = (t - 1) * hop + n_fft
    fold = dict(output_size=(1, out_len), kernel_size=(1, n_fft), stride=(1, hop))
    audio = F.fold(frames.transpose(1, 2), **fold).reshape(b, out_len)
    norm = F.fold(envelope, **fold).reshape(b, out_len)
    trim = (n_fft - hop) // 2
    audio, norm = audio[:, trim : trim + t * hop], norm[:, trim : trim + t * hop]
    audio = audio / norm.clamp_min(1e-8)
    if frame_mask is None:
        return audio
    # Zero past each item's last valid block (its last frame spills into those samples).
    return audio * lengths_to_mask(valid.sum(1).long() * hop, audio.shape[-1])[:, 0]


class _ConvNeXtStack(nn.Module):
    """Input conv → LayerNorm → ConvNeXt blocks → LayerNorm, all at one frame rate, masked."""

    def __init__(self, in_channels: int, dim: int, intermediate_dim: int, num_layers: int, kernel_size: int,
                 layer_scale: float | None):
        super().__init__()
        self.embed = nn.Conv1d(in_channels, dim, kernel_size, padding=kernel_size // 2)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        scale = layer_scale if layer_scale is not None else 1.0 / max(1, num_layers)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, kernel_size, scale) for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = apply_mask(self.norm_in(self.embed(x).transpose(1, 2)).transpose(1, 2), mask)
        for block in self.blocks:
            x = block(x, mask)
        return apply_mask(self.norm_out(x.transpose(1, 2)).transpose(1, 2), mask)


class FrameEncoder(nn.Module):
    """Waveform ``[B, S]`` (S a multiple of the hop) → features ``[B, dim, S / hop]``.

    Log-mel frames every ``hop / subframes`` samples (window ``n_fft``, centred on their own
    sub-block, zero padding at both ends so a padded item sees what it would alone), ``subframes``
    of them stacked per latent frame, then a ConvNeXt stack at the latent rate. The latent heads live
    in :class:`dac_vae.model.GaussianPosterior`, as for the DAC encoder.
    """

    def __init__(
        self,
        strides: list[int] | tuple[int, ...] = (2, 3, 4, 4, 5),
        sample_rate: int = 24000,
        n_mels: int = 80,
        n_fft: int = 512,
        subframes: int = 4,
        dim: int = 256,
        intermediate_dim: int = 768,
        num_layers: int = 4,
        kernel_size: int = 7,
        layer_scale: float | None = None,
        pitch_features: bool = False,
        f0_min: float = 60.0,
        f0_max: float = 500.0,
    ):
        super().__init__()
        self.hop = math.prod(int(s) for s in strides)
        self.sample_rate = int(sample_rate)
        self.pitch_features = bool(pitch_features)
        self.f0_range = (float(f0_min), float(f0_max))
        if self.hop % subframes:
            raise ValueError(f"hop {self.hop} is not a multiple of subframes {subframes}")
        self.subframes = int(subframes)
        self.sub_hop = self.hop // self.subframes
        if n_fft < self.sub_hop or (n_fft - self.sub_hop) % 2:
            raise ValueError(f"n_fft {n_fft} must be >= hop/subframes {self.sub_hop} with n_fft - hop/subframes even")
        self.n_fft = int(n_fft)
        fb = torchaudio.functional.melscale_fbanks(
            n_freqs=n_fft // 2 + 1, f_min=0.0, f_max=sample_rate / 2, n_mels=n_mels, sample_rate=sample_rate,
            norm="slaney", mel_scale="slaney",
        )
        self.register_buffer("fb", fb, persistent=False)  # [F, n_mels]
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        in_channels = n_mels * subframes + (2 if self.pitch_features else 0)
        self.stack = _ConvNeXtStack(in_channels, dim, intermediate_dim, num_layers, kernel_size, layer_scale)
        self.out_channels = int(dim)

    def features(self, wav: torch.Tensor, pitch: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``[B, S]`` → stacked log-mel ``[B, n_mels * subframes, S / hop]`` (fp32), + pitch features.

        ``pitch``: ``yin(wav)`` over this encoder's ``f0_range`` when the caller has it already."""
        pad = (self.n_fft - self.sub_hop) // 2
        spec = torch.stft(
            F.pad(wav.float(), (pad, pad)), n_fft=self.n_fft, hop_length=self.sub_hop, window=self.window,
            center=False, return_complex=True,
        ).abs()  # [B, F, S / sub_hop]
        mel = torch.matmul(spec.transpose(1, 2), self.fb).clamp_min(1e-5).log()  # [B, S / sub_hop, n_mels]
        b, n, m = mel.shape
        feats = mel.reshape(b, n // self.subframes, self.subframes * m).transpose(1, 2)
        if not self.pitch_features:
            return feats
        # Pitch read off a log-mel by a small network is slow to learn; YIN gives it for free.
        if pitch is None:
            pitch = yin(wav.float(), self.sample_rate, self.hop, f0_min=self.f0_range[0], f0_max=self.f0_range[1])
        f0, aperiodicity = pitch
        log_f0 = pitch_to_latent(f0) * (1 - aperiodicity)  # ~unit scale, 0 when aperiodic
        return torch.cat([feats, log_f0.unsqueeze(1), aperiodicity.unsqueeze(1)], dim=1)

    def forward(
        self, wav: torch.Tensor, latent_len: torch.Tensor | None = None,
        pitch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``wav`` ``[B, S]`` zero past each item's length; ``latent_len`` ``[B]`` (None: all valid);
        ``pitch`` as in :meth:`features`."""
        x = self.features(wav, pitch).to(wav.dtype)
        mask = None if latent_len is None else lengths_to_mask(latent_len, x.shape[-1])
        return self.stack(apply_mask(x, mask), mask)


class FrameDecoder(nn.Module):
    """Latent ``[B, D, T]`` → waveform ``[B, T * hop]``: all layers at the latent frame rate.

    ``strides`` only fixes the hop (their product), so a config names the same strides as the
    encoder. In eval mode the output is clamped to [-1, 1] (the DAC decoder's tanh range).
    """

    def __init__(
        self,
        strides: list[int] | tuple[int, ...] = (2, 3, 4, 4, 5),
        latent_dim: int = 80,
        dim: int = 384,
        intermediate_dim: int = 1152,
        num_layers: int = 8,
        kernel_size: int = 7,
        n_fft: int | None = None,
        layer_scale: float | None = None,
        phase_advance: bool = False,
        harmonic: bool = False,
        sample_rate: int = 24000,
        f0_min: float = 60.0,
        f0_max: float = 500.0,
        subframes: int = 1,
    ):
        super().__init__()
        self.hop = math.prod(int(s) for s in strides)
        self.latent_dim = int(latent_dim)
        self.kernel_size = int(kernel_size)
        self.num_layers = int(num_layers)
        self.stack = _ConvNeXtStack(latent_dim, dim, intermediate_dim, num_layers, kernel_size, layer_scale)
        self.head = ISTFTHead(dim, self.hop, n_fft, phase_advance=phase_advance, subframes=subframes)
        self.harmonic = bool(harmonic)
        self.sample_rate = int(sample_rate)
        self.f0_range = (float(f0_min), float(f0_max))
        if self.harmonic:
            # Source-filter branch: a log gain per bin for the spectrum of an excitation at the pitch
            # that latent channel 0 carries (see pitch_from_latent).
            self.gain_proj = nn.Linear(dim, self.head.n_freq * self.head.subframes)
            # The excitation's frames are scaled to ~1 per bin (unit white noise would give exactly 1),
            # so a zero-initialised gain starts the comb at the free frames' level.
            nn.init.zeros_(self.gain_proj.weight)
            nn.init.zeros_(self.gain_proj.bias)
            self.excitation_scale = float(self.head.window.pow(2).sum().rsqrt())

    def context_frames(self) -> int:
        """Latent frames on each side that can change one frame's samples (the receptive field).

        A harmonic decoder reaches two frames further (its excitation's frames are analysed with the
        same spill, from samples whose pitch is interpolated between frames). Its excitation phase
        integrates the pitch from the utterance's start, so a pitch change also shifts later phases:
        :class:`dac_vae.streaming.ChunkedDecoder` carries that phase as state."""
        half = self.kernel_size // 2
        spill = math.ceil((self.head.n_fft - self.head.frame_hop) / 2 / self.hop)
        return half * (self.num_layers + 1) + spill + (2 if self.harmonic else 0)

    def forward(
        self, z: torch.Tensor, latent_len: torch.Tensor | None = None, frame_offset: int = 0,
        phase0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z`` ``[B, D, T]`` with padded frames zeroed → ``[B, T * hop]`` (zero past ``latent_len * hop``).

        ``frame_offset``: index of ``z``'s first frame in the utterance (the phase advance needs it).
        Harmonic decoders: ``phase0`` ``[B]`` (radians) starts the excitation phase (chunked decoding)."""
        audio = self.render(z, latent_len, frame_offset, phase0).audio
        # Clamped to the waveform range at inference only: a clamp would zero training gradients.
        return (audio if self.training else audio.clamp(-1.0, 1.0)).to(z.dtype)

    def render(
        self, z: torch.Tensor, latent_len: torch.Tensor | None = None, frame_offset: int = 0,
        phase0: torch.Tensor | None = None,
    ) -> "Rendered":
        """Unclamped audio plus the frames it was made of (see :class:`Rendered`).

        A harmonic decoder adds ``gain * STFT(excitation)``: a harmonic comb at the pitch in latent
        channel 0 (:meth:`pitch`), whose phase starts at ``phase0``, shaped by a predicted gain per bin."""
        mask = None if latent_len is None else lengths_to_mask(latent_len, z.shape[-1])
        h = self.stack(z, mask)
        if not self.harmonic:
            return Rendered(*self.head.render(h, mask, frame_offset))
        log_mag, phase = self.head.frames(h, frame_offset)
        pitch = self.pitch(z)
        if latent_len is not None:  # as alone: the pitch held past the last frame, silence past the end
            last = (latent_len - 1).clamp(min=0).unsqueeze(1)
            pitch = pitch.gather(1, torch.minimum(torch.arange(pitch.shape[1], device=z.device).unsqueeze(0), last))
        excitation = harmonic_excitation(pitch, self.hop, self.sample_rate, phase0)
        if latent_len is not None:
            excitation = excitation * lengths_to_mask(latent_len * self.hop, excitation.shape[-1])[:, 0]
        gain = self.head.per_frame(self.gain_proj(h.transpose(1, 2)).float())
        gain = gain.clamp(max=self.head.log_max_magnitude).exp()
        spec = torch.polar(torch.exp(log_mag), phase) + (gain * self.excitation_scale) * self.head.analysis(excitation)
        audio = self.head.istft(spec, None if mask is None else self.head.frame_mask(mask[:, 0]))
        return Rendered(audio, spec.abs().clamp_min(1e-5).log(), torch.angle(spec))

    def pitch(self, z: torch.Tensor, latent_len: torch.Tensor | None = None) -> torch.Tensor:
        """The pitch ``[B, T]`` (Hz, fp32) a harmonic decoder excites for latents ``z``: channel 0 read
        as ``log f0 = log 150 + 0.5 z`` (:func:`dac_vae.pitch.pitch_to_latent`), clamped to the range.

        Frame ``t``'s pitch depends on latent frame ``t`` alone: chunked decoding needs no extra context."""
        if not self.harmonic:
            raise TypeError("pitch() needs a harmonic FrameDecoder")
        return latent_to_pitch(z[:, 0].float(), *self.f0_range)

    def spectral_target(self, audio: torch.Tensor) -> torch.Tensor:
        """Complex frames of real audio with the decoder's own framing (targets of spectral losses)."""
        return self.head.analysis(audio)
