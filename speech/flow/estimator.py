"""Velocity estimators ``v(x_t, t | mu, spk, cond)`` for conditional flow matching.

Both take ``(x [B, D, T], mask [B, T], mu [B, Dm, T], t [B], spk [B, Ds] | None, cond [B, Dc, T] | None)``
and return ``[B, D, T]`` (zero on padded frames). Conditions enter as input channels
``[x, mu, spk broadcast over time, cond]``; a condition whose channel count is 0 is not used, a
``None`` condition with channels > 0 means "absent" and is read as zeros (that is what classifier-free
guidance feeds the unconditional branch). The YAML picks the class.

Two-time estimators (MeanFlow, :mod:`speech.flow.meanflow`): with ``interval_time=True`` both take a
second time ``r`` [B] and embed ``t`` as before plus the interval ``h = r - t`` through a second,
zero-initialised MLP, summed into the same time embedding. At ``h = 0`` (or ``r`` not given) the
output is the instantaneous velocity at ``t``, so a CFM checkpoint loaded into a two-time estimator
starts from exactly the CFM field (only the ``interval_mlp.*`` weights are new).

``time_scale`` multiplies the times before the sinusoidal embedding (1000, diffusion-step-like, by
default; a checkpoint is only valid with the scale it was trained with). MeanFlow trains on ``du/dt``,
which the top frequencies of a 1000-scaled embedding make ~20x larger than ``u`` at initialisation,
so MeanFlow from scratch uses a smaller scale (configs/*flow_meanflow.yaml).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speech.flow.layers import (
    Attention,
    FeedForward,
    MaskedConv1d,
    TransformerBlock,
    chunk_attention_mask,
    key_mask,
    rotary_tables,
    timestep_embedding,
)

__all__ = ["Estimator", "UNet1D", "DiT", "ChunkCache"]


class Estimator(nn.Module):
    """Plug point for flow estimators: records the channel layout of the inputs it concatenates.

    ``causal`` (False here) is True for an estimator whose frames, with ``streaming`` chunk
    attention, never depend on a later chunk: only such a model can be trained for or run streaming.
    """

    causal: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None,
        mu_channels: int | None,
        spk_channels: int,
        cond_channels: int | None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.mu_channels = in_channels if mu_channels is None else mu_channels
        self.spk_channels = spk_channels
        self.cond_channels = in_channels if cond_channels is None else cond_channels
        self.total_in = in_channels + self.mu_channels + spk_channels + self.cond_channels
        self.interval_mlp: nn.Module | None = None

    def _init_time(self, in_dim: int, out_dim: int, hidden: int, interval_time: bool, time_scale: float) -> None:
        """Time MLP ``emb(t) -> [B, out_dim]``, plus the zero-initialised interval MLP of two-time estimators."""
        self.time_in, self.time_scale = in_dim, time_scale
        self.time_mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        if interval_time:
            self.interval_mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
            nn.init.zeros_(self.interval_mlp[2].weight)
            nn.init.zeros_(self.interval_mlp[2].bias)

    @property
    def interval_time(self) -> bool:
        """True if this estimator takes the second time ``r`` (MeanFlow's average velocity over [t, r])."""
        return self.interval_mlp is not None

    def embed_time(self, t: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        """Time embedding ``[B, out_dim]`` of ``t``, plus that of ``h = r - t`` for two-time estimators."""
        emb = self.time_mlp(timestep_embedding(t, self.time_in, self.time_scale))
        if self.interval_mlp is not None and r is not None:
            emb = emb + self.interval_mlp(timestep_embedding(r - t, self.time_in, self.time_scale))
        elif r is not None:
            raise ValueError("this estimator takes one time; build it with interval_time=True for MeanFlow")
        return emb

    def _stack_inputs(
        self, x: torch.Tensor, mu: torch.Tensor | None, spk: torch.Tensor | None, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Concatenate ``[x, mu, spk, cond]`` along channels, reading missing conditions as zeros."""
        B, _, T = x.shape
        parts = [x]
        for value, channels, per_frame in (
            (mu, self.mu_channels, True),
            (spk, self.spk_channels, False),
            (cond, self.cond_channels, True),
        ):
            if channels == 0:
                continue
            if value is None:
                value = x.new_zeros(B, channels, T)
            elif not per_frame:
                value = value[:, :, None].expand(B, channels, T)
            parts.append(value.to(x.dtype))
        return torch.cat(parts, dim=1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor | None,
        t: torch.Tensor,
        spk: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        streaming: bool = False,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity ``[B, D, T]`` at ``x`` and flow time ``t`` ``[B]`` (average velocity over [t, r] if ``r``)."""
        raise NotImplementedError


class ChunkCache:
    """What earlier chunks of one streamed solve leave for the next (per request, never on a model).

    For every estimator evaluation of the ODE solve (the same sequence for each chunk) and every layer
    that looks back in time: the last ``k - 1`` input frames of a causal conv of kernel ``k``, and
    the keys/values of an attention. With chunk-causal attention and causal convs, a chunk's frames
    computed from these equal the ones a full recomputation over all earlier frames gives.
    """

    def __init__(self) -> None:
        self.store: dict[tuple[int, int], Any] = {}
        self.start = 0  # first frame of the chunk being solved
        self._eval = -1
        self._layer = 0

    def begin_chunk(self, start: int) -> None:
        """A new chunk starting at frame ``start``: its solve repeats the evaluation sequence."""
        self.start, self._eval = int(start), -1

    def next_eval(self) -> None:
        self._eval += 1
        self._layer = 0

    def slot(self) -> tuple[int, int]:
        self._layer += 1
        return (self._eval, self._layer)


# --------------------------------------------------------------------------------------------- U-Net


class ConvNormAct(nn.Module):
    """Masked conv (kernel 3) -> per-frame LayerNorm -> SiLU.

    A per-frame norm (not GroupNorm over time) keeps padded frames from changing the valid ones.
    SiLU rather than CosyVoice's Mish: as smooth, and ~4x cheaper forward + backward on CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "same"):
        super().__init__()
        self.conv = MaskedConv1d(in_channels, out_channels, 3, mode=mode)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.conv(x, mask)
        return F.silu(self.norm(h.transpose(1, 2)).transpose(1, 2))


class ResnetBlock(nn.Module):
    """Two conv blocks with the time embedding added in between, plus a 1x1 residual."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, mode: str = "same"):
        super().__init__()
        self.block1 = ConvNormAct(in_channels, out_channels, mode)
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels))
        self.block2 = ConvNormAct(out_channels, out_channels, mode)
        self.skip = nn.Conv1d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.time(t_emb)[:, :, None]
        return (self.block2(h, mask) + self.skip(x)) * mask[:, None, :].to(x.dtype)


class UNetStage(nn.Module):
    """A resnet block followed by transformer blocks (the CosyVoice2 decoder stage)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        n_blocks: int,
        heads: int,
        head_dim: int,
        ffn_mult: int,
        dropout: float,
        mode: str = "same",
    ):
        super().__init__()
        self.resnet = ResnetBlock(in_channels, out_channels, time_dim, mode)
        self.blocks = nn.ModuleList(
            TransformerBlock(out_channels, heads, head_dim, ffn_mult * out_channels, dropout) for _ in range(n_blocks)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, t_emb: torch.Tensor, attn_mask: torch.Tensor
    ) -> torch.Tensor:
        h = self.resnet(x, mask, t_emb).transpose(1, 2)
        for block in self.blocks:
            h = block(h, attn_mask)
        return h.transpose(1, 2) * mask[:, None, :].to(h.dtype)


class UNet1D(Estimator):
    """1-D U-Net with transformer blocks in every stage (CosyVoice2's flow decoder, latent-agnostic).

    ``channels`` lists the width per resolution; each level but the last halves the time axis
    (stride-2 conv), the decoder mirrors it with nearest upsampling + conv and skip connections.
    ``channels=[256]`` (one level, no downsampling) is the CosyVoice2 layout. ``causal`` makes every
    conv look only backwards, so with ``streaming`` chunk attention a frame never depends on a later
    chunk (then ``chunk_size`` must be a multiple of ``2 ** (levels - 1)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        mu_channels: int | None = None,
        spk_channels: int = 0,
        cond_channels: int | None = None,
        channels: tuple[int, ...] | list[int] = (256,),
        n_blocks: int = 4,
        num_mid_blocks: int = 12,
        heads: int = 8,
        head_dim: int = 64,
        ffn_mult: int = 4,
        dropout: float = 0.0,
        chunk_size: int = 50,
        causal: bool = False,
        interval_time: bool = False,
        time_scale: float = 1000.0,
    ):
        super().__init__(in_channels, out_channels, mu_channels, spk_channels, cond_channels)
        channels = list(channels)
        if not channels:
            raise ValueError("UNet1D needs at least one channel level")
        if causal and chunk_size % (1 << (len(channels) - 1)):
            raise ValueError(
                f"UNet1D: chunk_size {chunk_size} must be a multiple of 2^(levels-1) = {1 << (len(channels) - 1)}"
            )
        self.levels, self.chunk_size, self.causal = len(channels), chunk_size, bool(causal)
        mode = "causal" if causal else "same"
        time_dim = 4 * channels[0]
        self._init_time(channels[0], time_dim, time_dim, interval_time, time_scale)
        stage = lambda cin, cout: UNetStage(cin, cout, time_dim, n_blocks, heads, head_dim, ffn_mult, dropout, mode)  # noqa: E731
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = self.total_in
        for i, c in enumerate(channels):
            last = i == len(channels) - 1
            self.down.append(stage(prev, c))
            self.downsample.append(MaskedConv1d(c, c, 3, mode=mode, stride=1 if last else 2))
            prev = c
        self.mid = nn.ModuleList(stage(channels[-1], channels[-1]) for _ in range(num_mid_blocks))
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(channels))):
            c = channels[i]
            self.up.append(stage(2 * c, c))
            self.upsample.append(MaskedConv1d(c, channels[i - 1] if i > 0 else c, 3, mode=mode))
        self.final = ConvNormAct(channels[0], channels[0], mode)
        self.proj = nn.Conv1d(channels[0], self.out_channels, 1)

    def _attn_mask(self, mask: torch.Tensor, level: int, streaming: bool) -> torch.Tensor:
        if streaming and self.chunk_size > 0:
            return chunk_attention_mask(mask, max(self.chunk_size >> level, 1))
        return key_mask(mask)

    @property
    def supports_cache(self) -> bool:
        """A :class:`ChunkCache` streams this estimator: causal, one level (no stride-2 convs)."""
        return self.causal and self.levels == 1 and self.chunk_size > 0

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor | None,
        t: torch.Tensor,
        spk: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        streaming: bool = False,
        r: torch.Tensor | None = None,
        cache: ChunkCache | None = None,
    ) -> torch.Tensor:
        """``cache``: ``x`` holds only the new chunk's frames (all valid), earlier ones are in the cache."""
        if cache is not None:
            return self._forward_cached(x, mu, t, spk, cond, cache, r)
        h = self._stack_inputs(x, mu, spk, cond)
        t_emb = self.embed_time(t, r)
        skips, masks = [], []
        m = mask
        for level, (stage, down) in enumerate(zip(self.down, self.downsample, strict=True)):
            h = stage(h, m, t_emb, self._attn_mask(m, level, streaming))
            skips.append(h)
            masks.append(m)
            h = down(h, m)
            if down.stride[0] == 2:
                # Output j of a stride-2 conv is centred on input 2j: valid iff 2j < length.
                m = m[:, ::2]
        attn = self._attn_mask(m, self.levels - 1, streaming)
        for stage in self.mid:
            h = stage(h, m, t_emb, attn)
        for i, (stage, up) in enumerate(zip(self.up, self.upsample, strict=True)):
            level = self.levels - 1 - i
            m = masks[level]
            h = stage(torch.cat([h, skips[level]], dim=1), m, t_emb, self._attn_mask(m, level, streaming))
            if level > 0:  # back to the finer level: nearest x2, crop to its length, then conv
                h = up(h.repeat_interleave(2, dim=-1)[..., : skips[level - 1].shape[-1]], masks[level - 1])
            else:
                h = up(h, m)
        h = self.final(h, mask)
        return self.proj(h) * mask[:, None, :].to(h.dtype)

    # The same network on one new chunk, reading earlier chunks from the cache (supports_cache only).
    def _forward_cached(self, x, mu, t, spk, cond, cache: ChunkCache, r=None) -> torch.Tensor:
        if not self.supports_cache:
            raise ValueError("UNet1D: a chunk cache needs causal: true, one channel level and chunk_size > 0")
        cache.next_eval()
        h = self._stack_inputs(x, mu, spk, cond)
        t_emb = self.embed_time(t, r)
        h = self._stage_cached(self.down[0], h, t_emb, cache)
        skip = h
        h = self._conv_cached(self.downsample[0], h, cache)
        for stage in self.mid:
            h = self._stage_cached(stage, h, t_emb, cache)
        h = self._stage_cached(self.up[0], torch.cat([h, skip], dim=1), t_emb, cache)
        h = self._conv_cached(self.upsample[0], h, cache)
        return self.proj(self._cna_cached(self.final, h, cache))

    @staticmethod
    def _conv_cached(conv: MaskedConv1d, h: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        k = conv.kernel_size[0] - 1
        key = cache.slot()
        past = cache.store.get(key)
        if past is None:  # the first chunk: the causal zero padding
            past = h.new_zeros(h.shape[0], h.shape[1], k)
        full = torch.cat([past, h], dim=-1)
        cache.store[key] = full[..., full.shape[-1] - k :]
        return F.conv1d(full, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    def _cna_cached(self, cna: ConvNormAct, h: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        h = self._conv_cached(cna.conv, h, cache)
        return F.silu(cna.norm(h.transpose(1, 2)).transpose(1, 2))

    def _stage_cached(self, stage: UNetStage, h: torch.Tensor, t_emb: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        rb = stage.resnet
        y = self._cna_cached(rb.block1, h, cache) + rb.time(t_emb)[:, :, None]
        h = (self._cna_cached(rb.block2, y, cache) + rb.skip(h)).transpose(1, 2)
        for block in stage.blocks:
            h = self._attend_cached(block, h, cache)
        return h.transpose(1, 2)

    def _attend_cached(self, block: TransformerBlock, h: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        attn, (B, T, _) = block.attn, h.shape
        q, k, v = attn.qkv(block.norm1(h)).view(B, T, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        key = cache.slot()
        if key in cache.store:
            pk, pv = cache.store[key]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        cache.store[key] = (k, v)
        # chunk attention: query frame p sees key frame j iff j // chunk <= p // chunk (keys start at frame 0)
        q_chunk = (torch.arange(cache.start, cache.start + T, device=h.device) // self.chunk_size)[:, None]
        k_chunk = (torch.arange(k.shape[2], device=h.device) // self.chunk_size)[None, :]
        allowed = k_chunk <= q_chunk
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bool(allowed.all()) else allowed)
        h = h + block.drop(attn.out(o.transpose(1, 2).reshape(B, T, attn.heads * attn.head_dim)))
        return h + block.drop(block.ffn(block.norm2(h)))


# ------------------------------------------------------------------------------------------------ DiT


class DiTBlock(nn.Module):
    """Transformer block with adaptive LayerNorm-zero modulation by the time embedding (Peebles & Xie 2023)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads, head_dim, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None, :].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, attn_mask, rope)
        return x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)


class DiT(Estimator):
    """Diffusion transformer over frames: input projection + conv positions, adaLN-zero blocks, RoPE.

    ``causal`` makes the position convs look only backwards (chunk-causal with ``streaming``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        mu_channels: int | None = None,
        spk_channels: int = 0,
        cond_channels: int | None = None,
        dim: int = 512,
        depth: int = 12,
        heads: int = 8,
        head_dim: int = 64,
        ffn_mult: int = 4,
        conv_kernel: int = 31,
        dropout: float = 0.0,
        chunk_size: int = 50,
        causal: bool = False,
        interval_time: bool = False,
        time_scale: float = 1000.0,
    ):
        super().__init__(in_channels, out_channels, mu_channels, spk_channels, cond_channels)
        self.head_dim, self.chunk_size, self.causal = head_dim, chunk_size, bool(causal)
        self.inp = nn.Linear(self.total_in, dim)
        # Two grouped convs give relative position cues before attention (as in F5-TTS's input block).
        mode, groups = ("causal" if causal else "same"), (16 if dim % 16 == 0 else 1)
        self.pos1 = MaskedConv1d(dim, dim, conv_kernel, mode=mode, groups=groups)
        self.pos2 = MaskedConv1d(dim, dim, conv_kernel, mode=mode, groups=groups)
        self._init_time(dim, dim, dim, interval_time, time_scale)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, head_dim, ffn_mult * dim, dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, self.out_channels)
        for layer in (self.final_mod[1], self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.dim = dim

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor | None,
        t: torch.Tensor,
        spk: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        streaming: bool = False,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        T = x.shape[-1]
        fmask = mask[:, None, :].to(x.dtype)
        h = self.inp(self._stack_inputs(x, mu, spk, cond).transpose(1, 2)).transpose(1, 2)  # [B, C, T]
        h = h + self.pos2(F.silu(self.pos1(h, mask)), mask)
        h = (h * fmask).transpose(1, 2)
        c = self.embed_time(t, r)
        attn_mask = chunk_attention_mask(mask, self.chunk_size) if streaming and self.chunk_size > 0 else key_mask(mask)
        rope = rotary_tables(T, self.head_dim, x.device)
        for block in self.blocks:
            h = block(h, c, attn_mask, rope)
        shift, scale = self.final_mod(c)[:, None, :].chunk(2, dim=-1)
        out = self.proj(self.final_norm(h) * (1 + scale) + shift)
        return out.transpose(1, 2) * fmask
