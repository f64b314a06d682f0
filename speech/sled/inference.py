"""Text + a reference voice -> 24 kHz speech through the continuous AR path: SLED LM -> DAC-VAE latents -> codec.

:class:`SledSynthesizer` has the interface of :class:`speech.inference.Synthesizer` (``prepare``,
``synthesize``, ``run``, ``sample_rate``, ``timer``), so ``inference.py --sled CKPT --codec CKPT``
shares its request checks, list handling, outputs and RTF report. One-shot continuation needs no
speech tokenizer here: the prompt's latents come from the codec itself. ``Synthesis.n_tokens``
counts latent frames on this path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from speech.inference import (
    InferenceError,
    Synthesis,
    Synthesizer,
    SynthesisOptions,
    Timer,
    Utterance,
    _load_codec,
    _pad,
    _text_tokenizer,
    _tokenizer_overrides,
    load_model,
)

__all__ = ["SledSynthesizer", "check_sled_compatible"]


def check_sled_compatible(sled: nn.Module, codec: nn.Module, text_tokenizer: Any = None) -> None:
    """Raise :class:`InferenceError` (one line) when the SLED LM and the codec cannot work together."""
    codec_rate = codec.sample_rate / codec.hop
    if sled.latent_dim != codec.latent_dim or abs(sled.latent_rate - codec_rate) > 1e-6:
        raise InferenceError(
            f"the SLED LM writes {sled.latent_dim}-dim latents at {sled.latent_rate:g} Hz, the codec has "
            f"{codec.latent_dim}-dim latents at {codec_rate:g} Hz: use a SLED LM trained on this codec's latents"
        )
    if sled.speaker.sample_rate != codec.sample_rate:
        raise InferenceError(f"sample rates differ: SLED speaker {sled.speaker.sample_rate}, codec {codec.sample_rate}")
    if text_tokenizer is not None and text_tokenizer.vocab_size > sled.decoder.embed_tokens.num_embeddings:
        raise InferenceError(
            f"text tokenizer has {text_tokenizer.vocab_size} ids, the SLED LM embeds "
            f"{sled.decoder.embed_tokens.num_embeddings}: use the tokenizer it was trained with"
        )


class SledSynthesizer(Synthesizer):
    """The SLED LM and the codec (+ text tokenizer), loaded once."""

    one_shot_needs_speech_tokenizer = False

    def __init__(
        self,
        sled: nn.Module,
        codec: nn.Module,
        text_tokenizer: Any,
        device: str | torch.device = "cpu",
        min_prompt_seconds: float = 0.5,
        max_prompt_seconds: float = 15.0,
    ):
        check_sled_compatible(sled, codec, text_tokenizer)
        if not 0 < min_prompt_seconds <= max_prompt_seconds:
            raise InferenceError(
                f"need 0 < min_prompt_seconds <= max_prompt_seconds, got {min_prompt_seconds}, {max_prompt_seconds}"
            )
        self.device = torch.device(device)
        self.sled, self.codec = (m.to(self.device).eval() for m in (sled, codec))
        self.text_tokenizer, self.speech_tokenizer = text_tokenizer, None
        self.sample_rate = int(codec.sample_rate)
        self.min_prompt_seconds, self.max_prompt_seconds = min_prompt_seconds, max_prompt_seconds
        self.timer = Timer()

    @classmethod
    def from_checkpoints(
        cls,
        sled: str | os.PathLike,
        codec: str | os.PathLike,
        *,
        sled_config: str | os.PathLike | None = None,
        codec_config: str | os.PathLike | None = None,
        text_tokenizer: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        trust_config: bool = False,
        **kwargs: Any,
    ) -> "SledSynthesizer":
        """Build both parts from trained checkpoints (configs default to the ones saved with them)."""
        from dac_vae.checkpoint import load_codec

        # The statistics are in the checkpoint.
        over: dict[str, Any] = {"latent_stats": None, **_tokenizer_overrides(text_tokenizer)}
        model, built = load_model(sled, "sled", sled_config, {**over, "sled": {"latent_stats": None}},
                                  trust_config=trust_config)
        tokenizer = _text_tokenizer(text_tokenizer, built, "SLED")
        codec_model = _load_codec(codec, codec_config, trust_config, load_codec)  # a DAC-VAE
        return cls(model, codec_model, tokenizer, device=device, **kwargs)

    @torch.inference_mode()
    def synthesize(self, batch: list[Utterance], options: SynthesisOptions | None = None) -> list[Synthesis]:
        """One forward pass of the SLED LM and the codec over ``batch``; results in the batch's order."""
        from speech.llm.sampling import RowRandom

        opt = options or SynthesisOptions()
        dev, timer = self.device, self.timer
        b = len(batch)
        text, text_len = _pad([u.text_token for u in batch], dev)
        ref, ref_len = _pad([u.prompt for u in batch], dev)
        prompt: dict[str, torch.Tensor] = {}
        if any(u.prompt_text_token is not None for u in batch):
            with timer("prompt", dev):
                has = [u.prompt_text_token is not None for u in batch]
                empty = torch.zeros(0, dtype=torch.long)
                pt, pt_len = _pad([u.prompt_text_token if h else empty for u, h in zip(batch, has)], dev)
                mu, _, mu_len = self.codec.encode(ref, ref_len)
                has_t = torch.tensor(has, device=dev)
                prompt = {"prompt_text_token": pt, "prompt_text_token_len": pt_len, "prompt_latent": mu,
                          "prompt_latent_len": mu_len * has_t}
        with timer("sled", dev):
            latent, latent_len = self.sled.generate(
                text, text_len, spk_vector=self.sled.speaker(ref, ref_len), cfg_w=opt.cfg_w,
                min_len_ratio=opt.min_len_ratio, max_len_ratio=opt.max_len_ratio,
                generator=RowRandom(torch.full((b,), opt.seed, dtype=torch.long, device=dev)), **prompt,
            )
        if latent.shape[-1] == 0:
            raise InferenceError("the SLED LM produced no latent frames (min_len_ratio 0 and an immediate stop)")
        with timer("codec", dev):
            audio = self.codec.decode(latent.to(dev), latent_len).float().cpu()
        hop = self.codec.hop
        frames = latent_len.tolist()
        return [Synthesis(u.utt, audio[i, : n * hop].clone(), n) for i, (u, n) in enumerate(zip(batch, frames))]
