"""Supervised FSQ speech tokenizer: audio -> 25 Hz discrete tokens that carry the spoken content.

The S3Tokenizer recipe, trained from transcripts instead of loaded from weights::

    audio [B, S] --Whisper-style log-mel (100 Hz, 128 bins)--> conv subsampling x4 (25 Hz)
        --> pre-quantiser blocks --> FSQ (8 x 3 levels = 6561 ids) --> post-quantiser blocks
        --> CTC head over the text vocabulary (+ blank); optional mel-reconstruction head

Blocks: pre-norm self-attention (SDPA, rotary positions) + optional depthwise-conv module + MLP.
CTC makes the quantised frames carry what is said (ASR supervision); the FSQ bottleneck keeps only
``log2(6561) ~ 12.7`` bits per frame. An optional intermediate CTC on the pre-quantiser features
speeds up learning. The mel-reconstruction head makes tokens keep acoustics beyond the text; with
``mel_voice`` it also sees the utterance's long-term spectrum (log-mel mean and std), so the tokens
need not spend codes on the voice, which makes them easier for the LM to predict. Only the part up
to FSQ is needed to tokenize.

Token count for ``n`` samples at rate ``sr`` (``sr`` a multiple of 100): ``ceil(n * 25 / sr)``,
i.e. ``ceil(duration * 25)``, for every input length.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.functional import edit_distance

from speech.audio import MelSpectrogram
from speech.tokenizer.fsq import FSQ, codebook_stats
from speech.utils.mask import lengths_to_mask, masked_mean

__all__ = [
    "WhisperLogMel", "ConvSubsampling", "ConvModule", "EncoderBlock", "SpecAugment", "FSQTokenizerModel",
    "ctc_greedy_decode",
]

MEL_RATE = 100  # Whisper frame rate: 10 ms hop
SUBSAMPLING = 4  # two stride-2 convolutions: 100 Hz -> 25 Hz
TOKEN_RATE = MEL_RATE // SUBSAMPLING
MAX_TRACKED_CODES = 1 << 20  # larger codebooks are not histogrammed per batch (usage stats left out)


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a + (b - 1), b, rounding_mode="floor")


class WhisperLogMel(nn.Module):
    """Whisper's log-mel features computed at the input sample rate, batch-invariant.

    Same time-frequency layout as Whisper (16 kHz, n_fft 400, hop 160, 128 slaney mel bins up to
    8 kHz, power spectrum, log10, 8-decade dynamic range, ``(x + 4) / 4``), with the window and hop
    scaled to the input rate (25 ms Hann window, 10 ms hop: n_fft 600 / hop 240 at 24 kHz), so
    24 kHz audio needs no resampling and 16 kHz input reproduces Whisper's filterbank exactly.
    Two deliberate differences, both for exact batch invariance: frames are centred with zero
    padding (not reflection), giving ``ceil(n / hop)`` frames for ``n`` samples, and the dynamic-range
    floor uses each item's maximum over its own valid frames.
    """

    def __init__(self, sample_rate: int = 24000, n_mels: int = 128, f_max: float = 8000.0):
        super().__init__()
        if sample_rate % MEL_RATE:
            raise ValueError(f"sample_rate must be a multiple of {MEL_RATE} Hz for a 10 ms hop, got {sample_rate}")
        if f_max > sample_rate / 2:
            raise ValueError(f"f_max {f_max} is above the Nyquist frequency of {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.hop_length = sample_rate // MEL_RATE
        self.n_fft = sample_rate // 40  # 25 ms
        self.n_mels = n_mels
        self.mel = MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=n_mels,
            f_max=f_max,
            power=2.0,
            center=False,
            floor=1e-10,
        )

    def frames(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Number of mel frames for ``n_samples`` samples: ``ceil(n / hop)``."""
        return _ceil_div(n_samples, self.hop_length)

    def forward(self, wav: torch.Tensor, wav_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wav [B, S]``, ``wav_len [B]`` -> ``mel [B, n_mels, ceil(S / hop)]``, ``mel_len [B]``."""
        n_frames = max(1, -(-wav.shape[-1] // self.hop_length))  # >= 1 frame so empty input is valid
        # Frame t covers samples [t*hop - n_fft/2, t*hop + n_fft/2): pad so exactly n_frames fit.
        left = self.n_fft // 2
        right = (n_frames - 1) * self.hop_length + self.n_fft - left - wav.shape[-1]
        mel = self.mel(F.pad(wav, (left, right)))  # natural log of the power mel
        mel = mel * (1.0 / math.log(10.0))
        mel_len = self.frames(wav_len)
        valid = lengths_to_mask(mel_len, mel.shape[-1]).unsqueeze(1)
        peak = mel.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        mel = torch.maximum(mel, peak - 8.0)
        mel = (mel + 4.0) / 4.0
        return mel.masked_fill(~valid, 0.0), mel_len


def utterance_mel_stats(mel: torch.Tensor, mel_len: torch.Tensor) -> torch.Tensor:
    """Mean and std over each item's valid frames of ``mel [B, M, T]`` -> ``[B, 2M]``: its long-term spectrum."""
    mask = lengths_to_mask(mel_len, mel.shape[-1]).unsqueeze(1)
    mean = masked_mean(mel, mask, dim=-1)
    var = masked_mean((mel - mean[..., None]) ** 2, mask, dim=-1)
    return torch.cat([mean, var.clamp_min(1e-8).sqrt()], dim=-1)


class ConvSubsampling(nn.Module):
    """Two stride-2 convolutions (kernel 3): ``[B, C, T]`` at 100 Hz -> ``[B, T', D]`` at 25 Hz.

    ``T' = ceil(T / 4)``. Padded frames are zeroed before each convolution so a padded item gives
    the same result as the item alone.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, dim, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, C, T]``, ``lengths [B]`` -> ``[B, ceil(T/4), D]``, ``ceil(lengths / 4)``."""
        for conv in (self.conv1, self.conv2):
            x = x * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
            x = F.gelu(conv(x))
            lengths = _ceil_div(lengths, 2)
        return x.transpose(1, 2), lengths


def _rotary(
    positions: int, head_dim: int, device: torch.device, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[T, head_dim]`` for rotary position embeddings (Su et al., 2021, RoFormer)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(positions, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(i, i + d/2)`` of ``x [B, H, T, d]`` by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class ConvModule(nn.Module):
    """Depthwise convolution over time (Conformer-style local context, Gulati et al., 2020)."""

    def __init__(self, dim: int, kernel_size: int, dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (centred), got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pointwise = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D]``, ``frame_mask [B, T, 1]``: padded frames are zeroed so they never leak in."""
        h = (self.norm(x) * frame_mask).transpose(1, 2)
        h = F.gelu(self.depthwise(h)).transpose(1, 2)
        return self.drop(self.pointwise(h))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: rotary self-attention (SDPA, key padding mask), optional
    depthwise-conv module, GELU MLP."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0, conv_kernel: int = 0):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even size")
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.conv = ConvModule(dim, conv_kernel, dropout) if conv_kernel > 0 else None
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x [B, T, D]``; ``key_mask [B, 1, 1, T]`` True = valid frame; ``rope`` cos/sin ``[T, D/H]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _apply_rotary(q, *rope), _apply_rotary(k, *rope)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, t, d)))
        if self.conv is not None:
            x = x + self.conv(x, key_mask[:, 0, 0, :, None].to(x.dtype))
        return x + self.drop(self.ffn(self.norm2(x)))


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks. ``[B, T, V]`` -> id lists.

    The keep-mask is built on the device; one transfer to the host at the end.
    """
    best = log_probs.argmax(dim=-1)
    prev = F.pad(best[:, :-1], (1, 0), value=blank)
    keep = (best != blank) & (best != prev) & lengths_to_mask(lengths, best.shape[1])
    best, keep = best.cpu(), keep.cpu()
    return [row[k].tolist() for row, k in zip(best, keep)]


class SpecAugment(nn.Module):
    """Random frequency and time masks on ``[B, C, T]`` features in training (Park et al., 2019).

    Masks are drawn per item with tensor ops only (no host sync); time-mask widths scale with each
    item's valid length.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 20, time_masks: int = 2, time_width: float = 0.05):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _spans(n: int, size: int, max_width: torch.Tensor, limit: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``[B, size]`` bool: union of ``n`` random spans, width < max_width, start < limit - width."""
        batch = max_width.shape[0]
        out = torch.zeros(batch, size, dtype=torch.bool, device=device)
        steps = torch.arange(size, device=device)
        for _ in range(n):
            width = (torch.rand(batch, device=device) * (max_width + 1)).floor()
            start = (torch.rand(batch, device=device) * (limit - width).clamp_min(0)).floor()
            out |= (steps >= start[:, None]) & (steps < (start + width)[:, None])
        return out

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero the masked bands and spans of ``x [B, C, T]`` (the features' mean is ~0 after scaling)."""
        if not self.training:
            return x
        batch, channels, frames = x.shape
        full = torch.full((batch,), float(channels), device=x.device)
        freq = self._spans(self.freq_masks, channels, full.new_full((batch,), float(self.freq_width)), full, x.device)
        lens = lengths.float()
        time = self._spans(self.time_masks, frames, (lens * self.time_width).floor(), lens, x.device)
        return x.masked_fill(freq[:, :, None] | time[:, None, :], 0.0)


class FSQTokenizerModel(nn.Module):
    """S3Tokenizer-style supervised FSQ tokenizer; ``forward(batch)`` returns named losses and stats.

    Batch keys: ``audio [B, S]`` float at ``sample_rate``, ``audio_len [B]``, ``text_token [B, L]``
    ids in ``[0, vocab_size)`` (BPE or characters), ``text_token_len [B]``. The CTC blank is the
    extra id ``vocab_size``. ``ctc_upsample`` > 1 lets the CTC head emit that many frames per token
    (helps character targets at 25 Hz); the tokens stay at 25 Hz.
    """

    def __init__(
        self,
        vocab_size: int,
        sample_rate: int = 24000,
        n_mels: int = 128,
        dim: int = 512,
        heads: int = 8,
        ffn_dim: int = 2048,
        pre_blocks: int = 6,
        post_blocks: int = 6,
        levels: Sequence[int] = (3,) * 8,
        dropout: float = 0.1,
        conv_kernel: int = 0,
        ctc_upsample: int = 1,
        ctc_weight: float = 1.0,
        inter_ctc_weight: float = 0.0,
        mel_weight: float = 0.0,
        mel_voice: bool = False,
        spec_augment: SpecAugment | None = None,
    ):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if ctc_upsample < 1:
            raise ValueError(f"ctc_upsample must be >= 1, got {ctc_upsample}")
        self.vocab_size = vocab_size
        self.blank = vocab_size
        self.sample_rate = sample_rate
        self.token_rate = TOKEN_RATE
        self.ctc_upsample = ctc_upsample
        self.ctc_weight = ctc_weight
        self.inter_ctc_weight = inter_ctc_weight
        self.mel_weight = mel_weight
        self.frontend = WhisperLogMel(sample_rate, n_mels)
        self.spec_augment = spec_augment
        self.subsample = ConvSubsampling(n_mels, dim)
        self.pre = nn.ModuleList(EncoderBlock(dim, heads, ffn_dim, dropout, conv_kernel) for _ in range(pre_blocks))
        self.fsq = FSQ(levels)
        self.pre_norm = nn.LayerNorm(dim)
        self.to_code = nn.Linear(dim, self.fsq.dim)
        self.from_code = nn.Linear(self.fsq.dim, dim)
        self.post = nn.ModuleList(EncoderBlock(dim, heads, ffn_dim, dropout, conv_kernel) for _ in range(post_blocks))
        self.post_norm = nn.LayerNorm(dim)
        self.ctc_head = nn.Linear(dim, ctc_upsample * (vocab_size + 1))
        self.inter_norm = nn.LayerNorm(dim) if inter_ctc_weight > 0 else None
        self.mel_head = nn.Linear(dim, SUBSAMPLING * n_mels) if mel_weight > 0 else None
        # the utterance's long-term spectrum (mean and std of its log-mel) for the mel head only
        self.mel_voice = nn.Linear(2 * n_mels, dim) if mel_weight > 0 and mel_voice else None
        self.heads = heads
        self._targets_checked = False

    @property
    def codebook_size(self) -> int:
        """Number of distinct token ids (``prod(levels)``)."""
        return self.fsq.codebook_size

    def token_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Tokens for ``n_samples`` samples: ``ceil(n * 25 / sample_rate)`` = ``ceil(duration * 25)``."""
        return _ceil_div(self.frontend.frames(n_samples), SUBSAMPLING)

    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # An empty item still keeps key 0 so no attention row is all -inf (its output is masked anyway).
        key_mask = lengths_to_mask(lengths.clamp_min(1), x.shape[1])[:, None, None, :]
        rope = _rotary(x.shape[1], x.shape[2] // self.heads, x.device)
        for block in blocks:
            x = block(x, key_mask, rope)
        return x

    def encode(self, audio: torch.Tensor, audio_len: torch.Tensor, augment: bool = False) -> dict[str, torch.Tensor]:
        """Audio -> pre-quantiser activations ``z [B, T, D_fsq]`` and features ``x [B, T, D]``,
        ``token_len [B]``, ``mel``, ``mel_len``. ``augment``: SpecAugment (training only)."""
        mel, mel_len = self.frontend(audio, audio_len)
        feats = self.spec_augment(mel, mel_len) if augment and self.spec_augment is not None else mel
        x, token_len = self.subsample(feats, mel_len)
        x = self._blocks(self.pre, x, token_len)
        z = self.to_code(self.pre_norm(x))
        return {"z": z, "x": x, "token_len": token_len, "mel": mel, "mel_len": mel_len}

    @torch.inference_mode()
    def tokenize(self, audio: torch.Tensor, audio_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded audio ``[B, S]`` -> token ids ``[B, T]`` int64 (0 beyond each length), ``token_len [B]``."""
        enc = self.encode(audio, audio_len)
        _, ids = self.fsq(enc["z"])
        mask = lengths_to_mask(enc["token_len"], ids.shape[1])
        return ids.masked_fill(~mask, 0), enc["token_len"]

    @torch.inference_mode()
    def ctc_log_probs(self, audio: torch.Tensor, audio_len: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CTC head through the quantised path: ``log_probs [B, T * ctc_upsample, V + 1]`` (float32),
        their ``ctc_len [B]``, and the token ``ids [B, T]`` with ``token_len [B]``."""
        enc = self.encode(audio, audio_len)
        codes, ids = self.fsq(enc["z"])
        h = self._decode_codes(codes.to(enc["z"].dtype), enc["token_len"])
        b, t, _ = h.shape
        logits = self.ctc_head(h).view(b, t * self.ctc_upsample, self.vocab_size + 1).float()
        return {
            "log_probs": logits.log_softmax(-1), "ctc_len": enc["token_len"] * self.ctc_upsample,
            "ids": ids, "token_len": enc["token_len"],
        }

    def transcribe(self, audio: torch.Tensor, audio_len: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
        """Greedy CTC transcription through the quantised path: (text-id lists, token ids ``[B, T]``)."""
        out = self.ctc_log_probs(audio, audio_len)
        return ctc_greedy_decode(out["log_probs"], out["ctc_len"], self.blank), out["ids"]

    def _decode_codes(self, codes: torch.Tensor, token_len: torch.Tensor) -> torch.Tensor:
        """Quantised codes ``[B, T, D_fsq]`` -> normalised post-quantiser features ``[B, T, D]``."""
        return self.post_norm(self._blocks(self.post, self.from_code(codes), token_len))

    def _ctc(
        self, h: torch.Tensor, token_len: torch.Tensor, targets: torch.Tensor, target_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CTC loss per target unit of normalised features ``h [B, T, D]``; also log-probs and frame counts."""
        b, t, _ = h.shape
        logits = self.ctc_head(h).view(b, t * self.ctc_upsample, self.vocab_size + 1)
        # fp32 log-softmax: bf16 would distort the CTC lattice.
        log_probs = logits.float().log_softmax(dim=-1)
        ctc_len = token_len * self.ctc_upsample
        # Per-utterance negative log-likelihood, summed over the batch and divided by the number of
        # target units, so the value does not depend on how utterances are batched. Items whose
        # frames cannot hold their targets get zero loss (zero_infinity) and are counted in forward.
        nll = F.ctc_loss(
            log_probs.transpose(0, 1), targets, ctc_len, target_len,
            blank=self.blank, reduction="none", zero_infinity=True,
        )
        return nll.sum() / target_len.sum().clamp_min(1), log_probs, ctc_len

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named losses (``loss``, ``ctc``, optional ``inter_ctc``, ``mel``), codebook stats; ``cer`` in eval."""
        targets, target_len = batch["text_token"], batch["text_token_len"]
        if not self._targets_checked:
            self._check_targets(targets)
        enc = self.encode(batch["audio"], batch["audio_len"], augment=self.training)
        token_len = enc["token_len"]
        codes, ids = self.fsq(enc["z"])
        mask = lengths_to_mask(token_len, ids.shape[1])
        h = self._decode_codes(codes.to(enc["z"].dtype), token_len)
        ctc, log_probs, ctc_len = self._ctc(h, token_len, targets, target_len)

        # CTC needs one frame per target plus one blank between equal neighbours.
        target_mask = lengths_to_mask(target_len, targets.shape[1])
        repeats = ((targets[:, 1:] == targets[:, :-1]) & target_mask[:, 1:]).sum(dim=1)
        infeasible = (ctc_len < target_len + repeats).float().mean()

        out = {"ctc": ctc, "ctc_infeasible": infeasible}
        if self.codebook_size <= MAX_TRACKED_CODES:
            out.update(codebook_stats(ids, mask, self.codebook_size))
        loss = self.ctc_weight * ctc
        if self.inter_norm is not None:
            # Intermediate CTC (Lee & Watanabe, 2021) on the pre-quantiser features, through the
            # shared head: the encoder gets a direct content signal instead of only the one that
            # passes the straight-through estimator.
            out["inter_ctc"], _, _ = self._ctc(self.inter_norm(enc["x"]), token_len, targets, target_len)
            loss = loss + self.inter_ctc_weight * out["inter_ctc"]
        if self.mel_head is not None:
            mel, mel_len = enc["mel"], enc["mel_len"]
            b, t, _ = h.shape
            if self.mel_voice is not None:
                h = h + self.mel_voice(utterance_mel_stats(mel, mel_len).to(h.dtype))[:, None, :]
            pred = self.mel_head(h).float().view(b, t * SUBSAMPLING, -1).transpose(1, 2)[..., : mel.shape[-1]]
            mel_mask = lengths_to_mask(mel_len, mel.shape[-1]).unsqueeze(1).float()
            out["mel"] = ((pred - mel).abs() * mel_mask).sum() / (mel_mask.sum() * mel.shape[1]).clamp_min(1.0)
            loss = loss + self.mel_weight * out["mel"]
        out["loss"] = loss
        if not self.training:
            out["cer"] = self._error_rate(log_probs, ctc_len, targets, target_len)
        return out

    def _check_targets(self, targets: torch.Tensor) -> None:
        """Fail fast, once (one host sync on the first batch), when the text ids outgrow ``vocab_size``."""
        top = int(targets.max()) if targets.numel() else -1
        if top >= self.vocab_size:
            raise ValueError(
                f"text_token id {top} >= vocab_size {self.vocab_size}: "
                "set the model's vocab_size to the text tokenizer's"
            )
        self._targets_checked = True

    def _error_rate(
        self, log_probs: torch.Tensor, ctc_len: torch.Tensor, targets: torch.Tensor, target_len: torch.Tensor
    ) -> torch.Tensor:
        """Greedy-CTC unit error rate of the batch (sum of edit distances / sum of reference lengths).

        Units are the text ids: characters with a character vocabulary (then this is the CER), BPE
        pieces otherwise. Evaluation only: it reads the hypotheses back to the host.
        """
        hyps = ctc_greedy_decode(log_probs, ctc_len, self.blank)
        refs = [row[:n].tolist() for row, n in zip(targets.cpu(), target_len.cpu().tolist())]
        errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
        total = sum(len(r) for r in refs)
        return torch.tensor(errors / max(total, 1), device=log_probs.device)
