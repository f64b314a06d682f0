"""Stage 1: a Qwen2 LM from BPE text + a learnable speaker vector to 25 Hz FSQ speech tokens.

The backbone is ``transformers.Qwen2ForCausalLM`` (pretrained from a local directory, or built
from a config); only its decoder stack ``backbone.model`` runs, on ``inputs_embeds``. The text
vocabulary head is never evaluated: a separate speech head of ``speech_token_size + 3`` ids does
the predicting (``eos = speech_token_size``, ``speech_token_size + 1`` reserved, ``fill =
speech_token_size + 2``). Sequence layouts are in :mod:`speech.llm.layout`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from speech.config import ConfigError
from speech.llm.layout import aligned_allowed, bistream_allowed, build_aligned_layout, build_layout, merge_layouts
from speech.llm.sampling import RasSampler, RowRandom, Sampler
from speech.tokenizer.fsq import FSQEmbedding, FSQLinear
from speech.utils.mask import lengths_to_mask

__all__ = [
    "IGNORE_ID",
    "ArrivingText",
    "KnownText",
    "PrefixDecoder",
    "SpeechLM",
    "build_qwen2",
    "decode_positions",
    "inference_prefix",
    "length_bounds",
    "pool_pieces",
    "prefix_index",
    "speaker_input",
]

logger = logging.getLogger(__name__)

IGNORE_ID = -100
_ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


def build_qwen2(
    pretrain_path: str | Path | None = None, config: dict[str, Any] | None = None, attn_implementation: str = "sdpa"
) -> Qwen2ForCausalLM:
    """Qwen2 backbone: loaded (fp32) from a local pretrained directory when a path is given, else built from ``config``.

    A given path must exist and hold a ``config.json``; anything else is one :class:`ConfigError`
    line. Nothing is ever downloaded.
    """
    if pretrain_path:
        path = Path(pretrain_path)
        if not (path / "config.json").is_file():
            what = "directory not found" if not path.is_dir() else "no config.json in it"
            raise ConfigError(
                f"qwen_pretrain_path {path}: {what} (expected a local Qwen2 model directory saved by save_pretrained)"
            )
        model = Qwen2ForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation=attn_implementation, dtype=torch.float32
        )
        if config:
            differ = [k for k in _ARCH_KEYS if k in config and config[k] != getattr(model.config, k)]
            if differ:
                logger.warning(
                    "pretrained Qwen2 at %s differs from the config in %s; the pretrained values are used, so this "
                    "config will not rebuild the model without the same path",
                    path,
                    ", ".join(differ),
                )
        return model
    if not config:
        raise ConfigError("build_qwen2 needs either pretrain_path or a Qwen2 config")
    try:
        qwen_config = Qwen2Config(**config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid Qwen2 config: {exc}") from None
    qwen_config._attn_implementation = attn_implementation
    return Qwen2ForCausalLM(qwen_config)


def pool_pieces(
    sos_task: torch.Tensor, spk: torch.Tensor, text_emb: torch.Tensor, speech_emb: torch.Tensor
) -> torch.Tensor:
    """``[sos, spk, text.., task, speech..]`` ``[B, 3 + L + T, H]`` from ``sos_task [2, H]`` (row 0 sos, 1 task),
    ``spk [B, H]``, ``text_emb [B, L, H]`` and ``speech_emb [B, T, H]`` (see :mod:`speech.llm.layout`)."""
    b = spk.shape[0]
    sos, task = sos_task.to(text_emb.dtype).unsqueeze(1).unbind(0)  # [1, H] each
    return torch.cat(
        [
            sos.expand(b, 1, -1),
            spk.unsqueeze(1).to(text_emb.dtype),
            text_emb,
            task.expand(b, 1, -1),
            speech_emb.to(text_emb.dtype),
        ],
        dim=1,
    )


def prefix_index(
    pt_len: torch.Tensor, text_len: torch.Tensor, ps_len: torch.Tensor, n_pt: int, n_t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices ``[B, P]`` of the left-padded prefix ``[sos, spk, prompt_text, text, task, prompt_speech]``
    into the pool ``[sos, spk, prompt_text (n_pt), text (n_t), task, prompt_speech]``, and its valid mask ``[B, P]``."""
    device = text_len.device
    lens = 3 + pt_len + text_len + ps_len
    width = int(lens.max())
    k = torch.arange(width, device=device).unsqueeze(0) - (width - lens).unsqueeze(1)  # local position, < 0 = pad
    t_end = 2 + pt_len.unsqueeze(1)  # first position of the text proper
    task = t_end + text_len.unsqueeze(1)
    src = torch.where(
        k < 2, k, torch.where(k < t_end, k, torch.where(k < task, 2 + n_pt + (k - t_end), 2 + n_pt + n_t))
    )
    src = torch.where(k > task, 3 + n_pt + n_t + (k - task - 1), src)
    valid = k >= 0
    return torch.where(valid, src, 0), valid


