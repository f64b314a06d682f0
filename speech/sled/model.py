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
  LM would predict eos, the positive class weighted by ``stop_pos_weight``; optionally a length
  head (``length_weight > 0``: text + voice -> log frames) whose expected length × ``length_scale``
  bounds generation, for a model whose stop head does not fire on its own latents.
- Training uses whole patches only: a latent of ``T`` frames trains on its first ``⌊T / k⌋·k``
  (generation emits whole patches, so the stop head never sees a zero-filled last patch it could
  key on and would never meet when generating).
- Classifier-free guidance on hidden states: in training the text and speaker slots of an item
  are replaced by a learned null vector with probability ``cfg_dropout``; at sampling the guided
  state is ``h_c + w·(h_c − h_u)`` (``w = 0``: the conditional path; SLED's ``cfg`` is ``1 + w``).
- Bistream (streaming text): ``mix_ratio = (n text tokens, m steps)`` chunks with probability
  ``bistream_prob``; a step that would predict ``fill`` has no latent target and stop target 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, Qwen2ForCausalLM

from speech.config import ConfigError
from speech.flow.model import load_latent_stats
from speech.llm.layout import bistream_allowed, build_layout
from speech.llm.model import (
    PrefixDecoder,
    decode_positions,
    inference_prefix,
    length_bounds,
    pool_pieces,
    speaker_input,
)
from speech.llm.sampling import RowRandom
from speech.sled.head import GenerativeHead
from speech.sled.loss import energy_distance
from speech.sled.patch import frame_mask, patchify, step_lengths, unpatchify
from speech.utils.mask import lengths_to_mask

__all__ = ["SledLM", "stop_loss"]

log = logging.getLogger(__name__)


def stop_loss(logit: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean over ``valid`` positions of the stop BCE, positives (``target`` True) weighted ``pos_weight``:
    ``−(w·y·log σ(x) + (1 − y)·log(1 − σ(x)))``. An item has one eos among ~``T / k`` steps, so with
    ``w = 1`` "never stop" already scores well; ``w ≈`` steps per item balances the two classes."""
    w = torch.tensor(pos_weight, dtype=logit.dtype, device=logit.device)
    bce = F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), reduction="none", pos_weight=w)
    return (bce * valid).sum() / valid.sum().clamp_min(1)


class SledLM(nn.Module):
    """Text + speaker (+ prompt) -> DAC-VAE latents, ``patch_size`` frames per AR step.

    ``forward(batch)`` (keys ``text_token(_len)``, ``latent(_len)``, ``ref_audio(_len)``) returns
    ``{"loss", "energy", "stop", "stop_recall", "stop_precision"}``; ``generate`` samples raw-``mu``
    latents with a KV cache (``generate_stream`` / ``generate_bistream``: one request, patch by patch).
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
        stop_pos_weight: float = 1.0,
        length_weight: float = 0.0,
        length_scale: float = 1.0,
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
        if stop_pos_weight <= 0:
            raise ConfigError(f"sled: stop_pos_weight must be > 0, got {stop_pos_weight}")
        if len(mix_ratio) != 2 or min(mix_ratio) < 1:
            raise ConfigError(f"sled: mix_ratio must be two positive ints (text, steps), got {mix_ratio}")
        self.backbone, self.speaker = backbone, speaker
        hidden = backbone.config.hidden_size
        self.latent_dim, self.latent_rate, self.patch_size = int(latent_dim), float(latent_rate), int(patch_size)
        self.stop_weight, self.cfg_dropout, self.cfg_w = stop_weight, cfg_dropout, cfg_w
        self.stop_pos_weight, self.stop_threshold = float(stop_pos_weight), stop_threshold
        if length_weight < 0 or length_scale < 0:
            raise ConfigError(f"sled: length_weight and length_scale must be >= 0, got {length_weight}, {length_scale}")
        self.length_weight, self.length_scale = float(length_weight), length_scale
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
        # Utterance length from the text and the voice (log frames): a bound generation cannot run past.
        self.length_head = None
        if length_weight > 0:
            self.length_head = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.SiLU(), nn.Linear(hidden, 1))
            # The head predicts the residual of log(frames per text token) around length_prior, a running
            # mean of it over the training batches (no gradient): a short run does not spend its steps
            # moving one bias (Adam moves a parameter ~lr per step), whatever the tokenizer's rate.
            nn.init.zeros_(self.length_head[2].weight)
            nn.init.zeros_(self.length_head[2].bias)
            self.register_buffer("length_prior", torch.tensor(math.log(self.latent_rate / 4)))  # 4 tokens/s
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

    def predict_log_frames(self, text_token: torch.Tensor, text_token_len: torch.Tensor,
                           spk: torch.Tensor) -> torch.Tensor:
        """``log`` of the latent frames ``[B]`` the length head expects for the texts ``[B, L]`` (padded) in the
        voice of the speaker slots ``spk [B, H]``: ``log L + length_prior`` (the training set's mean log
        frames per text token) plus a small MLP of the masked mean of the text embeddings, the speaker
        slot and ``log L``."""
        mask = lengths_to_mask(text_token_len, text_token.shape[1])
        emb = self.embed_text(text_token.masked_fill(~mask, 0)) * mask.unsqueeze(-1)
        n = text_token_len.clamp_min(1).to(emb.dtype)
        feats = torch.cat([emb.sum(1) / n.unsqueeze(-1), spk.to(emb.dtype), n.log().unsqueeze(-1)], dim=-1)
        return (n.log() + self.length_prior + self.length_head(feats).squeeze(-1)).float()

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any], bistream: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Energy distance over valid frames + ``stop_weight`` × stop BCE, for a padded batch."""
        text, text_len = batch["text_token"], batch["text_token_len"]
        latent, latent_len = batch["latent"], batch["latent_len"]
        b, device, k, d = text.shape[0], text.device, self.patch_size, self.latent_dim
        # Eval draws (noise, layouts) from a fixed seed so CV losses compare across checkpoints.
        gen = None if self.training else torch.Generator(device=device).manual_seed(self.cv_seed)

        latent_len = torch.div(latent_len, k, rounding_mode="floor") * k  # whole patches, as generated
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
        length: dict[str, torch.Tensor] = {}
        if self.length_head is not None:
            log_frames = self.predict_log_frames(text, text_len, spk)
            target = latent_len.clamp_min(1).float().log()
            valid = latent_len > 0
            if self.training:  # running mean of log(frames per text token), momentum 0.1, on the device
                rate = ((target - text_len.clamp_min(1).float().log()) * valid).sum() / valid.sum().clamp_min(1)
                self.length_prior.lerp_(torch.where(valid.any(), rate, self.length_prior), 0.1)
            length["length"] = ((log_frames - target).abs() * valid).sum() / valid.sum().clamp_min(1)
            with torch.no_grad():
                length["length_err"] = (((log_frames - target).exp() - 1).abs() * valid).sum() / valid.sum().clamp_min(1)
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
        stop = stop_loss(stop_logit, is_eos, stop_pos, self.stop_pos_weight)
        with torch.no_grad():
            fired = (torch.sigmoid(stop_logit) > self.stop_threshold) & stop_pos
            stop_recall = (fired & is_eos).sum() / is_eos.sum().clamp_min(1)
            stop_precision = (fired & is_eos).sum() / fired.sum().clamp_min(1)
        loss = energy + self.stop_weight * stop
        if length:
            loss = loss + self.length_weight * length["length"]
            length["length"] = length["length"].detach()
        return {"loss": loss, "energy": energy.detach(), "stop": stop.detach(),
                "stop_recall": stop_recall, "stop_precision": stop_precision, **length}

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

    def _settings(self, cfg_w, stop_threshold, min_len_ratio, max_len_ratio) -> tuple[float, float, float, float]:
        """The guidance, stop threshold and length ratios of a request (``None``: the model's)."""
        pick = lambda given, own: own if given is None else given  # noqa: E731
        return (pick(cfg_w, self.cfg_w), pick(stop_threshold, self.stop_threshold),
                pick(min_len_ratio, self.min_len_ratio), pick(max_len_ratio, self.max_len_ratio))

    def _step_bounds(self, n_text: torch.Tensor, min_ratio: float, max_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Fewest / most AR steps ``[B]`` for ``n_text`` text tokens (frame bounds rounded up to whole steps)."""
        min_frames, max_frames = length_bounds(n_text, min_ratio, max_ratio)
        min_steps = step_lengths(min_frames, self.patch_size)
        return min_steps, step_lengths(max_frames, self.patch_size).clamp_min(min_steps)

    def _prompt_steps(
        self, b: int, device: torch.device, prompt_latent: torch.Tensor | None, prompt_latent_len: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's normalised whole patches ``[B, P, k·D]`` (0 past each length) and their counts ``[B]``."""
        k = self.patch_size
        if prompt_latent is None:
            return torch.zeros(b, 0, k * self.latent_dim, device=device), torch.zeros(b, dtype=torch.long, device=device)
        if prompt_latent_len is None:
            raise ValueError("a prompt needs prompt_latent and prompt_latent_len")
        p_len = torch.div(prompt_latent_len.to(device), k, rounding_mode="floor")  # whole patches only
        p = self.normalise(prompt_latent) * lengths_to_mask(p_len * k, prompt_latent.shape[-1])[:, None, :]
        return patchify(p, k), p_len

    def _length_cap(self, text_token: torch.Tensor, text_token_len: torch.Tensor, spk: torch.Tensor,
                    min_steps: torch.Tensor, max_steps: torch.Tensor, scale: float | None) -> torch.Tensor:
        """``max_steps`` lowered to ``scale`` × the length head's expected frames (whole steps, never below
        ``min_steps``); unchanged without a length head or with ``scale`` 0."""
        scale = self.length_scale if scale is None else scale
        if self.length_head is None or not scale:
            return max_steps
        frames = self.predict_log_frames(text_token, text_token_len, spk).exp() * scale
        cap = torch.ceil(frames / self.patch_size).long()
        return torch.minimum(max_steps, torch.maximum(cap, min_steps))

    def _guided(self, hidden: torch.Tensor, b: int, w: float) -> torch.Tensor:
        """The state the head samples from: ``h_c + w·(h_c − h_u)`` (rows ``b:`` are the unconditional ones)."""
        h_c = hidden[:b]
        return h_c + w * (h_c - hidden[b:]) if w != 0 else h_c

    def _stop(self, h_c: torch.Tensor, threshold: float) -> torch.Tensor:
        """``[B]`` bool: the stop probability of the conditional state exceeds ``threshold``."""
        return torch.sigmoid(self.stop_head(h_c).squeeze(-1).float()) > threshold

    def generate_steps(
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
        length_scale: float | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The AR loop of :meth:`generate` (same arguments), one step at a time: ``(patch [B, k·D]``
        (normalised space), ``emit [B]`` bool) per step; an item's patches count while ``emit`` holds.
        Ends when every item has stopped or reached its maximum. Call under ``torch.inference_mode``."""
        k = self.patch_size
        w, threshold, min_ratio, max_ratio = self._settings(cfg_w, stop_threshold, min_len_ratio, max_len_ratio)
        spk = speaker_input(self.speaker, self.spk_proj, ref_audio, ref_audio_len, spk_vector)
        b, device = text_token.shape[0], text_token.device
        min_steps, max_steps = self._step_bounds(text_token_len.to(device), min_ratio, max_ratio)
        max_steps = self._length_cap(text_token, text_token_len.to(device), spk, min_steps, max_steps, length_scale)
        if prompt_latent is not None and prompt_text_token is None:
            raise ValueError("a prompt needs prompt_latent, prompt_latent_len and prompt_text_token")
        prompt_steps, p_len = self._prompt_steps(b, device, prompt_latent, prompt_latent_len)
        pieces = (text_token, text_token_len.to(device), prompt_text_token, prompt_text_token_len, prompt_steps, p_len)
        prefix, valid = self._prefix(spk, *pieces)
        if w != 0:  # the unconditional rows ride along as a second half of the batch
            prefix_u, _ = self._prefix(None, *pieces)
            prefix, valid = torch.cat([prefix, prefix_u]), torch.cat([valid, valid])
        rows = prefix.shape[0]
        n_max = int(max_steps.max()) if b else 0
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        finished = max_steps == 0
        if n_max == 0:
            return
        decoder = PrefixDecoder(self.decoder, self.backbone.config, prefix, valid, use_cache)
        hidden = decoder.hidden
        for step in range(n_max):
            patch = self.sample_head(self._guided(hidden, b, w), self._noise(b, generator, hidden))
            stop = self._stop(hidden[:b], threshold) & (step >= min_steps)
            emit = ~finished & ~stop
            yield patch, emit
            lengths += emit
            finished = finished | stop | (lengths >= max_steps)
            if step + 1 == n_max or bool(finished.all()):
                return
            hidden = decoder.feed(self.latent_in(patch).unsqueeze(1).repeat(rows // b, 1, 1))

    @torch.inference_mode()
    def generate(
        self,
        text_token: torch.Tensor,
        text_token_len: torch.Tensor,
        ref_audio: torch.Tensor | None = None,
        ref_audio_len: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``[B, D, N]`` in raw DAC-VAE ``mu`` space (0 past each length) and lengths ``[B]`` in frames.

        Keywords: ``spk_vector``, ``prompt_text_token(_len)``, ``prompt_latent(_len)``, ``cfg_w``,
        ``stop_threshold``, ``min_len_ratio``, ``max_len_ratio``, ``generator``, ``use_cache``,
        ``length_scale``.
        The voice comes from ``ref_audio`` (or ``spk_vector [B, speaker.dim]``); with
        ``prompt_text_token`` and ``prompt_latent [B, D, P]`` (raw ``mu``, ``prompt_latent_len``
        frames, cut to whole patches) the model continues the prompt (one-shot). Each item gets
        between ``min_len_ratio`` and ``max_len_ratio`` latent frames per text token (prompt
        excluded, rounded up to whole steps); it ends at the first step past the minimum where
        the stop probability (of the conditional state) exceeds ``stop_threshold``, or, for a model
        with a length head (``length_weight > 0``), at ``length_scale`` × the length it expects for the
        text (0: no such bound), whichever comes first. Batched items are left-padded with exact positions and masks and, with a :class:`RowRandom`, draw their
        own noise, so a batch gives each item what it gives alone.
        """
        k, b = self.patch_size, text_token.shape[0]
        patches, lengths = [], torch.zeros(b, dtype=torch.long, device=text_token.device)
        for patch, emit in self.generate_steps(text_token, text_token_len, ref_audio, ref_audio_len, **kwargs):
            patches.append(patch * emit.unsqueeze(-1).to(patch.dtype))
            lengths += emit
        width = int(lengths.max()) if b else 0
        out = torch.stack(patches[:width], 1) if width else torch.zeros(b, 0, k * self.latent_dim,
                                                                          device=text_token.device)
        latent = self.denormalise(unpatchify(out, k))
        latent_len = lengths * k
        return latent * lengths_to_mask(latent_len, latent.shape[-1])[:, None, :], latent_len

    def _frames(self, patch: torch.Tensor) -> torch.Tensor:
        """One normalised patch ``[1, k·D]`` -> its raw ``mu`` frames ``[1, D, k]``."""
        return self.denormalise(unpatchify(patch.unsqueeze(1), self.patch_size))

    @torch.inference_mode()
    def generate_stream(
        self,
        text_token: torch.Tensor,
        spk_vector: torch.Tensor,
        *,
        prompt_text_token: torch.Tensor | None = None,
        prompt_latent: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Iterator[torch.Tensor]:
        """Uni-stream generation of one whole text ``[L]``: the raw ``mu`` frames ``[1, D, k]`` of each
        patch as soon as it is sampled, exactly the latents :meth:`generate` returns for it (same
        ``spk_vector [1, speaker.dim]``, prompt ``[P]`` / ``[1, D, F]``, options and generator)."""
        text = text_token.reshape(1, -1)
        length = lambda n: torch.tensor([n], device=text.device)  # noqa: E731
        prompt: dict[str, torch.Tensor] = {}
        if prompt_text_token is not None:
            prompt.update(prompt_text_token=prompt_text_token.reshape(1, -1),
                          prompt_text_token_len=length(prompt_text_token.numel()))
        if prompt_latent is not None:
            prompt.update(prompt_latent=prompt_latent, prompt_latent_len=length(prompt_latent.shape[-1]))
        steps = self.generate_steps(text, length(text.shape[1]), spk_vector=spk_vector.reshape(1, -1), **prompt,
                                    **kwargs)
        for patch, emit in steps:
            if not bool(emit[0]):
                return
            yield self._frames(patch)

    @torch.inference_mode()
    def generate_bistream(
        self,
        text_pieces: Iterable[torch.Tensor | list[int]],
        spk_vector: torch.Tensor,
        *,
        prompt_text_token: torch.Tensor | None = None,
        prompt_latent: torch.Tensor | None = None,
        cfg_w: float | None = None,
        stop_threshold: float | None = None,
        min_len_ratio: float | None = None,
        max_len_ratio: float | None = None,
        generator: torch.Generator | RowRandom | None = None,
        use_cache: bool = True,
        length_scale: float | None = None,
    ) -> Iterator[torch.Tensor]:
        """Bi-stream generation of one request whose text ids arrive in pieces: raw ``mu`` frames ``[1, D, k]``
        per patch, as soon as it is sampled.

        The trained bistream layout (:mod:`speech.llm.layout`, ``mix_ratio = (a, m)``), built as
        text arrives, as :meth:`speech.llm.model.SpeechLM.generate_bistream` does for tokens: whenever
        ``a`` text ids are waiting they are fed and ``m`` patches follow (whole prompt patches first,
        teacher-forced, then sampled; no stop inside a chunk); the last of them predicted ``fill`` in
        training, so its state is not sampled from: the next text chunk follows it. When the pieces
        end, the remaining text, ``task`` and any remaining prompt patches are fed and generation
        continues until the stop head fires, within ``min_len_ratio``/``max_len_ratio`` frames per
        text token (prompt excluded; the chunks' patches count, and a chunk always gets its ``m``). With guidance (``cfg_w != 0``) a second row runs the same
        sequence with the text and speaker slots null. One KV cache serves the request
        (``use_cache=False`` recomputes: the test reference).
        """
        k = self.patch_size
        w, threshold, min_ratio, max_ratio = self._settings(cfg_w, stop_threshold, min_len_ratio, max_len_ratio)
        a, m = self.mix_ratio
        device = self.latent_in.weight.device
        guided = w != 0
        rows = 2 if guided else 1
        spk = self.spk_proj(spk_vector.reshape(1, -1).to(self.spk_proj.weight.dtype))
        if guided:
            spk = torch.cat([spk, self.null_embedding.unsqueeze(0).to(spk.dtype)])
        sos, task = self.sos_task_embedding.weight.unsqueeze(1).unbind(0)  # [1, H] each
        text: list[int] = [] if prompt_text_token is None else prompt_text_token.reshape(-1).tolist()
        target_ids: list[int] = []  # the text proper (the length head's input)
        forced: list[torch.Tensor] = []
        if prompt_latent is not None:
            p_steps, p_len = self._prompt_steps(1, device, prompt_latent.to(device),
                                                torch.tensor([prompt_latent.shape[-1]], device=device))
            forced = list(p_steps[0, : int(p_len[0])].unbind(0))
        cache = DynamicCache(config=self.backbone.config) if use_cache else None
        state: dict[str, Any] = {"pos": 0, "seq": []}
        pending: list[torch.Tensor] = [sos.expand(rows, 1, -1), spk.unsqueeze(1)]  # [rows, n, H] pieces not yet fed

        def embed_text(ids: list[int]) -> torch.Tensor:
            emb = self.embed_text(torch.tensor([ids], dtype=torch.long, device=device))
            return torch.cat([emb, self._null(1, len(ids)).to(emb.dtype)]) if guided else emb

        def embed_patch(patch: torch.Tensor) -> torch.Tensor:
            return self.latent_in(patch.reshape(1, 1, -1)).expand(rows, 1, -1)

        def feed() -> torch.Tensor:
            x = torch.cat(pending, dim=1)
            pending.clear()
            if cache is None:
                state["seq"].append(x)
                x = torch.cat(state["seq"], dim=1)
                pos = torch.arange(x.shape[1], device=device)[None]
            else:
                pos = torch.arange(state["pos"], state["pos"] + x.shape[1], device=device)[None]
                state["pos"] += x.shape[1]
            return decode_positions(self.decoder, x, None, pos.expand(rows, -1), cache, padded=False)

        def sample(hidden: torch.Tensor) -> torch.Tensor:
            return self.sample_head(self._guided(hidden, 1, w), self._noise(1, generator, hidden))

        n_text, n_out = 0, 0
        for piece in text_pieces:
            piece = piece.reshape(-1).tolist() if isinstance(piece, torch.Tensor) else [int(i) for i in piece]
            text += piece
            target_ids += piece
            n_text += len(piece)
            while len(text) >= a:
                pending.append(embed_text(text[:a]))
                text = text[a:]
                for _ in range(m):
                    if forced:
                        pending.append(embed_patch(forced.pop(0)))
                        continue
                    patch = sample(feed())
                    yield self._frames(patch)
                    n_out += 1
                    pending.append(embed_patch(patch))
        n = torch.tensor([n_text], device=device)
        lo, hi = self._step_bounds(n, min_ratio, max_ratio)
        hi = self._length_cap(torch.tensor([target_ids], dtype=torch.long, device=device), n, spk[:1], lo, hi,
                              length_scale)
        min_steps, max_steps = int(lo[0]), int(hi[0])
        if text:
            pending.append(embed_text(text))
        pending.append(task.expand(rows, 1, -1))
        pending.extend(embed_patch(p) for p in forced)
        while n_out < max_steps:
            hidden = feed()
            patch = sample(hidden)
            if n_out >= min_steps and bool(self._stop(hidden[:1], threshold)[0]):
                return
            yield self._frames(patch)
            n_out += 1
            pending.append(embed_patch(patch))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (f"latent_dim={self.latent_dim}, latent_rate={self.latent_rate:g}, patch_size={self.patch_size}, "
                f"params={n / 1e6:.2f}M")
