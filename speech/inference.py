"""Text + a reference voice -> 24 kHz speech, with the three trained models loaded once.

    LM (BPE text, speaker vector of the prompt clip)      -> 25 Hz FSQ speech tokens
    flow (tokens, speaker [, prompt tokens + latents])    -> DAC-VAE latents (raw ``mu`` space)
    DAC-VAE decoder                                       -> waveform, exactly tokens / 25 s long

Zero-shot by default: the voice comes from the prompt clip alone. With the prompt's transcript
(``prompt_text``) and a speech tokenizer, the LM continues the prompt utterance and the flow is
conditioned on the prompt's latents (one-shot), as CosyVoice 2 does.

Every utterance is synthesized exactly as it would be alone, whatever batch it is in: the LM
decodes left-padded batches with per-item positions and draws its random numbers per item
(:class:`~speech.llm.sampling.RowRandom`), the flow's noise depends only on the seed and the frame,
and the codec masks padding. So ``--list`` output equals single-utterance output with the same seed.

:func:`main` is the ``inference.py`` CLI (also installed as ``speech-tts``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "InferenceError",
    "Utterance",
    "Synthesis",
    "SynthesisOptions",
    "Synthesizer",
    "check_compatible",
    "read_list",
    "add_model_arguments",
    "add_sampling_arguments",
    "check_model_args",
    "load_synthesizer",
    "load_codec_checkpoint",
    "resolve_device",
    "main",
]

log = logging.getLogger("speech.inference")

TOKEN_RATE = 25  # FSQ tokens per second: the LM's and the flow's common clock


class InferenceError(ValueError):
    """A missing/mismatched model or an unusable input, reported in one line."""


# ------------------------------------------------------------------------------------- loading


def _top_level_keys(text: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z_][\w-]*)\s*:", text, flags=re.MULTILINE))


@contextlib.contextmanager
def _config_file(checkpoint: Path, config: str | os.PathLike | None, what: str) -> Iterator[Path]:
    """The config to rebuild ``checkpoint``'s model: the one given, else the one the trainer wrote
    beside the checkpoint (``config.unresolved.yaml``, else ``config.yaml``), else the copy stored
    inside it (its unresolved text when it has one). The unresolved text keeps ``!ref``, so a
    top-level override (``latent_stats=null``) reaches every object that used the key."""
    from speech.trainer.checkpoint import config_beside, read_config_text

    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise InferenceError(f"{what} config not found: {path}")
        yield path
        return
    beside = config_beside(checkpoint.parent)
    if beside is not None:
        yield beside
        return
    text = read_config_text(checkpoint, unresolved=True) if checkpoint.is_file() else None
    if not text:
        raise InferenceError(
            f"{what} checkpoint {checkpoint} has no config.yaml beside it and none stored inside: give --{what}_config"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        yield path


def _load_state(model: nn.Module, checkpoint: Path, what: str, ema: bool = False) -> None:
    """Load trained weights, all of them: a missing, unexpected or reshaped tensor is one error line."""
    from speech.trainer.checkpoint import load_weights

    try:
        state = load_weights(checkpoint, ema=ema)
    except (ValueError, RuntimeError, OSError) as exc:
        raise InferenceError(f"{what} checkpoint {checkpoint}: {exc}") from None
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise InferenceError(
                f"{what} checkpoint {checkpoint} does not fit its config: {key} is {tuple(value.shape)} "
                f"in the checkpoint, {tuple(own[key].shape)} in the model"
            )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InferenceError(
            f"{what} checkpoint {checkpoint} does not fit its config: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}) tensors"
        )


def load_model(
    checkpoint: str | os.PathLike,
    key: str,
    config: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    ema: bool = False,
    trust_config: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model under ``key`` of a training config and load its trained weights (eval mode).

    ``overrides`` apply only to top-level keys the config defines (paths the training run needed,
    such as ``latent_stats``, are switched off: the checkpoint carries what they provided).
    The config is built with the allow-list of :mod:`dac_vae.safe_config` unless ``trust_config``.
    Returns the model and the whole built config (for e.g. its ``text_tokenizer``).
    """
    from dac_vae.safe_config import UntrustedConfigError

    from speech.config import ConfigError, load_model_config

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise InferenceError(f"{key} checkpoint not found: {checkpoint}")
    with _config_file(checkpoint, config, key) as path:
        defined = _top_level_keys(path.read_text(encoding="utf-8"))
        if key not in defined:
            raise InferenceError(f"{key} config {path} defines no '{key}:' model (is it another model's config?)")
        over = {k: v for k, v in (overrides or {}).items() if k in defined}
        try:
            built = load_model_config(path, over, trust_config=trust_config)
        except UntrustedConfigError as exc:
            raise InferenceError(f"{key} config {exc}") from None
        except ConfigError as exc:
            first = str(exc).splitlines()[0]
            hint = " (give --text_tokenizer)" if "TextTokenizerError" in first else ""
            raise InferenceError(f"{key} config: {first}{hint}") from None
    model = built[key]
    _load_state(model, checkpoint, key, ema=ema)
    return model.eval(), built


def _tokenizer_overrides(text_tokenizer: str | os.PathLike | None) -> dict[str, Any]:
    """Config overrides that point the text tokenizer at ``text_tokenizer`` (none without one). The saved
    config has its references resolved: the tokenizer's own ``path`` is overridden too."""
    if not text_tokenizer:
        return {}
    return {"text_tokenizer_path": str(text_tokenizer), "text_tokenizer": {"path": str(text_tokenizer)}}


def _text_tokenizer(text_tokenizer: str | os.PathLike | None, built: dict[str, Any], what: str) -> Any:
    """The text tokenizer at ``text_tokenizer``, else the one the ``what`` model's built config names."""
    from speech.text.tokenizer import TextTokenizerError, load_text_tokenizer

    if text_tokenizer:
        try:
            return load_text_tokenizer(text_tokenizer)
        except TextTokenizerError as exc:
            raise InferenceError(str(exc)) from None
    tokenizer = built.get("text_tokenizer")
    if tokenizer is None:
        raise InferenceError(f"the {what} config names no text_tokenizer: give --text_tokenizer")
    return tokenizer


