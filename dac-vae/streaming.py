"""Chunked decoding: latents that arrive a chunk at a time -> audio equal to one whole-utterance decode.

Both decoders are convolutional with a bounded receptive field of ``C = decoder.context_frames()``
latent frames on each side. Frame ``f``'s samples are final once frames up to ``f + C`` are known;
they are decoded from a window holding ``C`` frames of context on each side (fewer only at the
utterance's true ends, where the whole decode sees the same zero padding), then trimmed. So the
concatenated chunks equal the whole decode up to float rounding, with no cross-fade. A decoder
whose output depends on absolute frame indices (the iSTFT head's phase advance) is told each
window's first frame index.

One :class:`ChunkedDecoder` per request holds that request's frames only: requests never share state.
"""

from __future__ import annotations

import torch
from torch import nn

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
        audio = self.codec.decode(window, n, frame_offset=lo)
        out = audio[..., (self._done - lo) * self.hop : (stop - lo) * self.hop]
        self._done = stop
        keep = max(0, stop - self.context)  # frames before this are never needed again
        self._frames = self._frames[..., keep - self._first :]
        self._first = keep
        return out
