"""Text + a reference voice -> 24 kHz speech through the continuous AR path: SLED LM -> codec latents -> codec.

:class:`SledSynthesizer` has the interface of :class:`speech.inference.Synthesizer` (``prepare``,
``synthesize``, ``run``, ``stream``, ``stream_utterance``, ``speaker_vectors``, ``sample_rate``,
``timer``), so ``inference.py --sled CKPT --codec CKPT`` and ``speech-serve --sled`` share its
request checks, list handling, streaming, outputs and RTF report. The codec is a DAC-VAE or a
flowae (whichever its config names). One-shot continuation needs no speech tokenizer here: the
prompt's latents come from the codec itself. ``Synthesis.n_tokens`` counts latent frames on this path.

Streaming: the SLED LM yields each patch as it is sampled; every ``chunk`` AR steps the latents go
to the codec's :class:`~dac_vae.streaming.ChunkedDecoder` (the two-stage path's), which returns the
audio its receptive field allows. So the streamed audio equals :meth:`SledSynthesizer.synthesize`
of the same request and seed (float rounding of the chunked decode), whatever the chunk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
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
    _pad,
    _text_tokenizer,
    _tokenizer_overrides,
    load_codec_checkpoint,
    load_model,
)

__all__ = ["SledSynthesizer", "check_sled_compatible"]

STREAM_CHUNK_SECONDS = 0.5  # default streaming chunk: the AR steps of about this much audio


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
        """Build both parts from trained checkpoints (configs default to the ones saved with them); the
        codec is a DAC-VAE or a flowae, by its config's model key (as the two-stage path loads it)."""
        # The statistics are in the checkpoint.
        over: dict[str, Any] = {"latent_stats": None, **_tokenizer_overrides(text_tokenizer)}
        model, built = load_model(sled, "sled", sled_config, {**over, "sled": {"latent_stats": None}},
                                  trust_config=trust_config)
        tokenizer = _text_tokenizer(text_tokenizer, built, "SLED")
        codec_model = load_codec_checkpoint(codec, codec_config, trust_config)  # DAC-VAE or flowae
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
        cached = bool(batch) and all(u.speaker is not None for u in batch)
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
            spk = torch.stack([u.speaker[0] for u in batch]).to(dev) if cached else self.sled.speaker(ref, ref_len)
            latent, latent_len = self.sled.generate(
                text, text_len, spk_vector=spk, cfg_w=opt.cfg_w, stop_threshold=opt.stop_threshold,
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

    @torch.inference_mode()
    def speaker_vectors(self, prompt: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The SLED LM's speaker vector of one prompt clip ``[S]`` (no flow here: ``None`` second), for
        ``Utterance.speaker`` (a voice used often)."""
        ref, ref_len = _pad([prompt], self.device)
        return self.sled.speaker(ref, ref_len)[0], None

    # ---------------------------------------------------------------------------- streaming

    @property
    def pieces_bistream(self) -> bool:  # type: ignore[override]
        """Text in pieces is decoded bi-stream only by a model trained with that layout (``bistream_prob``
        > 0); otherwise the pieces are gathered and the whole text is decoded uni-stream."""
        return self.sled.bistream_prob > 0

    def stream_chunk(self, chunk_tokens: int | None = None) -> int:
        """AR steps (patches of ``patch_size`` latent frames) per codec chunk: ``chunk_tokens``, by default
        those of about ``STREAM_CHUNK_SECONDS`` of audio. :class:`InferenceError` when the codec's
        decoder has no bounded receptive field (``context_frames()``, e.g. a flowae) or the chunk is < 1."""
        from dac_vae.streaming import ChunkedDecoder

        try:
            ChunkedDecoder(self.codec)
        except TypeError as exc:
            raise InferenceError(f"cannot stream: {exc}") from None
        if chunk_tokens is None:
            return max(1, math.ceil(STREAM_CHUNK_SECONDS * self.sled.latent_rate / self.sled.patch_size))
        if int(chunk_tokens) != chunk_tokens or chunk_tokens < 1:
            raise InferenceError(f"cannot stream: chunk_tokens (AR steps per chunk) must be >= 1, got {chunk_tokens}")
        return int(chunk_tokens)

    def _start_stream(
        self, request: Utterance, pieces: Iterator | None, opt: SynthesisOptions, chunk_tokens: int | None
    ) -> Iterator[torch.Tensor]:
        return self._stream(request, pieces, opt, self.stream_chunk(chunk_tokens))

    @torch.inference_mode()
    def _stream(  # type: ignore[override]
        self, request: Utterance, pieces: Iterator | None, opt: SynthesisOptions, chunk: int
    ) -> Iterator[torch.Tensor]:
        from speech.llm.sampling import RowRandom

        dev = self.device
        ref, ref_len = _pad([request.prompt], dev)
        kw: dict[str, Any] = dict(
            cfg_w=opt.cfg_w, stop_threshold=opt.stop_threshold, min_len_ratio=opt.min_len_ratio,
            max_len_ratio=opt.max_len_ratio, generator=RowRandom(torch.full((1,), opt.seed, dtype=torch.long, device=dev)),
        )
        if request.prompt_text_token is not None:  # one-shot: the prompt's latents from the codec
            mu, _, mu_len = self.codec.encode(ref, ref_len)
            kw.update(prompt_text_token=request.prompt_text_token.to(dev), prompt_latent=mu[..., : int(mu_len[0])])
        spk = request.speaker[0].to(dev) if request.speaker is not None else self.sled.speaker(ref, ref_len)[0]
        n_text = [0]
        if pieces is None:
            patches = self.sled.generate_stream(request.text_token.to(dev), spk, **kw)
        elif self.pieces_bistream:
            patches = self.sled.generate_bistream(self._text_ids(pieces, n_text), spk, **kw)
        else:  # not trained on the interleaved layout: wait for the whole text
            ids = [i for piece in self._text_ids(pieces, n_text) for i in piece]
            patches = self.sled.generate_stream(torch.tensor(ids, dtype=torch.long, device=dev), spk, **kw) if ids \
                else iter(())
        n_out = yield from self._decode_stream(_group(patches, chunk))
        if pieces is not None and n_text[0] == 0:
            raise InferenceError("empty text")
        if n_out == 0:
            raise InferenceError("the SLED LM produced no latent frames (min_len_ratio 0 and an immediate stop)")


def _group(patches: Iterable[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    """Frames ``[1, D, k]`` one patch at a time -> ``[1, D, n·k]`` every ``n`` patches (the rest at the end)."""
    buffer: list[torch.Tensor] = []
    for patch in patches:
        buffer.append(patch)
        if len(buffer) == n:
            yield torch.cat(buffer, dim=-1)
            buffer = []
    if buffer:
        yield torch.cat(buffer, dim=-1)
