"""Learnable speaker extractor (MiniMax-Speech style), trained jointly with the model that uses it.

Reference waveforms of any length -> log-mel -> conv blocks -> self-attention blocks -> masked
attentive statistics pooling -> ``dim``-d L2-normalised vector. The LM (and Stage 2) project that
vector to their own width; nothing model-specific lives here.

Padding never changes the result: only mel frames whose STFT window lies inside the valid
samples are used, features are zeroed on padded frames before every convolution (so a padded
item sees exactly the zeros an unpadded one sees from conv padding), attention ignores padded keys,
pooling ignores padded frames, and no layer mixes items of a batch (LayerNorm, never BatchNorm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speech.audio import MelSpectrogram
from speech.utils.mask import lengths_to_mask

__all__ = ["SpeakerExtractor", "pool_references"]


def pool_references(vectors: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of the L2-normalised vectors ``[N, D]`` sharing a group id ``index[N]``, renormalised: ``[G, D]``."""
    sums = vectors.new_zeros(num_groups, vectors.shape[-1]).index_add_(0, index, vectors)
    return F.normalize(sums, dim=-1)  # the norm of a mean is irrelevant once renormalised


class _ConvBlock(nn.Module):
    """Pre-norm residual 1-D convolution over time; input ``[B, T, C]``, padded frames zero."""

    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm(x)) * mask.unsqueeze(-1)  # zero padding frames before they enter the kernel
        y = self.conv(y.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(y)


class _AttentionBlock(nn.Module):
    """Pre-norm transformer encoder block; padded frames are masked out as keys."""

    def __init__(self, channels: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, channels))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(b, t, c)), p, self.training)
        return x + F.dropout(self.ffn(self.norm2(x)), p, self.training)


class SpeakerExtractor(nn.Module):
    """Reference audio ``[B, S]`` (+ lengths ``[B]``) -> speaker vector ``[B, dim]``, L2-normalised."""

    def __init__(
        self,
        sample_rate: int = 24000,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop_length: int = 256,
        channels: int = 256,
        conv_layers: int = 2,
        kernel_size: int = 5,
        attention_layers: int = 2,
        heads: int = 4,
        ffn_dim: int = 1024,
        dim: int = 192,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.dim = dim
        self.mel = MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        self.stem = nn.Conv1d(n_mels, channels, kernel_size, padding=kernel_size // 2)
        self.convs = nn.ModuleList(_ConvBlock(channels, kernel_size, dropout) for _ in range(conv_layers))
        self.attns = nn.ModuleList(_AttentionBlock(channels, heads, ffn_dim, dropout) for _ in range(attention_layers))
        self.norm = nn.LayerNorm(channels)
        self.pool_score = nn.Sequential(nn.Linear(channels, channels // 2), nn.Tanh(), nn.Linear(channels // 2, 1))
        self.proj = nn.Linear(2 * channels, dim)

    def _apply(self, fn, recurse=True):
        # ``.to(bfloat16)`` / ``.half()`` cast every buffer; the mel front end (filterbank, window)
        # stays fp32, as its STFT always runs in fp32.
        super()._apply(fn, recurse)
        self.mel.float()
        return self

    def valid_frames(self, wav_len: torch.Tensor) -> torch.Tensor:
        """Mel frames whose centred window ends inside the signal (so padding cannot reach them), >= 1.

        Frame ``t`` covers samples ``[t*hop - n_fft/2, t*hop + n_fft/2)``; the left edge is reflect-padded
        from the signal itself, the right edge must satisfy ``t*hop + n_fft/2 <= len``. Clips shorter
        than ``n_fft/2`` samples keep one frame (the only case where padding can matter).
        """
        return (torch.div(wav_len - self.n_fft // 2, self.hop_length, rounding_mode="floor") + 1).clamp_min(1)

    def forward(self, wav: torch.Tensor, wav_len: torch.Tensor | None = None) -> torch.Tensor:
        """``wav [B, S]`` at ``sample_rate``, ``wav_len [B]`` valid samples -> ``[B, dim]`` unit vectors."""
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav_len is None:
            wav_len = torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long, device=wav.device)
        mel = self.mel(wav)  # [B, n_mels, F], fp32
        n_frames = self.valid_frames(wav_len).clamp_max(mel.shape[-1])
        mask = lengths_to_mask(n_frames, mel.shape[-1])  # [B, F]
        m = mask.unsqueeze(1).to(mel.dtype)
        # Per-utterance mean normalisation of each mel channel removes recording gain / channel colour.
        mel = (mel - (mel * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)) * m
        x = self.stem(mel.to(self.stem.weight.dtype)).transpose(1, 2)  # [B, F, C]
        for block in self.convs:
            x = block(x, mask)
        for block in self.attns:
            x = block(x, mask)
        return self._pool(self.norm(x), mask)

    def _pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attentive statistics pooling over valid frames (weighted mean and std), in fp32."""
        score = self.pool_score(x).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        w = score.softmax(dim=-1).unsqueeze(-1)  # [B, F, 1], exactly 0 on padding
        x = x.float()
        mean = (w * x).sum(1)
        std = ((w * x.square()).sum(1) - mean.square()).clamp_min(1e-6).sqrt()
        stats = torch.cat([mean, std], dim=-1).to(self.proj.weight.dtype)
        return F.normalize(self.proj(stats).float(), dim=-1)

    def embed_references(self, wavs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Several 1-D clips of one speaker -> one ``[dim]`` vector (mean of their vectors, renormalised)."""
        if not wavs:
            raise ValueError("embed_references needs at least one reference clip")
        lens = torch.tensor([w.shape[-1] for w in wavs], dtype=torch.long, device=wavs[0].device)
        batch = nn.utils.rnn.pad_sequence([w.reshape(-1) for w in wavs], batch_first=True)
        vectors = self(batch, lens)
        return pool_references(vectors, torch.zeros_like(lens), 1)[0]
