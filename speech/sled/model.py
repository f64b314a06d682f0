"""SLED-style continuous AR TTS: a Qwen2 LM over ``[sos][spk] text [task] latent steps`` with an energy-distance head.

The same pieces as the Stage 1 LM (:mod:`speech.llm`): a Qwen2 decoder stack on ``inputs_embeds``,
the learnable speaker extractor in one input slot, the unistream/bistream layouts of
:mod:`speech.llm.layout` (a latent *step* takes the place of a speech token) and the per-row
seeded randomness of :class:`~speech.llm.sampling.RowRandom`. What differs:

- Inputs: ``k = patch_size`` consecutive DAC-VAE latent frames (normalised per dimension with the
  dataset statistics stored as buffers, as the flow does) are one AR step, projected to the width.
- Outputs: a :class:`~speech.sled.head.GenerativeHead` maps (hidden state, fresh noise) to the
  next patch, trained with the energy distance of two samples per frame
  (:func:`~speech.sled.loss.energy_distance`), and a stop head (BCE) whose target is 1 where the
  LM would predict eos.
- Classifier-free guidance on hidden states: in training the text and speaker slots of an item
  are replaced by a learned null vector with probability ``cfg_dropout``; at sampling the guided
  state is ``h_c + w·(h_c − h_u)`` (``w = 0``: the conditional path; SLED's ``cfg`` is ``1 + w``).
- Bistream (streaming text): ``mix_ratio = (n text tokens, m steps)`` chunks with probability
  ``bistream_prob``; a step that would predict ``fill`` has no latent target and stop target 0.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2ForCausalLM

from speech.config import ConfigError
from speech.flow.model import load_latent_stats
from speech.llm.layout import bistream_allowed, build_layout
from speech.llm.model import PrefixDecoder, inference_prefix, length_bounds, pool_pieces, speaker_input
from speech.llm.sampling import RowRandom
from speech.sled.head import GenerativeHead
from speech.sled.loss import energy_distance
from speech.sled.patch import frame_mask, patchify, step_lengths, unpatchify
from speech.utils.mask import lengths_to_mask

__all__ = ["SledLM"]

log = logging.getLogger(__name__)


class SledLM(nn.Module):
    """Text + speaker (+ prompt) -> DAC-VAE latents, ``patch_size`` frames per AR step.

    ``forward(batch)`` (keys ``text_token(_len)``, ``latent(_len)``, ``ref_audio(_len)``) returns
    ``{"loss", "energy", "stop", "stop_acc"}``; ``generate`` samples raw-``mu`` latents with a KV cache.
    """

    def __init__(
        self,
        backbone: Qwen2ForCausalLM,
        speaker: nn.Module,
        latent_dim: int = 80,
        latent_rate: float = 50.0,
        patch_size: int = 1,
        latent_stats: str | None = None,
        head_width: int = 256,
        head_depth: int = 3,
        noise_dim: int = 64,
        stop_weight: float = 1.0,
        cfg_dropout: float = 0.1,
        cfg_w: float = 1.0,
        stop_threshold: float = 0.5,
        bistream_prob: float = 0.0,
        mix_ratio: tuple[int, int] | list[int] = (5, 15),
        min_len_ratio: float = 2.0,
        max_len_ratio: float = 20.0,
        cv_seed: int = 1234,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if patch_size < 1 or int(patch_size) != patch_size:
            raise ConfigError(f"sled: patch_size must be a positive integer, got {patch_size!r}")
        if not 0.0 <= bistream_prob <= 1.0 or not 0.0 <= cfg_dropout < 1.0:
            raise ConfigError(f"sled: bistream_prob must be in [0, 1] and cfg_dropout in [0, 1), got "
                              f"{bistream_prob}, {cfg_dropout}")
        if len(mix_ratio) != 2 or min(mix_ratio) < 1:
            raise ConfigError(f"sled: mix_ratio must be two positive ints (text, steps), got {mix_ratio}")
        self.backbone, self.speaker = backbone, speaker
        hidden = backbone.config.hidden_size
        self.latent_dim, self.latent_rate, self.patch_size = int(latent_dim), float(latent_rate), int(patch_size)
        self.stop_weight, self.cfg_dropout, self.cfg_w = stop_weight, cfg_dropout, cfg_w
        self.stop_threshold = stop_threshold
        self.bistream_prob, self.mix_ratio = bistream_prob, (int(mix_ratio[0]), int(mix_ratio[1]))
        self.min_len_ratio, self.max_len_ratio = min_len_ratio, max_len_ratio
        self.cv_seed = cv_seed
        patch = self.patch_size * self.latent_dim

        self.sos_task_embedding = nn.Embedding(2, hidden)  # 0 = sos, 1 = task
        self.spk_proj = nn.Linear(speaker.dim, hidden)
        self.null_embedding = nn.Parameter(torch.zeros(hidden))  # text / speaker slots of the unconditional path
        self.latent_in = nn.Linear(patch, hidden)
        self.head = GenerativeHead(hidden, patch, head_width, head_depth, noise_dim)
        self.stop_head = nn.Linear(hidden, 1)
        # The text-vocabulary head is never evaluated (see SpeechLM); an untied one is frozen.
        if backbone.lm_head.weight is not backbone.model.embed_tokens.weight:
            backbone.lm_head.requires_grad_(False)
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if latent_stats:
            mean, std = load_latent_stats(latent_stats, self.latent_dim)
        else:
            log.info("sled: no latent_stats given; latents are used unnormalised (mean 0, std 1)")
            mean, std = torch.zeros(self.latent_dim), torch.ones(self.latent_dim)
        self.register_buffer("latent_mean", mean.clone())
        self.register_buffer("latent_std", std.clone())

    # ------------------------------------------------------------------ pieces
    @property
    def decoder(self) -> nn.Module:
        """The Qwen2 decoder stack, without the text-vocabulary head."""
        return self.backbone.model

    def normalise(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw DAC-VAE ``mu`` ``[B, D, T]`` -> the standardised space the model works in."""
        return (latent.float() - self.latent_mean[:, None]) / self.latent_std[:, None]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`."""
        return x.float() * self.latent_std[:, None] + self.latent_mean[:, None]

    def embed_text(self, text_token: torch.Tensor) -> torch.Tensor:
        """Text ids ``[B, L]`` -> ``[B, L, H]`` through the backbone's own ``embed_tokens``."""
        return self.decoder.embed_tokens(text_token)

    def _null(self, b: int, n: int) -> torch.Tensor:
        return self.null_embedding.expand(b, n, -1)

    def sample_head(self, hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One patch ``[..., k·D]`` (normalised space) per hidden state ``[..., H]`` and noise ``[..., noise_dim]``."""
        return self.head(hidden, noise)

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any], bistream: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Energy distance over valid frames + ``stop_weight`` × stop BCE, for a padded batch."""
        text, text_len = batch["text_token"], batch["text_token_len"]
        latent, latent_len = batch["latent"], batch["latent_len"]
        b, device, k, d = text.shape[0], text.device, self.patch_size, self.latent_dim
        # Eval draws (noise, layouts) from a fixed seed so CV losses compare across checkpoints.
        gen = None if self.training else torch.Generator(device=device).manual_seed(self.cv_seed)

        x = self.normalise(latent) * lengths_to_mask(latent_len, latent.shape[-1])[:, None, :]
        steps = patchify(x, k)  # [B, S, k·D]
        n_steps = steps.shape[1]
        step_len = step_lengths(latent_len, k)
        if bistream is None:
            allowed = bistream_allowed(text_len, step_len, self.mix_ratio)
            bistream = allowed & (torch.rand(b, device=device, generator=gen) < self.bistream_prob)
        layout = build_layout(text_len, step_len, text.shape[1], n_steps, bistream, self.mix_ratio)

        spk = self.spk_proj(self.speaker(batch["ref_audio"], batch["ref_audio_len"]))
        text_emb = self.embed_text(text.masked_fill(~lengths_to_mask(text_len, text.shape[1]), 0))
        if self.training and self.cfg_dropout > 0:
            drop = torch.rand(b, device=device) < self.cfg_dropout
            text_emb = torch.where(drop[:, None, None], self._null(b, text.shape[1]).to(text_emb.dtype), text_emb)
            spk = torch.where(drop[:, None], self.null_embedding.to(spk.dtype), spk)
        pool = pool_pieces(self.sos_task_embedding.weight, spk, text_emb, self.latent_in(steps))
        inputs = pool.gather(1, layout.src.unsqueeze(-1).expand(-1, -1, pool.shape[-1]))
        hidden = self.decoder(inputs_embeds=inputs, use_cache=False).last_hidden_state  # [B, Q, H]

        tgt = layout.tgt  # < S: a step target; S: eos; S + 1: fill; S + 2: ignore
        is_step, is_eos = tgt < n_steps, tgt == n_steps
        stop_pos = tgt <= n_steps + 1
        idx = tgt.clamp(max=n_steps - 1)
        target = steps.gather(1, idx.unsqueeze(-1).expand(-1, -1, steps.shape[-1]))  # [B, Q, k·D]
        fmask = frame_mask(latent_len, n_steps, k).gather(1, idx.unsqueeze(-1).expand(-1, -1, k))
        fmask = fmask & is_step.unsqueeze(-1)  # [B, Q, k]

        q = hidden.shape[1]
        noise = torch.randn(2, b, q, self.head.noise_dim, device=device, generator=gen, dtype=hidden.dtype)
        s1, s2 = self.sample_head(hidden.unsqueeze(0).expand(2, -1, -1, -1), noise).unbind(0)
        shape = (b, q, k, d)
        energy = energy_distance(s1.reshape(shape), s2.reshape(shape), target.reshape(shape), fmask)

        stop_logit = self.stop_head(hidden).squeeze(-1).float()
        bce = F.binary_cross_entropy_with_logits(stop_logit, is_eos.float(), reduction="none")
        n_stop = stop_pos.sum().clamp_min(1)
        stop = (bce * stop_pos).sum() / n_stop
        with torch.no_grad():
            stop_acc = (((stop_logit > 0) == is_eos) & stop_pos).sum() / n_stop
        return {"loss": energy + self.stop_weight * stop, "energy": energy.detach(), "stop": stop.detach(),
                "stop_acc": stop_acc}

    # ------------------------------------------------------------------ inference
    def _prefix(
        self,
        spk: torch.Tensor | None,
        text_token: torch.Tensor,
        text_token_len: torch.Tensor,
        prompt_text_token: torch.Tensor | None,
        prompt_text_token_len: torch.Tensor | None,
        prompt_steps: torch.Tensor,
        prompt_step_len: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[sos, spk, prompt_text, text, task, prompt_steps]`` ``[B, P, H]`` (``spk None``: the
        unconditional path, text and speaker slots null) and its valid mask ``[B, P]``."""
        b = text_token.shape[0]
        embed_text = self.embed_text
        if spk is None:
            spk = self.null_embedding.expand(b, -1)
            embed_text = lambda ids: self._null(b, ids.shape[1])  # noqa: E731
        return inference_prefix(
            self.sos_task_embedding.weight, spk, embed_text, text_token, text_token_len, prompt_text_token,
            prompt_text_token_len, self.latent_in(prompt_steps), prompt_step_len,
        )

    def _noise(self, b: int, generator: torch.Generator | RowRandom | None, like: torch.Tensor) -> torch.Tensor:
        if isinstance(generator, RowRandom):
            return generator.normal(self.head.noise_dim).to(device=like.device, dtype=like.dtype)
        return torch.randn(b, self.head.noise_dim, generator=generator, device=like.device, dtype=like.dtype)

    @torch.inference_mode()
    def generate(
        self,
        text_token: torch.Tensor,
        text_token_len: torch.Tensor,
        ref_audio: torch.Tensor | None = None,
        ref_audio_len: torch.Tensor | None = None,
        *,
        spk_vector: torch.Tensor | None = None,
        prompt_text_token: torch.Tensor | None = None,
        prompt_text_token_len: torch.Tensor | None = None,
        prompt_latent: torch.Tensor | None = None,
        prompt_latent_len: torch.Tensor | None = None,
        cfg_w: float | None = None,
        stop_threshold: float | None = None,
        min_len_ratio: float | None = None,
        max_len_ratio: float | None = None,
        generator: torch.Generator | RowRandom | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``[B, D, N]`` in raw DAC-VAE ``mu`` space (0 past each length) and lengths ``[B]`` in frames.

        The voice comes from ``ref_audio`` (or ``spk_vector [B, speaker.dim]``); with
        ``prompt_text_token`` and ``prompt_latent [B, D, P]`` (raw ``mu``, ``prompt_latent_len``
        frames, cut to whole patches) the model continues the prompt (one-shot). Each item gets
        between ``min_len_ratio`` and ``max_len_ratio`` latent frames per text token (prompt
        excluded, rounded up to whole steps); it ends at the first step past the minimum where
        the stop probability (of the conditional state) exceeds ``stop_threshold``. Batched items
        are left-padded with exact positions and masks and, with a :class:`RowRandom`, draw their
        own noise, so a batch gives each item what it gives alone.
        """
        k = self.patch_size
        w = self.cfg_w if cfg_w is None else cfg_w
        threshold = self.stop_threshold if stop_threshold is None else stop_threshold
        min_ratio = self.min_len_ratio if min_len_ratio is None else min_len_ratio
        max_ratio = self.max_len_ratio if max_len_ratio is None else max_len_ratio
        spk = speaker_input(self.speaker, self.spk_proj, ref_audio, ref_audio_len, spk_vector)
        b, device = text_token.shape[0], text_token.device
        text_token_len = text_token_len.to(device)
        min_frames, max_frames = length_bounds(text_token_len, min_ratio, max_ratio)
        min_steps = step_lengths(min_frames, k)
        max_steps = step_lengths(max_frames, k).clamp_min(min_steps)

        if prompt_latent is not None:
            if prompt_latent_len is None or prompt_text_token is None:
                raise ValueError("a prompt needs prompt_latent, prompt_latent_len and prompt_text_token")
            p_len = torch.div(prompt_latent_len.to(device), k, rounding_mode="floor")  # whole patches only
            p = self.normalise(prompt_latent) * lengths_to_mask(p_len * k, prompt_latent.shape[-1])[:, None, :]
            prompt_steps = patchify(p, k)
        else:
            prompt_steps = torch.zeros(b, 0, k * self.latent_dim, device=device)
            p_len = torch.zeros(b, dtype=torch.long, device=device)
        pieces = (text_token, text_token_len, prompt_text_token, prompt_text_token_len, prompt_steps, p_len)
        prefix, valid = self._prefix(spk, *pieces)
        guided = w != 0
        if guided:  # the unconditional rows ride along as a second half of the batch
            prefix_u, _ = self._prefix(None, *pieces)
            prefix, valid = torch.cat([prefix, prefix_u]), torch.cat([valid, valid])
        rows = prefix.shape[0]
        n_max = int(max_steps.max()) if b else 0

        out = prefix.new_zeros(b, n_max, k * self.latent_dim)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        finished = max_steps == 0
        decoder = PrefixDecoder(self.decoder, self.backbone.config, prefix, valid, use_cache)
        hidden = decoder.hidden
        for step in range(n_max):
            h_c = hidden[:b]
            h = h_c + w * (h_c - hidden[b:]) if guided else h_c
            patch = self.sample_head(h, self._noise(b, generator, h))
            p_stop = torch.sigmoid(self.stop_head(h_c).squeeze(-1).float())
            stop = (p_stop > threshold) & (step >= min_steps)
            emit = ~finished & ~stop
            out[:, step] = patch * emit.unsqueeze(-1).to(patch.dtype)
            lengths += emit
            finished = finished | stop | (lengths >= max_steps)
            if step + 1 == n_max or bool(finished.all()):
                break
            hidden = decoder.feed(self.latent_in(patch).unsqueeze(1).repeat(rows // b, 1, 1))
        width = int(lengths.max()) if b else 0
        latent = self.denormalise(unpatchify(out[:, :width], k))
        latent_len = lengths * k
        return latent * lengths_to_mask(latent_len, latent.shape[-1])[:, None, :], latent_len

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (f"latent_dim={self.latent_dim}, latent_rate={self.latent_rate:g}, patch_size={self.patch_size}, "
                f"params={n / 1e6:.2f}M")