def decode_positions(
    decoder: nn.Module,
    inputs: torch.Tensor,
    kv_valid: torch.Tensor,
    positions: torch.Tensor,
    cache: DynamicCache | None,
    padded: bool,
) -> torch.Tensor:
    """Run a Qwen2 decoder stack on new positions ``inputs [B, Q, H]``; return the last one's hidden state ``[B, H]``.

    ``kv_valid [B, K]`` marks real (non-left-padding) keys of the whole sequence so far. A padded
    query attends only to itself, so no row of the attention is empty.
    """
    mask = None
    if padded:
        q = inputs.shape[1]
        k = kv_valid.shape[1]
        qi = torch.arange(k - q, k, device=inputs.device).unsqueeze(1)
        ki = torch.arange(k, device=inputs.device).unsqueeze(0)
        mask = (ki <= qi) & (kv_valid.unsqueeze(1) | (ki == qi))  # [B, Q, K]
        mask = mask.unsqueeze(1)
    out = decoder(
        inputs_embeds=inputs,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cache is not None,
    )
    return out.last_hidden_state[:, -1]


def speaker_input(
    speaker: nn.Module,
    spk_proj: nn.Linear,
    ref_audio: torch.Tensor | None,
    ref_audio_len: torch.Tensor | None,
    spk_vector: torch.Tensor | None,
) -> torch.Tensor:
    """The speaker's LM input slot ``[B, H]``: ``spk_proj`` of ``spk_vector [B, speaker.dim]``, or of the
    vector ``speaker`` extracts from ``ref_audio`` when no vector is given."""
    if spk_vector is None:
        if ref_audio is None:
            raise ValueError("generate needs ref_audio (with ref_audio_len) or spk_vector")
        spk_vector = speaker(ref_audio, ref_audio_len)
    return spk_proj(spk_vector.to(spk_proj.weight.dtype))


