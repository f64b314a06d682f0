"""Token encoder of Stage 2: FSQ speech tokens -> ``mu``, the latent-rate condition of the flow.

embedding -> look-ahead conv (each token sees the next ``look_ahead`` tokens) -> transformer blocks at
token rate -> upsample by ``token_latent_ratio`` (any integer) -> transformer blocks at latent rate ->
projection to the latent dimension. The structure follows CosyVoice2's upsampling encoder; positions
are rotary, attention goes through SDPA with boolean masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speech.flow.layers import MaskedConv1d, TransformerBlock, chunk_attention_mask, key_mask, rotary_tables
from speech.tokenizer.fsq import FSQEmbedding
from speech.utils.mask import lengths_to_mask

__all__ = ["TokenEncoder"]


class LookAhead(nn.Module):
    """Residual conv pair: a look-ahead conv over tokens ``i..i+k`` then a causal conv (kernel 3)."""

    def __init__(self, dim: int, look_ahead: int):
        super().__init__()
        self.ahead = MaskedConv1d(dim, dim, look_ahead + 1, mode="lookahead")
        self.back = MaskedConv1d(dim, dim, 3, mode="causal")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, N]``."""
        h = F.leaky_relu(self.ahead(x, mask), 0.01)
        return x + self.back(h, mask)


class TokenEncoder(nn.Module):
    """FSQ tokens ``[B, N]`` -> ``mu`` ``[B, out_dim, N * ratio]`` and its valid mask ``[B, N * ratio]``.

    ``fsq_levels`` (e.g. ``[3] * 8``, the S3Tokenizer v2 and own-tokenizer grid) embeds each id as the sum
    of its FSQ digits' embeddings (:class:`~speech.tokenizer.fsq.FSQEmbedding`), so ids that were rare in
    training still land near the ids they share digits with; ``id_table`` adds a per-id table on top.
    """

    def __init__(
        self,
        out_dim: int,
        token_latent_ratio: int,
        vocab_size: int = 6561,
        dim: int = 512,
        token_blocks: int = 6,
        latent_blocks: int = 4,
        heads: int = 8,
        head_dim: int | None = None,
        ffn_dim: int = 2048,
        look_ahead: int = 3,
        dropout: float = 0.1,
        chunk_size: int = 25,
        fsq_levels: list[int] | None = None,
        id_table: bool = False,
    ):
        super().__init__()
        if token_latent_ratio < 1 or int(token_latent_ratio) != token_latent_ratio:
            raise ValueError(f"token_latent_ratio must be a positive integer, got {token_latent_ratio!r}")
        self.out_dim, self.ratio, self.chunk_size = out_dim, int(token_latent_ratio), chunk_size
        head_dim = head_dim or dim // heads
        self.head_dim = head_dim
        if fsq_levels:  # ids embedded through their FSQ digits, shared across ids (+ a per-id table)
            self.embed = FSQEmbedding(fsq_levels, dim, per_id=id_table)
            if self.embed.num_embeddings != vocab_size:
                raise ValueError(f"fsq_levels {list(fsq_levels)} give {self.embed.num_embeddings} ids, "
                                 f"not vocab_size {vocab_size}")
        else:
            self.embed = nn.Embedding(vocab_size, dim)
        self.look_ahead = LookAhead(dim, look_ahead) if look_ahead > 0 else None
        self.token_blocks = nn.ModuleList(
            TransformerBlock(dim, heads, head_dim, ffn_dim, dropout) for _ in range(token_blocks)
        )
        # Nearest upsampling then a causal conv spanning two tokens' worth of frames smooths token edges.
        self.up_conv = MaskedConv1d(dim, dim, 2 * self.ratio + 1, mode="causal")
        self.latent_blocks = nn.ModuleList(
            TransformerBlock(dim, heads, head_dim, ffn_dim, dropout) for _ in range(latent_blocks)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor, chunk: int) -> torch.Tensor:
        """Run ``blocks`` on ``x`` ``[B, T, C]``; ``chunk > 0`` restricts attention to past chunks."""
        if not len(blocks):
            return x
        attn_mask = chunk_attention_mask(mask, chunk) if chunk > 0 else key_mask(mask)
        rope = rotary_tables(x.shape[1], self.head_dim, x.device)
        for block in blocks:
            x = block(x, attn_mask, rope)
        return x

    def forward(
        self, token: torch.Tensor, token_len: torch.Tensor, streaming: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode padded tokens; ``streaming`` trains/runs with chunk attention of ``chunk_size`` tokens."""
        N = token.shape[1]
        mask = lengths_to_mask(token_len, N)
        chunk = self.chunk_size if streaming else 0
        x = self.embed(token.clamp(0, self.embed.num_embeddings - 1)) * mask[..., None]
        if self.look_ahead is not None:
            x = self.look_ahead(x.transpose(1, 2), mask).transpose(1, 2)
        x = self._blocks(self.token_blocks, x, mask, chunk)
        # Upsample: every token becomes `ratio` frames; frame j belongs to token j // ratio.
        x = x.repeat_interleave(self.ratio, dim=1)
        lat_mask = mask.repeat_interleave(self.ratio, dim=1)
        x = x + self.up_conv(x.transpose(1, 2), lat_mask).transpose(1, 2)
        x = self._blocks(self.latent_blocks, x, lat_mask, chunk * self.ratio)
        mu = self.proj(self.norm(x)) * lat_mask[..., None]
        return mu.transpose(1, 2), lat_mask
