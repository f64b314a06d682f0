"""Score one system (a folder of ``<utt>.wav``, or any waveform source) against a reference list.

Metric groups, each optional:

- ``codec``: intrusive reconstruction metrics vs. the reference wav (:mod:`speech.eval.codec`);
- ``wer``: the ASR transcript of the test audio vs. the reference text (:mod:`speech.eval.wer`);
- ``sim``: speaker similarity of the test audio to the prompt (else reference) audio;
- ``dnsmos``: the non-intrusive MOS proxy of the test audio.

An utterance whose audio cannot be read is skipped and counted by reason; a metric that fails on one
utterance is NaN for it (logged, counted) and the corpus mean is taken over the finite values.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from speech.audio import AudioError, load_audio, resample
from speech.eval.asr import ASR
from speech.eval.codec import CodecMetrics
from speech.eval.degrade import Degradation
from speech.eval.mos import DNSMOS
from speech.eval.reflist import RefItem
from speech.eval.speaker import SpeakerEncoder, cosine_similarity
from speech.eval.text import normalize_text
from speech.eval.wer import error_rates

__all__ = [
    "METRIC_GROUPS",
    "HypSource",
    "SystemResult",
    "Evaluator",
    "hyp_dir_source",
    "degraded_source",
    "reference_source",
    "codec_source",
]

log = logging.getLogger(__name__)

METRIC_GROUPS = ("codec", "wer", "sim", "dnsmos")

# (item, reference waveform at the evaluator's rate) -> test waveform at that rate; AudioError = skip.
HypSource = Callable[[RefItem, torch.Tensor], torch.Tensor]


def hyp_dir_source(hyp_dir: str | Path, sample_rate: int) -> HypSource:
    """Test audio read from ``hyp_dir/<utt>.wav`` (resampled to ``sample_rate``)."""
    hyp_dir = Path(hyp_dir)

    def source(item: RefItem, ref: torch.Tensor) -> torch.Tensor:
        return load_audio(hyp_dir / f"{item.utt}.wav", sample_rate)[0]

    return source


def reference_source(item: RefItem, ref: torch.Tensor) -> torch.Tensor:
    """The reference itself (the ceiling row: ASR and metrics on ground truth)."""
    return ref


def degraded_source(degradation: Degradation, sample_rate: int, seed: int = 0) -> HypSource:
    """The reference passed through ``degradation``, seeded per utterance (independent of order)."""

    def source(item: RefItem, ref: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + zlib.crc32(item.utt.encode()))
        return degradation(ref, sample_rate, generator)

    return source


def codec_source(codec: torch.nn.Module, sample_rate: int) -> HypSource:
    """The reference encoded and decoded by ``codec`` (a DAC-VAE or flowae in eval mode; the posterior mean),
    each utterance alone: the most a system that renders through this codec can reach on these recordings.
    An utterance the codec fails on (e.g. out of memory) is a counted skip, not the end of the run."""
    from dac_vae.inference import roundtrip

    device = next(codec.parameters()).device

    def source(item: RefItem, ref: torch.Tensor) -> torch.Tensor:
        wav = resample(ref, sample_rate, codec.sample_rate)
        try:
            out = roundtrip(codec, [wav], device)[0]
        except RuntimeError as exc:
            raise AudioError(item.wav, f"codec round trip failed ({type(exc).__name__})") from exc
        return resample(out, codec.sample_rate, sample_rate)

    return source


@dataclass
class SystemResult:
    """Per-utterance rows, corpus summary and skip reasons of one scored system."""

    name: str
    rows: list[dict] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"name": self.name, "summary": self.summary, "skipped": dict(self.skipped), "utterances": self.rows}


def _finite_mean(values: Iterable[float]) -> tuple[float, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return (sum(vals) / len(vals) if vals else float("nan")), len(vals)


class Evaluator:
    """Runs the chosen metric groups over a reference list for any number of systems."""

    def __init__(
        self,
        metrics: Sequence[str] = ("codec", "wer", "sim"),
        sample_rate: int = 24000,
        asr: ASR | None = None,
        speaker: SpeakerEncoder | None = None,
        mos: DNSMOS | None = None,
        lang: str = "en",
    ):
        unknown = set(metrics) - set(METRIC_GROUPS)
        if unknown:
            raise ValueError(f"unknown metric group(s) {sorted(unknown)}: choose from {', '.join(METRIC_GROUPS)}")
        needs = {
            "wer": ("an ASR backend", asr),
            "sim": ("a speaker encoder", speaker),
            "dnsmos": ("a DNSMOS model", mos),
        }
        for group, (what, obj) in needs.items():
            if group in metrics and obj is None:
                raise ValueError(f"metric group {group!r} needs {what}")
        self.metrics = tuple(metrics)
        self.sample_rate = sample_rate
        self.codec = CodecMetrics(sample_rate) if "codec" in metrics else None
        self.asr, self.speaker, self.mos = asr, speaker, mos
        self.lang = lang
        self._ref_cache: dict[str, torch.Tensor] = {}  # path -> speaker embedding

    def _ref_embedding(self, item: RefItem, ref: torch.Tensor) -> torch.Tensor:
        key = item.prompt_wav or item.wav
        if key not in self._ref_cache:
            wav = (
                load_audio(item.prompt_wav, self.speaker.sample_rate)[0]
                if item.prompt_wav
                else resample(ref, self.sample_rate, self.speaker.sample_rate)
            )
            self._ref_cache[key] = self.speaker.embed(wav)
        return self._ref_cache[key]

    def _score(self, item: RefItem, ref: torch.Tensor, hyp: torch.Tensor, row: dict, failed: Counter) -> None:
        at_rate: dict[int, torch.Tensor] = {}

        def hyp_at(sr: int) -> torch.Tensor:
            if sr not in at_rate:
                at_rate[sr] = resample(hyp, self.sample_rate, sr)
            return at_rate[sr]

        groups: dict[str, Callable[[], dict]] = {
            "codec": lambda: self.codec(ref, hyp),
            "wer": lambda: {"hyp_text": self.asr.transcribe(hyp_at(self.asr.sample_rate))},
            "sim": lambda: {
                "sim": cosine_similarity(
                    self._ref_embedding(item, ref), self.speaker.embed(hyp_at(self.speaker.sample_rate))
                )
            },
            "dnsmos": lambda: self.mos(hyp_at(self.mos.sample_rate)),
        }
        for group in self.metrics:
            if group == "wer" and not item.text:
                failed["wer: no reference text"] += 1
                continue
            try:
                row.update(groups[group]())
            except AudioError as exc:
                log.warning("%s: %s skipped (%s)", item.utt, group, exc)
                failed[f"{group}: {exc.reason}"] += 1
            except Exception as exc:  # one bad utterance must not end a corpus run: NaN, logged, counted
                log.warning("%s: %s failed (%s: %s)", item.utt, group, type(exc).__name__, exc)
                failed[f"{group}: {type(exc).__name__}"] += 1

    def evaluate(self, items: Sequence[RefItem], source: HypSource, name: str, progress: bool = True) -> SystemResult:
        """Score one system over ``items``; returns rows, summary (means) and skip counts."""
        result = SystemResult(name)
        for item in tqdm(items, desc=name, unit="utt", disable=not progress, leave=False):
            try:
                ref = load_audio(item.wav, self.sample_rate)[0]
            except AudioError as exc:
                log.warning("%s: reference skipped (%s)", item.utt, exc)
                result.skipped[f"reference: {exc.reason}"] += 1
                continue
            try:
                hyp = source(item, ref)
            except AudioError as exc:
                log.warning("%s: test audio skipped (%s)", item.utt, exc)
                result.skipped[f"test audio: {exc.reason}"] += 1
                continue
            row: dict = {
                "utt": item.utt,
                "ref_s": ref.shape[-1] / self.sample_rate,
                "hyp_s": hyp.shape[-1] / self.sample_rate,
            }
            if item.text is not None:
                row["ref_text"] = item.text
            self._score(item, ref, hyp, row, result.skipped)
            result.rows.append(row)
        result.summary = self.summarize(result.rows)
        return result

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        """Corpus figures: means of the per-utterance metrics, WER/CER (mean of utterances and corpus)."""
        summary: dict[str, float] = {"n": len(rows)}
        numeric = sorted(
            {k for row in rows for k, v in row.items() if isinstance(v, float) and k not in ("ref_s", "hyp_s")}
        )
        for key in numeric:
            summary[key], n = _finite_mean(row.get(key) for row in rows)
            if n < len(rows):
                summary[f"{key}_n"] = n
        scored = [row for row in rows if "hyp_text" in row and row.get("ref_text")]
        if scored:
            rates = error_rates([r["ref_text"] for r in scored], [r["hyp_text"] for r in scored], lang=self.lang)
            for row, wer, cer in zip(scored, rates.per_utt_wer, rates.per_utt_cer):
                row["wer"], row["cer"] = wer, cer
                row["ref_norm"] = normalize_text(row["ref_text"], self.lang)
                row["hyp_norm"] = normalize_text(row["hyp_text"], self.lang)
            summary.update(
                wer=rates.wer_mean,
                wer_corpus=rates.wer_corpus,
                cer=rates.cer_mean,
                cer_corpus=rates.cer_corpus,
                wer_n=rates.n_scored,
            )
        return summary