def _one_request(ids: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One request's ids (any shape) as a batch of one ``[1, N]`` and its length ``[1]``; None stays None."""
    if ids is None:
        return None, None
    return ids.reshape(1, -1), torch.tensor([ids.numel()], device=ids.device)


def length_bounds(text_len: torch.Tensor, min_ratio: float, max_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(floor(text_len·min_ratio), floor(text_len·max_ratio))`` ``[B]``, computed in float64; the maximum is
    raised to the minimum where it is below."""
    min_len = (text_len.double() * min_ratio).floor().long()
    max_len = (text_len.double() * max_ratio).floor().long().clamp_min(min_len)
    return min_len, max_len


def inference_prefix(
    sos_task: torch.Tensor,
    spk: torch.Tensor,
    embed_text: Callable[[torch.Tensor], torch.Tensor],
    text_token: torch.Tensor,
    text_token_len: torch.Tensor,
    prompt_text_token: torch.Tensor | None,
    prompt_text_token_len: torch.Tensor | None,
    speech_emb: torch.Tensor,
    speech_len: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``[sos, spk, prompt_text, text, task, prompt_speech]`` ``[B, P, H]`` and its valid mask ``[B, P]``.

    ``embed_text`` maps the ids ``[prompt_text | text]`` ``[B, n_pt + n_t]`` (padding set to 0) to
    ``[B, n_pt + n_t, H]``; ``speech_emb [B, n_ps, H]`` embeds the prompt speech, ``speech_len [B]`` long.
    No prompt text (``None``): an empty one.
    """
    b, device = text_token.shape[0], text_token.device
    if prompt_text_token is None:
        prompt_text_token = torch.zeros(b, 0, dtype=torch.long, device=device)
        prompt_text_token_len = torch.zeros(b, dtype=torch.long, device=device)
    # Text pool [prompt_text | text] (padded each), then a pool of every piece.
    n_pt, n_t = prompt_text_token.shape[1], text_token.shape[1]
    text_all = torch.cat([prompt_text_token, text_token], dim=1)
    text_all = text_all.masked_fill(
        ~torch.cat([lengths_to_mask(prompt_text_token_len, n_pt), lengths_to_mask(text_token_len, n_t)], 1), 0
    )
    pool = pool_pieces(sos_task, spk, embed_text(text_all), speech_emb)  # [B, 3 + n_pt + n_t + n_ps, H]
    src, valid = prefix_index(prompt_text_token_len, text_token_len, speech_len, n_pt, n_t)
    return pool.gather(1, src.unsqueeze(-1).expand(-1, -1, pool.shape[-1])), valid


class PrefixDecoder:
    """Step-by-step decoding after a left-padded prefix ``[B, P, H]`` (valid mask ``[B, P]``).

    ``hidden`` is the decoder's state ``[B, H]`` at the last position so far; :meth:`feed` appends one
    position. With ``use_cache`` a KV cache holds the past; without, every step recomputes the whole
    sequence (the slow reference the cache is tested against).
    """

    def __init__(
        self, decoder: nn.Module, config: Any, prefix: torch.Tensor, valid: torch.Tensor, use_cache: bool = True
    ):
        self.decoder = decoder
        self.padded = not bool(valid.all())
        self.positions = (valid.long().cumsum(-1) - 1).clamp_min(0)
        self.next_pos = self.positions[:, -1:] + 1
        self.cache = DynamicCache(config=config) if use_cache else None
        self.inputs, self.valid = prefix, valid
        self.hidden = decode_positions(decoder, prefix, valid, self.positions, self.cache, self.padded)

    def feed(self, new: torch.Tensor) -> torch.Tensor:
        """Append ``new [B, 1, H]``; return (and keep as ``hidden``) the new last position's state ``[B, H]``."""
        self.valid = torch.cat([self.valid, self.valid.new_ones(new.shape[0], 1)], dim=1)
        if self.cache is not None:
            self.hidden = decode_positions(self.decoder, new, self.valid, self.next_pos, self.cache, self.padded)
        else:
            self.inputs = torch.cat([self.inputs, new], dim=1)
            self.positions = torch.cat([self.positions, self.next_pos], dim=1)
            self.hidden = decode_positions(self.decoder, self.inputs, self.valid, self.positions, None, self.padded)
        self.next_pos = self.next_pos + 1
        return self.hidden


class KnownText:
    """A batch's whole text for aligned decoding: the embedding of text token ``fed [B]`` and whether it is the last."""

    def __init__(self, embed_text: Callable[[torch.Tensor], torch.Tensor], text_token: torch.Tensor,
                 text_token_len: torch.Tensor):
        self.len = text_token_len.to(text_token.device)
        self.emb = embed_text(text_token.masked_fill(~lengths_to_mask(self.len, text_token.shape[1]), 0))  # [B, L, H]

    def count(self) -> torch.Tensor:
        return self.len

    def complete(self) -> bool:
        return True

    def embed(self, fed: torch.Tensor) -> torch.Tensor:
        index = fed.clamp(0, max(self.emb.shape[1] - 1, 0)).view(-1, 1, 1).expand(-1, 1, self.emb.shape[2])
        return self.emb.gather(1, index)  # [B, 1, H]

    def last(self, fed: torch.Tensor) -> torch.Tensor:
        return fed >= self.len - 1


class ArrivingText:
    """One request's text arriving in pieces (a chat LLM's output) for aligned decoding: a piece is read only
    when the decoder asks for a text token not yet there, or must know whether the one it has is the last."""

    def __init__(self, embed_text: Callable[[torch.Tensor], torch.Tensor], pieces: Iterable[torch.Tensor | list[int]],
                 device: torch.device):
        self.embed_text, self.pieces, self.device = embed_text, iter(pieces), device
        self.ids: list[int] = []
        self.ended = False

    def _need(self, k: int) -> None:
        while len(self.ids) <= k and not self.ended:
            piece = next(self.pieces, None)
            if piece is None:
                self.ended = True
            else:
                self.ids += piece.reshape(-1).tolist() if isinstance(piece, torch.Tensor) else [int(i) for i in piece]

    def count(self) -> torch.Tensor:
        """Text ids read so far (the whole text's once :meth:`complete`)."""
        self._need(0)
        return torch.tensor([len(self.ids)], device=self.device)

    def complete(self) -> bool:
        return self.ended

    def read_more(self) -> None:
        """Read at least one more id, or learn that the text has ended."""
        self._need(len(self.ids))

    def embed(self, fed: torch.Tensor) -> torch.Tensor:
        k = int(fed[0])
        self._need(k)
        return self.embed_text(torch.tensor([[self.ids[min(k, len(self.ids) - 1)]]], device=self.device))

    def last(self, fed: torch.Tensor) -> torch.Tensor:
        k = int(fed[0])
        self._need(k + 1)
        return torch.tensor([self.ended and k >= len(self.ids) - 1], device=self.device)


class SpeechLM(nn.Module):
    """``[sos][spk] text [task] speech eos`` language model over FSQ speech tokens.

    ``forward(batch)`` returns ``{"loss", "acc"}``: cross-entropy (optionally label-smoothed) and
    token accuracy over the speech + eos (+ fill in bistream) targets only. ``generate`` decodes
    new tokens with a KV cache for a batch of texts in the voice of reference audio. ``fsq_levels``
    embeds and scores the speech ids through their FSQ digits as well as per id (``FSQEmbedding``,
    ``FSQLinear``), so rare ids learn from their grid neighbours.
    """

    def __init__(
        self,
        backbone: Qwen2ForCausalLM,
        speaker: nn.Module,
        speech_token_size: int = 6561,
        bistream_prob: float = 0.5,
        mix_ratio: tuple[int, int] | list[int] = (5, 15),
        label_smoothing: float = 0.0,
        sampler: Sampler | None = None,
        min_len_ratio: float = 2.0,
        max_len_ratio: float = 20.0,
        gradient_checkpointing: bool = False,
        fsq_levels: list[int] | None = None,
        aligned_prob: float = 0.0,
        decode_layout: str = "unistream",
        max_chunk: int = 50,
    ):
        super().__init__()
        if not 0.0 <= bistream_prob <= 1.0 or not 0.0 <= aligned_prob <= 1.0:
            raise ConfigError(f"bistream_prob and aligned_prob must be in [0, 1], got {bistream_prob}, {aligned_prob}")
        if decode_layout not in ("unistream", "aligned"):
            raise ConfigError(f"decode_layout must be unistream or aligned, got {decode_layout!r}")
        if len(mix_ratio) != 2 or min(mix_ratio) < 1:
            raise ConfigError(f"mix_ratio must be two positive ints (text, speech), got {mix_ratio}")
        self.backbone = backbone
        self.speaker = speaker
        hidden = backbone.config.hidden_size
        self.speech_token_size = speech_token_size
        self.eos_id = speech_token_size
        self.reserved_id = speech_token_size + 1
        self.fill_id = speech_token_size + 2
        self.bistream_prob = bistream_prob
        self.aligned_prob, self.decode_layout = aligned_prob, decode_layout
        if max_chunk < 1:
            raise ConfigError(f"max_chunk must be >= 1, got {max_chunk}")
        self.max_chunk = max_chunk
        self.mix_ratio = (int(mix_ratio[0]), int(mix_ratio[1]))
        self.label_smoothing = label_smoothing
        self.sampler = sampler if sampler is not None else RasSampler()
        self.min_len_ratio, self.max_len_ratio = min_len_ratio, max_len_ratio

        self.sos_task_embedding = nn.Embedding(2, hidden)  # 0 = sos, 1 = task (text -> speech)
        self.spk_proj = nn.Linear(speaker.dim, hidden)
        if fsq_levels:  # speech ids in and out through their FSQ digits (rows shared by every id)
            if math.prod(fsq_levels) != speech_token_size:
                raise ConfigError(f"fsq_levels {list(fsq_levels)} give {math.prod(fsq_levels)} ids, "
                                  f"not speech_token_size {speech_token_size}")
            self.speech_embedding = FSQEmbedding(fsq_levels, hidden, extra=3)
            self.speech_head = FSQLinear(hidden, fsq_levels, extra=3)
        else:
            self.speech_embedding = nn.Embedding(speech_token_size + 3, hidden)
            self.speech_head = nn.Linear(hidden, speech_token_size + 3)
        if backbone.lm_head.weight is not backbone.model.embed_tokens.weight:
            # An untied text-vocabulary head is never evaluated: freeze it, so DDP sees no unused
            # trainable parameter and the optimizer keeps no state for it.
            backbone.lm_head.requires_grad_(False)
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ pieces
    @property
    def decoder(self) -> nn.Module:
        """The Qwen2 decoder stack (embeddings + layers + final norm), without the text-vocabulary head."""
        return self.backbone.model

    def embed_text(self, text_token: torch.Tensor) -> torch.Tensor:
        """Text ids ``[B, L]`` -> ``[B, L, H]`` through the backbone's own ``embed_tokens``."""
        return self.decoder.embed_tokens(text_token)

    def speaker_slot(self, ref_audio: torch.Tensor, ref_audio_len: torch.Tensor) -> torch.Tensor:
        """Reference audio -> the speaker's LM input slot ``[B, H]``."""
        return self.spk_proj(self.speaker(ref_audio, ref_audio_len))

    def _pool(self, spk: torch.Tensor, text_emb: torch.Tensor, speech_emb: torch.Tensor) -> torch.Tensor:
        """``[sos, spk, text.., task, speech..]`` as one ``[B, 3 + L + T, H]`` tensor (see :mod:`speech.llm.layout`)."""
        return pool_pieces(self.sos_task_embedding.weight, spk, text_emb, speech_emb)

    # ------------------------------------------------------------------ training
    def logits_and_targets(
        self, batch: dict[str, Any], bistream: torch.Tensor | None = None, aligned: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech-head logits ``[B, S, V]`` and targets ``[B, S]`` (``IGNORE_ID`` where not trained).

        ``bistream [B]`` / ``aligned [B]`` force the layout per item (aligned wins; it needs the batch's
        ``text_token_dur``). By default an item with durations that add up is aligned with probability
        ``aligned_prob``, else one whose speech/text ratio allows it is bistream with ``bistream_prob``.
        """
        text, text_len = batch["text_token"], batch["text_token_len"]
        speech, speech_len = batch["speech_token"], batch["speech_token_len"]
        if bistream is None:
            allowed = bistream_allowed(text_len, speech_len, self.mix_ratio)
            bistream = allowed & (torch.rand(allowed.shape, device=allowed.device) < self.bistream_prob)
        layout = build_layout(text_len, speech_len, text.shape[1], speech.shape[1], bistream, self.mix_ratio)
        dur = batch.get("text_token_dur")
        if aligned is None and dur is not None and self.aligned_prob > 0:
            aligned = aligned_allowed(text_len, speech_len, dur)
            aligned = aligned & (torch.rand(aligned.shape, device=aligned.device) < self.aligned_prob)
        if aligned is not None:
            if dur is None:
                raise ValueError("the aligned layout needs the batch's text_token_dur")
            by_dur = build_aligned_layout(text_len, speech_len, dur, text.shape[1], speech.shape[1])
            layout = merge_layouts(aligned, by_dur, layout)

        spk = self.speaker_slot(batch["ref_audio"], batch["ref_audio_len"])
        # Padded text/speech ids may be anything: clamp them into range (their positions are never used).
        text_emb = self.embed_text(text.masked_fill(~lengths_to_mask(text_len, text.shape[1]), 0))
        speech_in = speech.masked_fill(~lengths_to_mask(speech_len, speech.shape[1]), 0)
        speech_emb = self.speech_embedding(speech_in)
        pool = self._pool(spk, text_emb, speech_emb)
        inputs = pool.gather(1, layout.src.unsqueeze(-1).expand(-1, -1, pool.shape[-1]))

        # Right padding + causal attention: valid positions never see padding, so no mask is needed
        # (SDPA's is_causal path, no mask tensor, no host sync).
        hidden = self.decoder(inputs_embeds=inputs, use_cache=False).last_hidden_state
        logits = self.speech_head(hidden)

        b = speech.shape[0]
        special = torch.tensor([self.eos_id, self.fill_id, IGNORE_ID], device=speech.device).expand(b, 3)
        target_pool = torch.cat([speech_in, special], dim=1)
        targets = target_pool.gather(1, layout.tgt)
        return logits, targets

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training step: ``loss`` (mean CE over speech/eos/fill targets of the batch) and ``acc``."""
        logits, targets = self.logits_and_targets(batch)
        logits, targets = logits.flatten(0, 1).float(), targets.flatten()
        trained = targets != IGNORE_ID
        n = trained.sum().clamp_min(1)
        ce = F.cross_entropy(
            logits, targets, ignore_index=IGNORE_ID, reduction="sum", label_smoothing=self.label_smoothing
        )
        with torch.no_grad():
            acc = ((logits.argmax(-1) == targets) & trained).sum() / n
        return {"loss": ce / n, "acc": acc}

    # ------------------------------------------------------------------ inference
    def _inference_prefix(
        self,
        spk: torch.Tensor,
        text_token: torch.Tensor,
        text_token_len: torch.Tensor,
        prompt_text_token: torch.Tensor | None,
        prompt_text_token_len: torch.Tensor | None,
        prompt_speech_token: torch.Tensor | None,
        prompt_speech_token_len: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[sos, spk, prompt_text, text, task, prompt_speech]`` ``[B, P, H]`` and its valid mask ``[B, P]``."""
        b, device = text_token.shape[0], text_token.device
        empty = torch.zeros(b, 0, dtype=torch.long, device=device)
        zero = torch.zeros(b, dtype=torch.long, device=device)
        pt, pt_len = (empty, zero) if prompt_text_token is None else (prompt_text_token, prompt_text_token_len)
        ps, ps_len = (empty, zero) if prompt_speech_token is None else (prompt_speech_token, prompt_speech_token_len)
        if pt_len is None or ps_len is None:
            raise ValueError("prompt tokens need their lengths")
        ps = ps.masked_fill(~lengths_to_mask(ps_len, ps.shape[1]), 0)
        return inference_prefix(
            self.sos_task_embedding.weight, spk, self.embed_text, text_token, text_token_len, pt, pt_len,
            self.speech_embedding(ps), ps_len,
        )

    def _aligned_prompt(
        self,
        spk: torch.Tensor,
        pt: torch.Tensor | None,
        pt_len: torch.Tensor | None,
        pt_dur: torch.Tensor | None,
        ps: torch.Tensor | None,
        ps_len: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The prompt of an aligned-layout LM: left-padded ``[sos, spk, pt_0, its speech.., pt_1, ..]``
        ``[B, P, H]`` (the prompt utterance in the aligned training layout, so decoding continues it) and its
        valid mask ``[B, P]``; None without a prompt. The layout needs the prompt's alignment ``pt_dur``
        (speech tokens per prompt text token). An item with no prompt text (length 0) gets ``[sos, spk]``."""
        if pt is None and ps is None:
            return None
        if pt_dur is None:
            raise ValueError("an aligned-layout LM continues a prompt only with its alignment (prompt_text_token_dur)")
        if pt is None or ps is None or pt_len is None or ps_len is None:
            raise ValueError("a prompt needs its text and speech tokens and their lengths")
        device = spk.device
        pt, ps, pt_dur = pt.to(device), ps.to(device), pt_dur.to(device)
        pt_len, ps_len = pt_len.to(device), ps_len.to(device)
        if pt_dur.shape != pt.shape:
            raise ValueError(f"prompt_text_token_dur {tuple(pt_dur.shape)} must match "
                             f"prompt_text_token {tuple(pt.shape)}")
        if pt.shape[1] == 0 or not bool((pt_len > 0).any()):
            return None
        if not bool(aligned_allowed(pt_len, ps_len, pt_dur).all()):
            raise ValueError("prompt_text_token_dur must be >= 0 and add up to each prompt's speech length")
        text_emb = self.embed_text(pt.masked_fill(~lengths_to_mask(pt_len, pt.shape[1]), 0))
        speech_emb = self.speech_embedding(ps.masked_fill(~lengths_to_mask(ps_len, ps.shape[1]), 0))
        pool = self._pool(spk, text_emb, speech_emb)
        src = build_aligned_layout(pt_len, ps_len, pt_dur, pt.shape[1], ps.shape[1]).src
        n = 2 + pt_len + ps_len  # sos, spk, then the interleaved prompt (no task token in this layout)
        width = int(n.max())
        k = torch.arange(width, device=pt.device).unsqueeze(0) - (width - n).unsqueeze(1)  # < 0: left padding
        src = src.gather(1, k.clamp_min(0))
        return pool.gather(1, src.unsqueeze(-1).expand(-1, -1, pool.shape[-1])), k >= 0

    def _decode(
        self,
        inputs: torch.Tensor,
        kv_valid: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache | None,
        padded: bool,
    ) -> torch.Tensor:
        """Run the decoder on new positions (see :func:`decode_positions`)."""
        return decode_positions(self.decoder, inputs, kv_valid, positions, cache, padded)

    def _next_logp(self, hidden: torch.Tensor, step: int, min_len: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next speech id; fill/reserved never, eos not before ``min_len``."""
        logits = self.speech_head(hidden).float()
        logits[:, self.reserved_id] = float("-inf")
        logits[:, self.fill_id] = float("-inf")
        logits[:, self.eos_id] = logits[:, self.eos_id].masked_fill(step < min_len, float("-inf"))
        return logits.log_softmax(-1)

    def _decode_steps(
        self,
        prefix: torch.Tensor,
        valid: torch.Tensor,
        min_len: torch.Tensor,
        max_len: torch.Tensor,
        sampler: Sampler,
        generator: torch.Generator | RowRandom | None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """The ids ``[B]`` of each decoding step after the left-padded ``prefix``; ``eos`` for items that
        have finished (their eos, or ``max_len`` tokens). Stops when every item has finished."""
        b = prefix.shape[0]
        n_steps = int(max_len.max())
        history = torch.full((b, sampler.window), -1, dtype=torch.long, device=prefix.device)
        lengths = torch.zeros(b, dtype=torch.long, device=prefix.device)
        finished = max_len == 0
        decoder = PrefixDecoder(self.decoder, self.backbone.config, prefix, valid, use_cache)
        hidden = decoder.hidden
        for step in range(n_steps):
            ids = sampler(self._next_logp(hidden, step, min_len), history, generator)
            ids = ids.masked_fill(finished, self.eos_id)
            yield ids
            lengths += ~finished & (ids != self.eos_id)
            finished = finished | (ids == self.eos_id) | (lengths >= max_len)
            if history.shape[1]:
                history = torch.cat([history[:, 1:], ids.unsqueeze(1)], dim=1)
            if step + 1 == n_steps or bool(finished.all()):
                break
            hidden = decoder.feed(self.speech_embedding(ids).unsqueeze(1))

    def _decode_aligned_steps(
        self,
        spk: torch.Tensor,
        text: "KnownText | ArrivingText",
        min_ratio: float,
        max_ratio: float,
        sampler: Sampler,
        generator: torch.Generator | RowRandom | None,
        use_cache: bool = True,
        prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Aligned-layout decoding (:mod:`speech.llm.layout`): ``sos spk t0`` (or ``prompt``, the left-padded
        prefix and mask of :meth:`_aligned_prompt`, before ``t0``), then per step one sampled id per
        item, fed back as itself, or as the next text token when it is ``fill``; eos only once the last text
        token is in (and ``min_ratio`` ids per text token are out), fill only before; at most ``max_ratio``
        ids per text token, and ``max_chunk`` in a row for one text token (then fill, or eos, is forced).
        Yields ``(ids [B], emitted [B])`` per step, ``emitted`` marking new speech ids; finished items yield
        eos. Every item feeds one position per step, so the batch needs no padding."""
        device = spk.device
        b = spk.shape[0]
        sos = self.sos_task_embedding.weight[0].expand(b, 1, -1)
        fed = torch.zeros(b, dtype=torch.long, device=device)  # index of the last text token fed
        if not bool((text.count() > 0).any()):
            return
        first = text.embed(fed)
        if prompt is None:
            head = torch.cat([sos.to(first.dtype), spk.unsqueeze(1).to(first.dtype)], dim=1)
            head_valid = torch.ones(b, 2, dtype=torch.bool, device=device)
        else:
            head, head_valid = prompt[0].to(first.dtype), prompt[1]
        prefix = torch.cat([head, first], dim=1)
        valid = torch.cat([head_valid, head_valid.new_ones(b, 1)], dim=1)
        decoder = PrefixDecoder(self.decoder, self.backbone.config, prefix, valid, use_cache)
        hidden = decoder.hidden
        history = torch.full((b, sampler.window), -1, dtype=torch.long, device=device)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        chunk = torch.zeros(b, dtype=torch.long, device=device)  # speech ids since the last text token
        finished = text.count() == 0
        while True:
            min_len, max_len = length_bounds(text.count(), min_ratio, max_ratio)
            # the bounds count the whole text: an arriving one is read on while its partial bound is reached
            while not text.complete() and bool((lengths >= max_len).any()):
                text.read_more()
                min_len, max_len = length_bounds(text.count(), min_ratio, max_ratio)
            finished = finished | (lengths >= max_len)
            logits = self.speech_head(hidden).float()
            last = text.last(fed)
            over = chunk >= self.max_chunk  # a token that never ends: move on (fill, or eos after the last)
            logits[:, : self.speech_token_size] = logits[:, : self.speech_token_size].masked_fill(
                over.unsqueeze(1), float("-inf"))
            logits[:, self.reserved_id] = float("-inf")
            logits[:, self.fill_id] = logits[:, self.fill_id].masked_fill(last, float("-inf"))
            eos_ok = last & ((lengths >= min_len) | over)
            logits[:, self.eos_id] = logits[:, self.eos_id].masked_fill(~eos_ok, float("-inf"))
            ids = sampler(logits.log_softmax(-1), history, generator).masked_fill(finished, self.eos_id)
            fill = ids == self.fill_id
            emitted = ~finished & ~fill & (ids != self.eos_id)
            if bool(finished.all()):
                return
            yield ids, emitted
            lengths += emitted
            chunk = torch.where(fill, 0, chunk + emitted.long())
            finished = finished | (ids == self.eos_id)
            if history.shape[1]:
                history = torch.where(emitted.unsqueeze(1), torch.cat([history[:, 1:], ids.unsqueeze(1)], 1), history)
            fed = fed + fill
            fed_speech = self.speech_embedding(ids).unsqueeze(1)
            hidden = decoder.feed(torch.where(fill.view(b, 1, 1), text.embed(fed), fed_speech))

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
        prompt_speech_token: torch.Tensor | None = None,
        prompt_speech_token_len: torch.Tensor | None = None,
        sampler: Sampler | None = None,
        min_len_ratio: float | None = None,
        max_len_ratio: float | None = None,
        generator: torch.Generator | RowRandom | None = None,
        use_cache: bool = True,
        prompt_text_token_dur: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech tokens for a batch of texts: ``(tokens [B, N], lengths [B])``, eos excluded, 0-padded.

        The voice comes from ``ref_audio`` (or a precomputed ``spk_vector [B, speaker.dim]``, e.g.
        :meth:`SpeakerExtractor.embed_references` of several clips). With ``prompt_text_token`` and
        ``prompt_speech_token`` the model continues the prompt utterance (one-shot); without them it
        is zero-shot from the reference alone. An aligned-layout LM also needs the prompt's alignment,
        ``prompt_text_token_dur [B, Lp]`` (speech tokens per prompt text token, as in training). Each item
        yields between ``min_len_ratio`` and ``max_len_ratio`` times its text length (prompt text excluded)
        tokens. Batched items are left-padded with exact per-item positions and masks, so a batch decodes as
        each item alone; with a :class:`RowRandom` generator the random draws are per item too, so sampled
        tokens do not depend on the batch either.
        """
        sampler = sampler if sampler is not None else self.sampler
        min_ratio, max_ratio = self._ratios(min_len_ratio, max_len_ratio)
        spk = speaker_input(self.speaker, self.spk_proj, ref_audio, ref_audio_len, spk_vector)
        b, device = text_token.shape[0], text_token.device
        text_token_len = text_token_len.to(device)
        min_len, max_len = length_bounds(text_token_len, min_ratio, max_ratio)
        if self.decode_layout == "aligned":
            prompt = self._aligned_prompt(spk, prompt_text_token, prompt_text_token_len, prompt_text_token_dur,
                                          prompt_speech_token, prompt_speech_token_len)
            tokens = torch.zeros(b, int(max_len.max()) + 1, dtype=torch.long, device=device)
            lengths = torch.zeros(b, dtype=torch.long, device=device)
            rows = torch.arange(b, device=device)
            known = KnownText(self.embed_text, text_token, text_token_len)
            steps = self._decode_aligned_steps(spk, known, min_ratio, max_ratio, sampler, generator, use_cache, prompt)
            for ids, emitted in steps:  # an emitted id goes to its item's next slot; others to a spare last slot
                tokens[rows, torch.where(emitted, lengths, tokens.shape[1] - 1)] = ids
                lengths += emitted
            tokens = tokens[:, :-1].masked_fill(~lengths_to_mask(lengths, tokens.shape[1] - 1), 0)
            return tokens[:, : int(lengths.max()) if b else 0], lengths

        prefix, valid = self._inference_prefix(
            spk,
            text_token,
            text_token_len,
            prompt_text_token,
            prompt_text_token_len,
            prompt_speech_token,
            prompt_speech_token_len,
        )
        tokens = torch.zeros(b, int(max_len.max()), dtype=torch.long, device=device)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        for step, ids in enumerate(self._decode_steps(prefix, valid, min_len, max_len, sampler, generator, use_cache)):
            tokens[:, step] = ids.masked_fill(ids == self.eos_id, 0)
            lengths += ids != self.eos_id
        width = int(lengths.max()) if b else 0
        return tokens[:, :width], lengths

    # ------------------------------------------------------------------ streaming (one request)
    def _ratios(self, min_len_ratio: float | None, max_len_ratio: float | None) -> tuple[float, float]:
        return (
            self.min_len_ratio if min_len_ratio is None else min_len_ratio,
            self.max_len_ratio if max_len_ratio is None else max_len_ratio,
        )

    def _request(
        self,
        spk_vector: torch.Tensor,
        sampler: Sampler | None,
        min_len_ratio: float | None,
        max_len_ratio: float | None,
    ) -> tuple[torch.Tensor, Sampler, float, float]:
        """One streamed request's speaker slot ``[1, H]``, sampler and length ratios (``None``: the model's)."""
        min_ratio, max_ratio = self._ratios(min_len_ratio, max_len_ratio)
        sampler = sampler if sampler is not None else self.sampler
        spk = self.spk_proj(spk_vector.reshape(1, -1).to(self.spk_proj.weight.dtype))
        return spk, sampler, min_ratio, max_ratio

    @torch.inference_mode()
    def generate_stream(
        self,
        text_token: torch.Tensor,
        spk_vector: torch.Tensor,
        *,
        prompt_text_token: torch.Tensor | None = None,
        prompt_speech_token: torch.Tensor | None = None,
        sampler: Sampler | None = None,
        min_len_ratio: float | None = None,
        max_len_ratio: float | None = None,
        generator: torch.Generator | RowRandom | None = None,
        prompt_text_token_dur: torch.Tensor | None = None,
    ) -> Iterator[int]:
        """Uni-stream decoding of one whole text ``[L]``, token by token: the ids :meth:`generate` returns
        for it (same sampler, ratios, generator and prompt), each yielded as soon as it is sampled; never
        eos/fill."""
        spk, sampler, min_ratio, max_ratio = self._request(spk_vector, sampler, min_len_ratio, max_len_ratio)
        text = text_token.reshape(1, -1)
        n_text = torch.tensor([text.shape[1]], device=text.device)
        pt, pt_len = _one_request(prompt_text_token)
        ps, ps_len = _one_request(prompt_speech_token)
        if self.decode_layout == "aligned":
            prompt = self._aligned_prompt(spk, pt, pt_len, _one_request(prompt_text_token_dur)[0], ps, ps_len)
            known = KnownText(self.embed_text, text, n_text)
            steps = self._decode_aligned_steps(spk, known, min_ratio, max_ratio, sampler, generator, prompt=prompt)
            for ids, emitted in steps:
                if bool(emitted[0]):
                    yield int(ids[0])
            return
        prefix, valid = self._inference_prefix(spk, text, n_text, pt, pt_len, ps, ps_len)
        min_len, max_len = length_bounds(n_text, min_ratio, max_ratio)
        for ids in self._decode_steps(prefix, valid, min_len, max_len, sampler, generator):
            if int(ids[0]) == self.eos_id:
                return
            yield int(ids[0])

    @torch.inference_mode()
    def generate_bistream(
        self,
        text_pieces: Iterable[torch.Tensor | list[int]],
        spk_vector: torch.Tensor,
        *,
        prompt_text_token: torch.Tensor | None = None,
        prompt_speech_token: torch.Tensor | None = None,
        sampler: Sampler | None = None,
        min_len_ratio: float | None = None,
        max_len_ratio: float | None = None,
        generator: torch.Generator | RowRandom | None = None,
        use_cache: bool = True,
        prompt_text_token_dur: torch.Tensor | None = None,
    ) -> Iterator[int]:
        """Bi-stream decoding of one request whose text ids arrive in pieces (e.g. from a chat LLM).

        The trained bistream layout (:mod:`speech.llm.layout`), built as text arrives: whenever
        ``a`` text ids are waiting, they are fed and ``b`` speech ids follow (prompt speech ids first,
        teacher-forced, then sampled with eos and fill forbidden); the last of them predicts ``fill`` in
        training, so fill is never sampled nor fed: the next text chunk follows it. When the pieces end,
        the remaining text, ``task`` and any remaining prompt speech are fed and decoding continues to
        eos, within ``min_len_ratio``/``max_len_ratio`` times the text length (prompt excluded). One KV
        cache serves the whole request (``use_cache=False`` recomputes: the test reference). Yields
        speech ids only, each as soon as it is sampled.

        An aligned-layout LM instead reads each text id when it asks for it (samples ``fill``), and looks
        one id ahead (is this the last?), so speech starts after the first two text ids: the ids
        :meth:`generate` gives for the whole text (a prompt needs its ``prompt_text_token_dur`` there too).
        """
        spk, sampler, min_ratio, max_ratio = self._request(spk_vector, sampler, min_len_ratio, max_len_ratio)
        if self.decode_layout == "aligned":  # text tokens are read as the LM asks for them (fill)
            prompt = self._aligned_prompt(spk, *_one_request(prompt_text_token), _one_request(prompt_text_token_dur)[0],
                                          *_one_request(prompt_speech_token))
            text = ArrivingText(self.embed_text, text_pieces, spk.device)
            steps = self._decode_aligned_steps(spk, text, min_ratio, max_ratio, sampler, generator, use_cache, prompt)
            for ids, emitted in steps:
                if bool(emitted[0]):
                    yield int(ids[0])
            return
        a, b = self.mix_ratio
        device = self.sos_task_embedding.weight.device
        sos, task = self.sos_task_embedding.weight.unsqueeze(1).unbind(0)  # [1, H] each
        text: list[int] = [] if prompt_text_token is None else prompt_text_token.reshape(-1).tolist()
        forced: list[int] = [] if prompt_speech_token is None else prompt_speech_token.reshape(-1).tolist()
        history = torch.full((1, sampler.window), -1, dtype=torch.long, device=device)
        cache = DynamicCache(config=self.backbone.config) if use_cache else None
        state = {"pos": 0, "seq": []}
        pending: list[torch.Tensor] = [sos.unsqueeze(0), spk.unsqueeze(1)]  # [1, n, H] pieces not yet fed

        def embed_text(ids: list[int]) -> torch.Tensor:
            return self.embed_text(torch.tensor([ids], dtype=torch.long, device=device))

        def embed_speech(i: int) -> torch.Tensor:
            return self.speech_embedding(torch.tensor([[i]], device=device))

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
            return self._decode(x, None, pos, cache, padded=False)

        def sample(hidden: torch.Tensor, step: int, min_len: int) -> int:
            nonlocal history
            logp = self._next_logp(hidden, step, torch.tensor([min_len], device=device))
            ids = sampler(logp, history, generator)
            if history.shape[1]:
                history = torch.cat([history[:, 1:], ids.unsqueeze(1)], dim=1)
            return int(ids[0])

        n_text, n_out = 0, 0
        for piece in text_pieces:
            piece = piece.reshape(-1).tolist() if isinstance(piece, torch.Tensor) else [int(i) for i in piece]
            text += piece
            n_text += len(piece)
            while len(text) >= a:
                pending.append(embed_text(text[:a]))
                text = text[a:]
                for _ in range(b):
                    if forced:
                        pending.append(embed_speech(forced.pop(0)))
                        continue
                    i = sample(feed(), 0, 1)  # eos is not allowed inside a chunk
                    yield i
                    n_out += 1
                    pending.append(embed_speech(i))
        min_len = int(n_text * min_ratio)
        max_len = max(int(n_text * max_ratio), min_len)
        if text:
            pending.append(embed_text(text))
        pending.append(task.unsqueeze(0))
        pending.extend(embed_speech(i) for i in forced)
        while n_out < max_len:
            i = sample(feed(), n_out, min_len)
            if i == self.eos_id:
                return
            yield i
            n_out += 1
            pending.append(embed_speech(i))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (f"speech_token_size={self.speech_token_size}, params={n / 1e6:.2f}M, "
                f"bistream_prob={self.bistream_prob}, aligned_prob={self.aligned_prob}, "
                f"decode_layout={self.decode_layout}")