def load_codec_checkpoint(
    codec: str | os.PathLike, codec_config: str | os.PathLike | None = None, trust_config: bool = False,
    loader: Any = None,
) -> nn.Module:
    """The codec checkpoint ``codec`` with its config (given, beside it, or stored inside it); a missing or
    unusable one is an :class:`InferenceError` (one line).

    ``loader(config, checkpoint, trust_config=...)`` builds it; by default
    :func:`flowae.checkpoint.load_any_codec` (DAC-VAE or flowae, by the config's model key)."""
    from dac_vae.checkpoint import CodecLoadError

    if loader is None:
        from flowae.checkpoint import load_any_codec as loader
    codec_path = Path(codec)
    if not codec_path.is_file():
        raise InferenceError(f"codec checkpoint not found: {codec_path}")
    with _config_file(codec_path, codec_config, "codec") as path:
        try:
            return loader(path, codec_path, trust_config=trust_config)
        except CodecLoadError as exc:
            raise InferenceError(f"codec: {exc}") from None


def check_compatible(llm: nn.Module, flow: nn.Module, codec: nn.Module, text_tokenizer: Any = None) -> None:
    """Raise :class:`InferenceError` (one line) when the three models cannot work together."""
    if flow.latent_dim != codec.latent_dim or flow.ratio != codec.latent_ratio:
        raise InferenceError(
            f"the flow predicts {flow.latent_dim}-dim latents at {flow.ratio} frames per token "
            f"({flow.ratio}x), the codec has {codec.latent_dim}-dim latents at {codec.latent_ratio} "
            f"({codec.latent_ratio}x): use a flow trained on this codec's latents"
        )
    frame_rate = codec.sample_rate / codec.hop
    if abs(frame_rate / flow.ratio - TOKEN_RATE) > 1e-6:
        raise InferenceError(
            f"codec frame rate {frame_rate:g} Hz / {flow.ratio} frames per token is not the {TOKEN_RATE} Hz token rate"
        )
    flow_vocab = flow.encoder.embed.num_embeddings
    if flow_vocab < llm.speech_token_size:
        raise InferenceError(
            f"the LM emits {llm.speech_token_size} speech token ids, the flow embeds only {flow_vocab}"
        )
    rates = {"LM speaker": llm.speaker.sample_rate, "codec": codec.sample_rate}
    if flow.speaker is not None:
        rates["flow speaker"] = flow.speaker.sample_rate
    if len(set(rates.values())) > 1:
        raise InferenceError(f"sample rates differ: {', '.join(f'{k} {v}' for k, v in rates.items())}")
    if text_tokenizer is not None:
        n_text = llm.decoder.embed_tokens.num_embeddings
        if text_tokenizer.vocab_size > n_text:
            raise InferenceError(
                f"text tokenizer has {text_tokenizer.vocab_size} ids, the LM embeds {n_text}: "
                "use the tokenizer the LM was trained with"
            )


# ----------------------------------------------------------------------------------- requests


@dataclass
class Utterance:
    """One synthesis request, validated: text ids and the prompt clip at the model rate."""

    utt: str
    text: str
    text_token: torch.Tensor  # [L] int64
    prompt: torch.Tensor  # [S] float32 at the model sample rate
    prompt_path: str = ""
    prompt_text: str | None = None
    prompt_text_token: torch.Tensor | None = None
    speaker: tuple[torch.Tensor, torch.Tensor | None] | None = None  # cached Synthesizer.speaker_vectors(prompt)


@dataclass
class Synthesis:
    utt: str
    audio: torch.Tensor  # [N] float32, N = n_tokens * samples_per_token
    n_tokens: int


@dataclass
class SynthesisOptions:
    """Sampling and solver settings; ``None`` keeps the value the model was configured with."""

    seed: int = 0
    sampling: str = "config"  # config | ras | topk | greedy
    top_k: int = 25
    top_p: float = 0.8
    min_len_ratio: float | None = None
    max_len_ratio: float | None = None
    n_steps: int | None = None
    cfg_w: float | None = None
    solver: str | None = None
    stop_threshold: float | None = None  # the SLED path's stop probability threshold
    flow_streaming: bool = False  # offline: the flow's chunk attention, as streamed (equals stream())

    def sampler(self, default: Any) -> Any:
        from speech.llm.sampling import GreedySampler, RasSampler, TopKTopPSampler

        if self.sampling == "config":
            return default
        if self.sampling == "ras":
            return RasSampler(top_k=self.top_k, top_p=self.top_p)
        if self.sampling == "topk":
            return TopKTopPSampler(top_k=self.top_k, top_p=self.top_p)
        if self.sampling == "greedy":
            return GreedySampler()
        raise InferenceError(f"unknown sampling {self.sampling!r}: choose config, ras, topk or greedy")


@dataclass
class Timer:
    """Seconds spent per stage (synchronised at stage ends only, never inside a loop)."""

    seconds: Counter = field(default_factory=Counter)

    @contextlib.contextmanager
    def __call__(self, name: str, device: torch.device) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds[name] += time.perf_counter() - start


