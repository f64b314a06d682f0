"""Chunked decoding: latents that arrive a chunk at a time -> audio equal to one whole-utterance decode.

Both decoders are convolutional with a bounded receptive field of ``C = decoder.context_frames()``
latent frames on each side. Frame ``f``'s samples are final once frames up to ``f + C`` are known;
they are decoded from a window holding ``C`` frames of context on each side (fewer only at the
utterance's true ends, where the whole decode sees the same zero padding), then trimmed. So the
concatenated chunks equal the whole decode up to float rounding, with no cross-fade. A decoder
whose output depends on absolute frame indices (the iSTFT head's phase advance) is told each
window's first frame index.

A harmonic frame decoder's excitation phase integrates its pitch from the utterance's start, which
no finite window sees: :class:`_PitchState` carries it from window to window.

One :class:`ChunkedDecoder` per request holds that request's frames only: requests never share state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dac_vae.pitch import per_sample_f0

__all__ = ["ChunkedDecoder", "context_frames"]


def context_frames(codec: nn.Module) -> int:
    """Latent frames of context each side the codec's decoder needs for an exact chunked decode."""
    decoder = getattr(codec, "decoder", codec)
    if not hasattr(decoder, "context_frames"):
        raise TypeError(f"{type(decoder).__name__} has no context_frames(): its receptive field is unknown")
    return int(decoder.context_frames())


class ChunkedDecoder:
    """``push(z)`` latent chunks ``[B, D, n]`` -> the audio ``[B, k * hop]`` that is final so far;
    ``flush()`` at the end of the utterance -> the rest. The audio returned by all calls,
    concatenated, equals ``codec.decode(z_all, latent_len)`` of the whole utterance."""

    def __init__(self, codec: nn.Module, context: int | None = None):
        self.codec = codec
        self.context = context_frames(codec) if context is None else int(context)
        self.hop = int(codec.hop)
        self._frames: torch.Tensor | None = None  # kept frames [B, D, n], the first is frame self._first
        self._first = 0
        self._total = 0  # frames pushed
        self._done = 0  # frames whose audio was returned
        decoder = getattr(codec, "decoder", codec)
        self._pitch = _PitchState(codec, decoder) if getattr(decoder, "harmonic", False) else None

    def push(self, z: torch.Tensor) -> torch.Tensor:
        """Append latent frames; return the audio of every frame with ``context`` frames known after it."""
        self._frames = z if self._frames is None else torch.cat([self._frames, z], dim=-1)
        self._total += z.shape[-1]
        return self._decode(self._total - self.context)

    def flush(self) -> torch.Tensor:
        """The utterance ended: the audio of every frame not yet returned."""
        return self._decode(self._total)

    def _decode(self, stop: int) -> torch.Tensor:
        if self._frames is None or stop <= self._done:
            b = 0 if self._frames is None else self._frames.shape[0]
            return torch.zeros(b, 0)
        lo = max(0, self._done - self.context)
        hi = min(self._total, stop + self.context)
        window = self._frames[..., lo - self._first : hi - self._first]
        n = torch.full((window.shape[0],), window.shape[-1], dtype=torch.long, device=window.device)
        keep = max(0, stop - self.context)  # frames before this are never needed again (the next lo)
        excitation = {} if self._pitch is None else self._pitch.window(window, n, lo, keep)
        audio = self.codec.decode(window, n, frame_offset=lo, **excitation)
        out = audio[..., (self._done - lo) * self.hop : (stop - lo) * self.hop]
        self._done = stop
        self._frames = self._frames[..., keep - self._first :]
        self._first = keep
        return out


class _PitchState:
    """The integrated excitation phase of a harmonic frame decoder across chunk windows.

    Frame ``t``'s pitch depends on latent frame ``t`` only, so every window sees the whole decode's
    pitch; only the phase, integrated from the utterance's start, must be carried. With
    ``S(c) = 2 pi sum_{j < c hop + hop // 2} f_j / sr`` (the whole decode's phase just before frame
    ``c``'s centre sample), a window starting at frame ``lo`` is decoded with ``phase0 = S(lo)`` minus
    what its own first half-block adds: from frame ``lo``'s centre on, its per-sample pitch equals the
    whole decode's (both interpolate the same frame pitches), so its phase does too.
    """

    def __init__(self, codec: nn.Module, decoder: nn.Module):
        self.codec = codec
        self.hop = int(codec.hop)
        self.sample_rate = int(decoder.sample_rate)
        self._anchor = 0  # frame c with S(c) known
        self._phase: torch.Tensor | None = None  # S(self._anchor), float64 [B]

    def window(self, z: torch.Tensor, n: torch.Tensor, lo: int, next_lo: int) -> dict:
        """``decode`` keywords for the window of frames ``[lo, lo + z.shape[-1])``; advances the phase
        to ``next_lo``, the next window's first frame."""
        track = self.codec.pitch(z, n).double()  # [B, W]
        per_sample = per_sample_f0(track, self.hop) * (2 * math.pi / self.sample_rate)
        half = self.hop // 2
        if lo == 0:
            phase0 = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
            self._anchor, self._phase = 0, per_sample[:, :half].sum(-1)
        else:
            if self._anchor != lo:
                raise RuntimeError(f"excitation phase known at frame {self._anchor}, window starts at {lo}")
            phase0 = self._phase - per_sample[:, :half].sum(-1)
        if next_lo > self._anchor:
            self._phase = self._phase + per_sample[:, half : (next_lo - lo) * self.hop + half].sum(-1)
            self._anchor = next_lo
        return {"phase0": phase0}