def _pad(seqs: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([s.shape[-1] for s in seqs], dtype=torch.long)
    padded = nn.utils.rnn.pad_sequence([s.reshape(-1) for s in seqs], batch_first=True)
    return padded.to(device), lengths.to(device)


class Synthesizer:
    """The LM, flow and codec (+ text tokenizer, + optional speech tokenizer), loaded once."""

    one_shot_needs_speech_tokenizer = True  # the SLED path takes the prompt's latents from the codec

    def __init__(
        self,
        llm: nn.Module,
        flow: nn.Module,
        codec: nn.Module,
        text_tokenizer: Any,
        speech_tokenizer: Any = None,
        device: str | torch.device = "cpu",
        min_prompt_seconds: float = 0.5,
        max_prompt_seconds: float = 15.0,
    ):
        check_compatible(llm, flow, codec, text_tokenizer)
        if not 0 < min_prompt_seconds <= max_prompt_seconds:
            raise InferenceError(
                f"need 0 < min_prompt_seconds <= max_prompt_seconds, got {min_prompt_seconds}, {max_prompt_seconds}"
            )
        self.device = torch.device(device)
        self.llm, self.flow, self.codec = (m.to(self.device).eval() for m in (llm, flow, codec))
        self.text_tokenizer, self.speech_tokenizer = text_tokenizer, speech_tokenizer
        self.sample_rate = int(codec.sample_rate)
        self.samples_per_token = codec.hop * flow.ratio
        self.min_prompt_seconds, self.max_prompt_seconds = min_prompt_seconds, max_prompt_seconds
        self.timer = Timer()

    @classmethod
    def from_checkpoints(
        cls,
        llm: str | os.PathLike,
        flow: str | os.PathLike,
        codec: str | os.PathLike,
        *,
        llm_config: str | os.PathLike | None = None,
        flow_config: str | os.PathLike | None = None,
        codec_config: str | os.PathLike | None = None,
        text_tokenizer: str | os.PathLike | None = None,
        speech_tokenizer: str | os.PathLike | None = None,
        speech_tokenizer_type: str = "own",
        flow_ema: bool = False,
        device: str | torch.device = "cpu",
        trust_config: bool = False,
        **kwargs: Any,
    ) -> "Synthesizer":
        """Build every part from trained checkpoints; the configs default to the ones saved with them.

        Configs are built with an allow-list of classes (:mod:`dac_vae.safe_config`); ``trust_config``
        lifts it, for configs the user trusts."""
        over = _tokenizer_overrides(text_tokenizer)
        llm_model, llm_built = load_model(llm, "llm", llm_config, over, trust_config=trust_config)
        tokenizer = _text_tokenizer(text_tokenizer, llm_built, "LM")
        # The flow's statistics and speaker weights are in its checkpoint: the training-time files are not needed.
        # (the saved config has its references resolved, so the flow's own arguments are overridden too).
        unused = {"latent_stats": None, "speaker_checkpoint": None}
        flow_model, _ = load_model(flow, "flow", flow_config, {**unused, "flow": unused}, flow_ema, trust_config)
        codec_model = load_codec_checkpoint(codec, codec_config, trust_config)  # DAC-VAE or flowae
        speech_tok = None
        if speech_tokenizer:
            from speech.tokenizer import SpeechTokenizerError, tokenizer_class

            try:
                backend = tokenizer_class(speech_tokenizer_type)
                trust = {"trust_config": True} if trust_config else {}  # a module:Class backend may not know it
                speech_tok = backend.from_checkpoint(speech_tokenizer, device=device, **trust)
            except (SpeechTokenizerError, FileNotFoundError, ValueError) as exc:
                raise InferenceError(f"speech tokenizer: {exc}") from None
        return cls(llm_model, flow_model, codec_model, tokenizer, speech_tok, device=device, **kwargs)

    # ---------------------------------------------------------------------------- requests

    def prepare(self, utt: str, text: str, prompt_wav: str | os.PathLike, prompt_text: str | None = None) -> Utterance:
        """Validate one request; an unusable one raises :class:`InferenceError` naming why.

        Prompts shorter than ``min_prompt_seconds`` are refused (too little voice to clone); longer
        than ``max_prompt_seconds`` are cut to their first ``max_prompt_seconds`` (a warning), unless
        a transcript is given: it would no longer match, so that request is refused.
        """
        if not isinstance(text, str) or not text.strip():
            raise InferenceError("empty text")
        text_token = self.text_tokenizer.encode(text.strip())
        if not text_token:
            raise InferenceError(f"text {text!r} gives no tokens")
        wav, prompt_text, prompt_ids = self._prompt(utt, prompt_wav, prompt_text)
        return Utterance(
            utt=utt,
            text=text.strip(),
            text_token=torch.tensor(text_token, dtype=torch.long),
            prompt=wav,
            prompt_path=str(prompt_wav),
            prompt_text=prompt_text,
            prompt_text_token=prompt_ids,
        )

    def _prompt(
        self, utt: str, prompt_wav: str | os.PathLike, prompt_text: str | None
    ) -> tuple[torch.Tensor, str | None, torch.Tensor | None]:
        """The prompt clip at the model rate, its transcript and the transcript's ids (see :meth:`prepare`)."""
        from speech.audio import AudioError, load_audio

        if prompt_wav is None or str(prompt_wav) == "":
            raise InferenceError("no prompt wav given")
        try:
            wav, _ = load_audio(prompt_wav, self.sample_rate)
        except AudioError as exc:
            raise InferenceError(f"prompt wav {exc}") from None
        seconds = wav.numel() / self.sample_rate
        if seconds < self.min_prompt_seconds:
            raise InferenceError(
                f"prompt wav {prompt_wav} is {seconds:.2f} s, shorter than {self.min_prompt_seconds:g} s"
            )
        if not float(wav.abs().max()) > 0:
            raise InferenceError(f"prompt wav {prompt_wav} is silent")
        prompt_text = prompt_text.strip() if isinstance(prompt_text, str) and prompt_text.strip() else None
        if seconds > self.max_prompt_seconds:
            if prompt_text is not None:
                raise InferenceError(
                    f"prompt wav {prompt_wav} is {seconds:.1f} s, longer than {self.max_prompt_seconds:g} s, "
                    "and cannot be cut while its transcript is given: cut it, or drop the prompt text"
                )
            log.warning("%s: prompt is %.1f s, using its first %g s", utt, seconds, self.max_prompt_seconds)
            wav = wav[: int(self.max_prompt_seconds * self.sample_rate)]
        prompt_ids = None
        if prompt_text is not None:
            if self.speech_tokenizer is None and self.one_shot_needs_speech_tokenizer:
                raise InferenceError("a prompt text needs a speech tokenizer for the prompt (--speech_tokenizer)")
            prompt_ids = torch.tensor(self.text_tokenizer.encode(prompt_text), dtype=torch.long)
        return wav, prompt_text, prompt_ids

    # --------------------------------------------------------------------------- synthesis

    @torch.inference_mode()
    def speaker_vectors(self, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM's and the flow's (``None`` without a flow speaker) speaker vectors of one prompt clip
        ``[S]``: computed once for a voice used often, then given as ``Utterance.speaker``."""
        ref, ref_len = _pad([prompt], self.device)
        flow_spk = self.flow.speaker(ref, ref_len)[0] if self.flow.speaker is not None else None
        return self.llm.speaker(ref, ref_len)[0], flow_spk

    def _one_shot_prompt(self, batch: list[Utterance]) -> dict[str, torch.Tensor]:
        """Prompt text ids, speech tokens and raw latents for the items that have a transcript."""
        from speech.audio import resample

        dev, has = self.device, [u.prompt_text_token is not None for u in batch]
        empty = torch.zeros(0, dtype=torch.long)
        text_ids = [u.prompt_text_token if h else empty for u, h in zip(batch, has)]
        with_text = [u for u, h in zip(batch, has) if h]
        sr_tok = self.speech_tokenizer.sample_rate
        wavs = [resample(u.prompt, self.sample_rate, sr_tok) for u in with_text]

        def per_item(values: list, fill: Any) -> list:
            """Values of the items with a transcript, spread over the whole batch (``fill`` for the others)."""
            it = iter(values)
            return [next(it) if h else fill for h in has]

        aligned = {}
        if self._aligned_lm():  # its prompt goes in the aligned layout: speech tokens per prompt text token
            tokens, durs = self._tokenize_and_align(with_text, wavs)
            aligned["pt_dur"] = _pad(per_item([d.clamp_min(0) for d in durs], empty), dev)[0]
            lm_ok = per_item([bool((d >= 0).all()) for d in durs], False)  # the LM skips a prompt that did not align
        else:
            tokens, lm_ok = self.speech_tokenizer.tokenize(wavs), has
        lm_ok = torch.tensor(lm_ok, device=dev)
        pt, pt_len = _pad(text_ids, dev)
        ps, ps_len = _pad(per_item([t.long() for t in tokens], empty), dev)
        audio, audio_len = _pad([u.prompt for u in batch], dev)
        mu, _, _ = self.codec.encode(audio, audio_len)
        return {"pt": pt, "pt_len": pt_len, "ps": ps, "ps_len": ps_len, "latent": mu, **aligned,
                "lm_pt_len": pt_len * lm_ok, "lm_ps_len": ps_len * lm_ok}

    def _aligned_lm(self) -> bool:
        return getattr(self.llm, "decode_layout", "unistream") == "aligned"

    def _tokenize_and_align(
        self, batch: list[Utterance], wavs: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Prompt speech ids and speech tokens per prompt text token (as the LM trained on, from the speech
        tokenizer's CTC alignment); all -1 for a prompt that did not align (a warning says which)."""
        from speech.tokenizer.align import token_durations

        tok = self.speech_tokenizer
        unaligned = [torch.full((len(u.prompt_text_token),), -1, dtype=torch.long) for u in batch]
        if not hasattr(tok, "tokenize_and_align") or getattr(tok, "chars", None) is None:
            log.warning("the speech tokenizer cannot align a prompt's transcript (it has no CTC head): the "
                        "aligned-layout LM speaks from the prompt's voice, the flow still continues the prompt")
            return tok.tokenize(wavs), unaligned
        ids, chars = tok.tokenize_and_align(wavs, [u.prompt_text for u in batch])
        durs = []
        for u, c, none in zip(batch, chars, unaligned):
            if c is None or c.numel() != len(u.prompt_text):
                log.warning("%s: the prompt's transcript did not align to its audio; the LM speaks from its voice",
                            u.utt)
                durs.append(none)
            else:
                starts = self.text_tokenizer.char_starts(u.prompt_text, u.prompt_text_token.tolist())
                durs.append(token_durations(c, starts))
        return ids, durs

    def _lm_prompt(self, prompt: dict[str, torch.Tensor] | None) -> bool:
        """Whether the LM continues the one-shot prompt of any item. An aligned-layout LM needs the prompt's
        alignment to its text (from the speech tokenizer's CTC head, as in training); without one it speaks
        from the prompt's voice alone, and the flow still continues the prompt."""
        return prompt is not None and bool((prompt["lm_pt_len"] > 0).any())

    @torch.inference_mode()
    def synthesize(self, batch: list[Utterance], options: SynthesisOptions | None = None) -> list[Synthesis]:
        """One forward pass of each model over ``batch``; results in the batch's order."""
        from speech.llm.sampling import RowRandom

        opt = options or SynthesisOptions()
        dev, timer = self.device, self.timer
        b = len(batch)
        text, text_len = _pad([u.text_token for u in batch], dev)
        ref, ref_len = _pad([u.prompt for u in batch], dev)
        one_shot = self.speech_tokenizer is not None and any(u.prompt_text_token is not None for u in batch)
        cached = all(u.speaker is not None for u in batch) and bool(batch)
        with timer("prompt", dev):
            prompt = self._one_shot_prompt(batch) if one_shot else None
        with timer("lm", dev):
            spk = torch.stack([u.speaker[0] for u in batch]).to(dev) if cached else self.llm.speaker(ref, ref_len)
            lm_prompt = prompt if self._lm_prompt(prompt) else None
            tokens, n_tok = self.llm.generate(
                text,
                text_len,
                spk_vector=spk,
                prompt_text_token=lm_prompt["pt"] if lm_prompt else None,
                prompt_text_token_len=lm_prompt["lm_pt_len"] if lm_prompt else None,
                prompt_text_token_dur=lm_prompt.get("pt_dur") if lm_prompt else None,
                prompt_speech_token=lm_prompt["ps"] if lm_prompt else None,
                prompt_speech_token_len=lm_prompt["lm_ps_len"] if lm_prompt else None,
                sampler=opt.sampler(self.llm.sampler),
                min_len_ratio=opt.min_len_ratio,
                max_len_ratio=opt.max_len_ratio,
                generator=RowRandom(torch.full((b,), opt.seed, dtype=torch.long, device=dev)),
            )
        if tokens.shape[1] == 0:
            raise InferenceError("the LM produced no speech tokens (min_len_ratio 0 and an immediate eos)")
        with timer("flow", dev):
            flow_cached = cached and self.flow.speaker is not None
            latent, latent_len = self.flow.sample(
                tokens,
                n_tok,
                spk=torch.stack([u.speaker[1] for u in batch]).to(dev) if flow_cached else None,
                ref_audio=ref,
                ref_audio_len=ref_len,
                prompt_token=prompt["ps"] if prompt else None,
                prompt_token_len=prompt["ps_len"] if prompt else None,
                prompt_latent=prompt["latent"] if prompt else None,
                n_steps=opt.n_steps,
                cfg_w=opt.cfg_w,
                solver=opt.solver,
                seed=opt.seed,
                streaming=opt.flow_streaming,
            )
        with timer("codec", dev):
            audio = self.codec.decode(latent.to(dev), latent_len).float().cpu()
        n_tok = n_tok.cpu().tolist()
        spt = self.samples_per_token
        return [Synthesis(u.utt, audio[i, : n * spt].clone(), n) for i, (u, n) in enumerate(zip(batch, n_tok))]

    def stream(
        self,
        text: str | Iterable[str | Sequence[int] | torch.Tensor],
        prompt_wav: str | os.PathLike,
        prompt_text: str | None = None,
        options: SynthesisOptions | None = None,
        chunk_tokens: int | None = None,
        utt: str = "stream",
    ) -> Iterator[torch.Tensor]:
        """Synthesize one request as a stream: float32 audio chunks ``[n]`` at ``sample_rate``.

        ``text`` whole (a string: uni-stream LM decoding, the tokens :meth:`synthesize` gets) or an
        iterable of pieces as they arrive (strings, or lists/tensors of text ids: bi-stream decoding,
        speech starts after the first 5 text tokens). Every ``chunk_tokens`` speech tokens (default:
        the flow's chunk, 25) plus the flow's look-ahead, the flow solves that chunk (chunk-causal,
        per-frame seeded noise) and the codec decodes what its receptive field allows; so the audio,
        concatenated, equals ``synthesize`` with ``flow_streaming=True`` for the same tokens (float
        tolerance). The flow must be causal (configs/flow_stream.yaml). The request is checked now
        (prompt, models: :class:`InferenceError`); everything else is local to the returned
        generator, so requests can be interleaved.
        """
        self._check_streamable(chunk_tokens)
        opt = options or SynthesisOptions()
        if isinstance(text, str):
            request = self.prepare(utt, text, prompt_wav, prompt_text)
            pieces = None
        else:
            wav, p_text, p_ids = self._prompt(utt, prompt_wav, prompt_text)
            request = Utterance(utt, "", torch.zeros(0, dtype=torch.long), wav, str(prompt_wav), p_text, p_ids)
            pieces = iter(text)
        return self._start_stream(request, pieces, opt, chunk_tokens)

    def stream_utterance(
        self, request: Utterance, options: SynthesisOptions | None = None, chunk_tokens: int | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`stream` for an already prepared request (:meth:`prepare`; the server's uploads and
        registered voices): the same chunks as ``stream(request.text, <its clip>, ...)``."""
        self._check_streamable(chunk_tokens)
        return self._start_stream(request, None, options or SynthesisOptions(), chunk_tokens)

    # Text given in pieces is decoded bi-stream (the LM starts before the text is complete).
    pieces_bistream = True

    def stream_chunk(self, chunk_tokens: int | None = None) -> int:
        """The chunk :meth:`stream` works in for ``chunk_tokens`` (``None``: the default), in speech tokens
        per flow chunk here; :class:`InferenceError` when this synthesizer cannot stream it."""
        from dac_vae.streaming import ChunkedDecoder

        from speech.flow.streaming import StreamingError, check_streamable

        try:
            chunk = check_streamable(self.flow, chunk_tokens)
            ChunkedDecoder(self.codec)
        except (StreamingError, TypeError) as exc:
            raise InferenceError(f"cannot stream: {exc}") from None
        return chunk

    def _check_streamable(self, chunk_tokens: int | None) -> None:
        self.stream_chunk(chunk_tokens)

    def _start_stream(
        self, request: Utterance, pieces: Iterator | None, opt: SynthesisOptions, chunk_tokens: int | None
    ) -> Iterator[torch.Tensor]:
        if request.prompt_text_token is not None and self.speech_tokenizer is None:
            raise InferenceError("a prompt text needs a speech tokenizer for the prompt (--speech_tokenizer)")
        return self._stream(request, pieces, opt, opt.sampler(self.llm.sampler), chunk_tokens)

    @torch.inference_mode()
    def _stream(
        self, request: Utterance, pieces: Iterator | None, opt: SynthesisOptions, sampler: Any, chunk_tokens: int | None
    ) -> Iterator[torch.Tensor]:
        from speech.flow.streaming import stream_latents
        from speech.llm.sampling import RowRandom

        dev = self.device
        ref, ref_len = _pad([request.prompt], dev)
        prompt = self._one_shot_prompt([request]) if request.prompt_text_token is not None else None
        p_text = prompt["pt"][0] if prompt else None
        p_speech = prompt["ps"][0, : int(prompt["ps_len"][0])] if prompt else None
        lm_prompt = self._lm_prompt(prompt)
        lm_kw = dict(
            prompt_text_token=p_text if lm_prompt else None,
            prompt_speech_token=p_speech if lm_prompt else None,
            prompt_text_token_dur=prompt["pt_dur"][0] if lm_prompt and "pt_dur" in prompt else None,
            sampler=sampler,
            min_len_ratio=opt.min_len_ratio,
            max_len_ratio=opt.max_len_ratio,
            generator=RowRandom(torch.full((1,), opt.seed, dtype=torch.long, device=dev)),
        )
        spk = self.llm.speaker(ref, ref_len)
        n_text = [0]
        if pieces is None:
            tokens = self.llm.generate_stream(request.text_token.to(dev), spk, **lm_kw)
        else:
            tokens = self.llm.generate_bistream(self._text_ids(pieces, n_text), spk, **lm_kw)
        latents = stream_latents(
            self.flow,
            tokens,
            ref_audio=ref,
            ref_audio_len=ref_len,
            prompt_token=p_speech,
            prompt_latent=prompt["latent"] if prompt else None,
            n_steps=opt.n_steps,
            cfg_w=opt.cfg_w,
            solver=opt.solver,
            seed=opt.seed,
            chunk_tokens=chunk_tokens,
        )
        n_out = yield from self._decode_stream(latents)
        if pieces is not None and n_text[0] == 0:
            raise InferenceError("empty text")
        if n_out == 0:
            raise InferenceError("the LM produced no speech tokens (min_len_ratio 0 and an immediate eos)")

    def _decode_stream(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Latent chunks ``[1, D, n]`` (raw ``mu``) as they arrive -> float32 audio chunks ``[m]``, each
        as soon as the codec's receptive field allows (:class:`dac_vae.streaming.ChunkedDecoder`: the
        audio, concatenated, equals one decode of all the latents). Returns the samples yielded."""
        from dac_vae.streaming import ChunkedDecoder

        decoder, n_out = ChunkedDecoder(self.codec), 0
        for latent in latents:
            audio = decoder.push(latent.to(self.device))
            if audio.shape[-1]:
                n_out += audio.shape[-1]
                yield audio[0].float().cpu()
        audio = decoder.flush()
        if audio.shape[-1]:
            n_out += audio.shape[-1]
            yield audio[0].float().cpu()
        return n_out

    def _text_ids(self, pieces: Iterator, count: list[int]) -> Iterator[list[int]]:
        """Text pieces -> text ids as soon as they are final. Id pieces pass through; string pieces are
        tokenized up to the last whitespace seen (a word may continue in the next piece), so the ids
        equal the tokenization of the whole text for a tokenizer that splits words at spaces."""
        text, released = "", 0
        for piece in pieces:
            if not isinstance(piece, str):
                ids = piece.reshape(-1).tolist() if isinstance(piece, torch.Tensor) else [int(i) for i in piece]
                count[0] += len(ids)
                yield ids
                continue
            text += piece
            body = text.lstrip()
            cut = max(body.rfind(" "), body.rfind("\n"), body.rfind("\t"))
            if cut > 0:
                ids = self.text_tokenizer.encode(body[:cut])
                count[0] += len(ids) - released
                yield ids[released:]
                released = len(ids)
        body = text.strip()
        if body:
            ids = self.text_tokenizer.encode(body)
            count[0] += len(ids) - released
            yield ids[released:]

    def run(
        self, utterances: list[Utterance], options: SynthesisOptions | None = None, batch_size: int = 8
    ) -> Iterator[Synthesis]:
        """Synthesize many requests, ``batch_size`` per forward, grouped by text length (longest first)."""
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted(range(len(utterances)), key=lambda i: -utterances[i].text_token.numel())
        for start in range(0, len(order), batch_size):
            yield from self.synthesize([utterances[i] for i in order[start : start + batch_size]], options)


# ---------------------------------------------------------------------------------------- lists


def read_list(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Requests from JSON lines (``utt``, ``text``, ``prompt_wav``, optional ``prompt_text``) or TSV
    (``utt<TAB>text<TAB>prompt_wav[<TAB>prompt_text]``).

    A relative ``prompt_wav`` is found beside the list first, then from the working directory.
    Unreadable lines are returned with an ``error`` entry (counted and skipped by the caller).
    """
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"list not found: {path}")
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if path.suffix == ".tsv" or (not line.lstrip().startswith("{") and "\t" in line):
            fields = line.split("\t")
            if len(fields) < 3:
                rows.append({"utt": f"line{n}", "error": "TSV line needs utt, text and prompt_wav"})
                continue
            row = dict(zip(("utt", "text", "prompt_wav", "prompt_text"), fields))
        else:
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                rows.append({"utt": f"line{n}", "error": f"bad JSON ({exc})"})
                continue
        row["utt"] = str(row.get("utt") or f"line{n}")
        wav = row.get("prompt_wav")
        if isinstance(wav, str) and wav and not Path(wav).is_absolute():
            beside = path.parent / wav
            row["prompt_wav"] = str(beside if beside.exists() or not Path(wav).exists() else Path(wav))
        rows.append(row)
    return rows


def _safe_name(utt: str) -> bool:
    return bool(utt) and utt not in (".", "..") and "/" not in utt and "\\" not in utt and "\0" not in utt


# ------------------------------------------------------------------------------------------ CLI


def add_model_arguments(group: Any) -> None:
    """The model flags (checkpoints, configs, tokenizers, ``--trust_config``), in ``group``: the "models" group
    of this script and of ``speech-serve``; :func:`check_model_args` checks them, :func:`load_synthesizer` loads."""
    group.add_argument("--llm", help="Stage 1 LM checkpoint (with --flow: the two-stage path)")
    group.add_argument("--flow", help="Stage 2 flow checkpoint")
    group.add_argument("--sled", help="continuous AR (SLED) checkpoint: replaces --llm and --flow (--sled_config)")
    group.add_argument("--sled_config", help="default: config.yaml beside --sled")
    group.add_argument("--codec", required=True, help="codec checkpoint: DAC-VAE or flowae")
    group.add_argument("--llm_config", help="default: config.yaml beside --llm")
    group.add_argument("--flow_config", help="default: config.yaml beside --flow")
    group.add_argument("--codec_config", help="default: config.yaml beside --codec")
    group.add_argument("--flow_ema", action="store_true", help="use the EMA weights of a trainer flow checkpoint")
    group.add_argument("--text_tokenizer", help="BPE tokenizer.json or tokenizer directory (default: the LM config's)")
    group.add_argument("--speech_tokenizer", help="FSQ tokenizer checkpoint, needed for prompt texts (one-shot)")
    group.add_argument("--speech_tokenizer_type", default="own", help="own (trained here) or s3 (default: own)")
    group.add_argument("--trust_config", action="store_true",
                       help="build the models' configs even if they name code outside the allow-list "
                       "(only for configs you trust)")


def add_sampling_arguments(group: Any) -> None:
    """The sampling flags that fill :class:`SynthesisOptions` (all but ``--seed`` and ``--flow_streaming``)."""
    group.add_argument("--sampling", default="config", choices=["config", "ras", "topk", "greedy"],
                       help="LM token sampling (default: the LM config's sampler)")
    group.add_argument("--top_k", type=int, default=25, help="for --sampling ras|topk (default: 25)")
    group.add_argument("--top_p", type=float, default=0.8, help="for --sampling ras|topk (default: 0.8)")
    group.add_argument("--min_len_ratio", type=float,
                       help="fewest speech tokens (--sled: latent frames) per text token (default: LM/SLED config)")
    group.add_argument("--max_len_ratio", type=float,
                       help="most speech tokens (--sled: latent frames) per text token (default: LM/SLED config)")
    group.add_argument("--n_steps", type=int, help="flow ODE steps (default: flow config)")
    group.add_argument("--cfg_w", type=float,
                       help="classifier-free guidance weight of the flow (--sled: of the SLED LM) (default: its config)")
    group.add_argument("--solver", choices=["euler", "midpoint"], help="flow ODE solver (default: flow config)")
    group.add_argument("--stop_threshold", type=float,
                       help="--sled: stop when the stop head's probability exceeds this (default: SLED config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference.py",
        description="Text + a reference voice -> 24 kHz speech with trained LM, flow and codec checkpoints "
        "(or a continuous AR SLED LM and a codec).",
        epilog=(
            "examples:\n"
            "  python inference.py --llm exp/demo/llm/final.pt --flow exp/demo/flow/final.pt \\\n"
            "      --codec exp/demo/dac_vae/final.pt --text 'Hello there.' --prompt_wav ref.wav --out hello.wav\n"
            "  python inference.py --llm ... --flow ... --codec ... --list test.jsonl --out_dir synth/\n"
            "  python inference.py --sled exp/demo/sled/final.pt --codec exp/demo/dac_vae/final.pt \\\n"
            "      --text 'Hello there.' --prompt_wav ref.wav --out hello.wav [--stream]\n"
            "Configs default to config.yaml beside each checkpoint (or the copy inside it)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser.add_argument_group("models"))
    i = parser.add_argument_group("input / output (one utterance, or a list)")
    i.add_argument("--text", help="text to speak")
    i.add_argument("--prompt_wav", help="reference clip of the voice to clone")
    i.add_argument("--prompt_text", help="transcript of --prompt_wav (optional: one-shot continuation, with "
                   "--speech_tokenizer; an aligned-layout LM needs the tokenizer's CTC head to align it)")
    i.add_argument("--out", help="output wav (with --text)")
    i.add_argument("--list", help="JSON lines (utt, text, prompt_wav[, prompt_text]) or TSV of requests")
    i.add_argument("--out_dir", help="folder for <utt>.wav, synthesis.jsonl and rtf.json (with --list)")
    s = parser.add_argument_group("sampling")
    s.add_argument("--seed", type=int, default=0, help="same seed, same output (default: 0)")
    add_sampling_arguments(s)
    s.add_argument("--flow_streaming", action="store_true",
                   help="offline synthesis with the flow's chunk attention: what --stream gives (a causal flow)")
    t = parser.add_argument_group("streaming (one utterance; two-stage: a causal flow, e.g. configs/flow_stream.yaml; "
                                  "--sled: a codec with a bounded receptive field)")
    t.add_argument("--stream", action="store_true",
                   help="write the wav as audio chunks arrive; prints first-chunk latency and RTF, "
                   "writes <out>.rtf.json")
    t.add_argument("--text_pieces", type=int, metavar="N",
                   help="simulate text arriving N BPE tokens at a time (bi-stream decoding; --sled: only for a "
                   "model trained with bistream_prob > 0, else the whole text is awaited)")
    t.add_argument("--chunk_tokens", type=int,
                   help="speech tokens per flow chunk (default: the flow's, 25); --sled: AR steps per codec chunk "
                   "(default: about 0.5 s)")
    t.add_argument("--compare_offline", action="store_true",
                   help="also synthesize offline (--flow_streaming) and record the largest difference")
    r = parser.add_argument_group("running")
    r.add_argument("--batch_size", type=int, default=8, help="utterances per forward pass with --list (default: 8)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    r.add_argument("--min_prompt_seconds", type=float, default=0.5, help="shorter prompts are refused (default: 0.5)")
    r.add_argument("--max_prompt_seconds", type=float, default=15.0,
                   help="longer prompts are cut to this (refused with --prompt_text) (default: 15)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_model_args(parser, args)
    single = args.text is not None or args.out is not None or args.prompt_wav is not None
    if args.list and single:
        parser.error("give either --list/--out_dir or --text/--prompt_wav/--out, not both")
    if args.list:
        if not args.out_dir:
            parser.error("--list needs --out_dir")
    else:
        missing = [f"--{k}" for k in ("text", "prompt_wav", "out") if getattr(args, k) is None]
        if missing:
            parser.error(f"missing {', '.join(missing)} (or give --list and --out_dir)")
    if args.list and args.stream:
        parser.error("--stream synthesizes one utterance (--text/--prompt_wav/--out), not a --list")
    if not args.stream and (args.text_pieces is not None or args.chunk_tokens is not None or args.compare_offline):
        parser.error("--text_pieces, --chunk_tokens and --compare_offline need --stream")
    if args.text_pieces is not None and args.text_pieces < 1:
        parser.error("--text_pieces must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if args.n_steps is not None and args.n_steps < 1:
        parser.error("--n_steps must be >= 1")


def check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The models of :func:`add_model_arguments`: ``--sled`` or ``--llm`` and ``--flow`` (usage error otherwise)."""
    if args.sled and (args.llm or args.flow):
        parser.error("give either --sled or --llm and --flow, not both")
    if not args.sled and not (args.llm and args.flow):
        parser.error("give --llm and --flow (two-stage), or --sled (continuous AR)")


def load_synthesizer(args: argparse.Namespace, device: torch.device) -> "Synthesizer":
    """The synthesizer the model flags of :func:`add_model_arguments` name (``inference.py``, ``speech-serve``):
    a :class:`~speech.sled.inference.SledSynthesizer` for ``--sled``, else the two-stage :class:`Synthesizer`."""
    common = dict(codec_config=args.codec_config, text_tokenizer=args.text_tokenizer, device=device,
                  trust_config=args.trust_config, min_prompt_seconds=args.min_prompt_seconds,
                  max_prompt_seconds=args.max_prompt_seconds)
    if args.sled:
        from speech.sled.inference import SledSynthesizer

        return SledSynthesizer.from_checkpoints(args.sled, args.codec, sled_config=args.sled_config, **common)
    return Synthesizer.from_checkpoints(
        args.llm, args.flow, args.codec, llm_config=args.llm_config, flow_config=args.flow_config,
        speech_tokenizer=args.speech_tokenizer, speech_tokenizer_type=args.speech_tokenizer_type,
        flow_ema=args.flow_ema, **common,
    )


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_cli(args: argparse.Namespace) -> int:
    """Load, validate every request, synthesize, write; returns the exit status."""
    from tqdm import tqdm

    from speech.audio import save_audio
    from speech.trainer.checkpoint import atomic_write_text

    device = resolve_device(args.device)
    if not args.list:  # what can be checked without the models fails before they load
        if not args.text.strip():
            raise InferenceError("empty text")
        if not Path(args.prompt_wav).is_file():
            raise InferenceError(f"prompt wav {args.prompt_wav}: file not found")
    synth = load_synthesizer(args, device)
    options = SynthesisOptions(**{f.name: getattr(args, f.name) for f in fields(SynthesisOptions)})

    if args.stream:
        return _run_stream(args, synth, options, device)
    if not args.list:  # one utterance: any problem is the run's error
        out = Path(args.out)
        utt = synth.prepare(out.stem, args.text, args.prompt_wav, args.prompt_text)
        start = time.perf_counter()
        (result,) = synth.synthesize([utt], options)
        wall = time.perf_counter() - start
        save_audio(out, result.audio, synth.sample_rate)
        seconds = result.audio.numel() / synth.sample_rate
        print(f"wrote {out}: {seconds:.2f} s ({result.n_tokens} tokens) in {wall:.2f} s, RTF {wall / seconds:.3f}")
        return 0

    out_dir = Path(args.out_dir)
    skipped: Counter = Counter()
    requests, seen = [], set()
    for row in read_list(args.list):
        utt = row["utt"]
        try:
            if "error" in row:
                raise InferenceError(row["error"])
            if not _safe_name(utt):
                raise InferenceError(f"utt {utt!r} cannot be a file name")
            if utt in seen:
                raise InferenceError("duplicate utt (the first one is kept)")
            requests.append(synth.prepare(utt, row.get("text"), row.get("prompt_wav"), row.get("prompt_text")))
            seen.add(utt)
        except InferenceError as exc:
            log.warning("skipped %s: %s", utt, exc)
            skipped[str(exc)] += 1
    if not requests:
        print(f"error: nothing to synthesize in {args.list} ({sum(skipped.values())} unusable lines)", file=sys.stderr)
        return 1

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, audio_seconds = [], 0.0
    start = time.perf_counter()
    bar = tqdm(total=len(requests), desc="synthesize", unit="utt", disable=args.quiet, file=sys.stderr)
    by_utt = {r.utt: r for r in requests}
    for result in synth.run(requests, options, args.batch_size):
        wav_path = out_dir / f"{result.utt}.wav"
        save_audio(wav_path, result.audio, synth.sample_rate)
        seconds = result.audio.numel() / synth.sample_rate
        audio_seconds += seconds
        req = by_utt[result.utt]
        manifest.append({"utt": result.utt, "wav": str(wav_path), "text": req.text, "prompt_wav": req.prompt_path,
                         "n_tokens": result.n_tokens, "seconds": round(seconds, 4)})
        bar.update(1)
    bar.close()
    wall = time.perf_counter() - start
    order = {r.utt: i for i, r in enumerate(requests)}
    manifest.sort(key=lambda m: order[m["utt"]])
    (out_dir / "synthesis.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest), encoding="utf-8")
    rtf = {
        "utterances": len(manifest),
        "skipped": sum(skipped.values()),
        "audio_seconds": round(audio_seconds, 3),
        "wall_seconds": round(wall, 3),
        "rtf": round(wall / max(audio_seconds, 1e-9), 4),
        **{f"{k}_seconds": round(v, 3) for k, v in synth.timer.seconds.items()},
        "device": str(device),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    atomic_write_text(out_dir / "rtf.json", json.dumps(rtf, indent=2) + "\n")
    print(
        f"wrote {len(manifest)} wavs to {out_dir} ({len(requests)} requested, {rtf['skipped']} skipped): "
        f"{audio_seconds:.1f} s of audio in {wall:.1f} s, RTF {rtf['rtf']:.3f}"
    )
    for reason, count in skipped.most_common():
        print(f"  skipped {count}: {reason}")
    return 0


def _run_stream(args: argparse.Namespace, synth: Synthesizer, options: SynthesisOptions, device: torch.device) -> int:
    """``--stream``: write the wav chunk by chunk; report first-chunk latency and RTF in ``<out>.rtf.json``."""
    import numpy as np
    import soundfile as sf

    from speech.trainer.checkpoint import atomic_write_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text: Any = args.text
    if args.text_pieces:
        ids = synth.text_tokenizer.encode(args.text.strip())
        text = (ids[i : i + args.text_pieces] for i in range(0, len(ids), args.text_pieces))
    start = time.perf_counter()
    chunks = synth.stream(text, args.prompt_wav, args.prompt_text, options, args.chunk_tokens, utt=out.stem)
    first, times, audio = None, [], []
    with sf.SoundFile(str(out), "w", samplerate=synth.sample_rate, channels=1, subtype="PCM_16") as wav:
        for chunk in chunks:
            now = time.perf_counter()
            first = now - start if first is None else first
            times.append(now)
            wav.write(np.clip(chunk.numpy(), -1.0, 1.0))
            wav.flush()
            audio.append(chunk)
    wall = time.perf_counter() - start
    streamed = torch.cat(audio)
    seconds = streamed.numel() / synth.sample_rate
    gaps = [b - a for a, b in zip(times, times[1:])]
    rtf = {
        "utterances": 1,
        "stream": True,
        "text_pieces": args.text_pieces,
        **({"text_pieces_decoding": "bi-stream" if synth.pieces_bistream else "uni-stream (the whole text awaited)"}
           if args.text_pieces else {}),
        "chunk_tokens": synth.stream_chunk(args.chunk_tokens),
        "chunks": len(audio),
        "audio_seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "rtf": round(wall / max(seconds, 1e-9), 4),
        "first_chunk_seconds": round(first, 3),
        "max_chunk_gap_seconds": round(max(gaps), 3) if gaps else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if args.compare_offline:
        offline_opt = SynthesisOptions(**{**options.__dict__, "flow_streaming": True})
        if args.text_pieces and synth.pieces_bistream:  # bi-stream differs from uni-stream: compare the same path
            rtf["offline_compare"] = "skipped: bi-stream (text in pieces) decodes other tokens than offline"
        else:
            (result,) = synth.synthesize([synth.prepare(out.stem, args.text, args.prompt_wav, args.prompt_text)],
                                         offline_opt)
            same = result.audio.shape == streamed.shape
            rtf["offline_samples_equal"] = same
            rtf["max_abs_diff_vs_offline"] = float((result.audio - streamed).abs().max()) if same else None
    atomic_write_text(out.with_suffix(".rtf.json"), json.dumps(rtf, indent=2) + "\n")
    print(
        f"wrote {out}: {seconds:.2f} s in {len(audio)} chunks, first after {first:.3f} s, "
        f"total {wall:.2f} s, RTF {rtf['rtf']:.3f}"
        + (f", max |streamed - offline| {rtf['max_abs_diff_vs_offline']:.2e}" if "max_abs_diff_vs_offline" in rtf
           and rtf["max_abs_diff_vs_offline"] is not None else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_cli(args)
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
