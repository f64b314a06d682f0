"""Word and character error rates, reported the way seed-tts-eval does plus the corpus figure.

- ``wer_mean``: the mean over utterances of each utterance's WER (seed-tts-eval's convention; short
  utterances weigh as much as long ones).
- ``wer_corpus``: total edits over total reference words (the classic corpus WER).

Both texts are normalised with :func:`speech.eval.text.normalize_text` first. An utterance whose
reference is empty after normalisation has no defined WER: it is skipped and counted.
CER is computed on the normalised text with single spaces between words (spaces count as characters).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import jiwer

from speech.eval.text import normalize_text

__all__ = ["ErrorCounts", "ErrorRateSummary", "error_counts", "error_rates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations of one alignment; ``rate`` = (S + D + I) / N."""

    n_ref: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / self.n_ref


def error_counts(ref: str, hyp: str, unit: str = "word") -> ErrorCounts:
    """Align one already-normalised reference with its hypothesis (``unit``: ``word`` or ``char``)."""
    if not ref:
        raise ValueError("empty reference: the error rate is undefined")
    if unit == "word":
        out = jiwer.process_words(ref, hyp)
        n_ref = len(ref.split())
    elif unit == "char":
        out = jiwer.process_characters(ref, hyp)
        n_ref = len(ref)
    else:
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    return ErrorCounts(n_ref, out.substitutions, out.deletions, out.insertions)


@dataclass
class ErrorRateSummary:
    """Corpus figures plus the per-utterance rates (None where the reference was empty)."""

    wer_mean: float
    wer_corpus: float
    cer_mean: float
    cer_corpus: float
    n_scored: int
    n_skipped: int
    per_utt_wer: list[float | None]
    per_utt_cer: list[float | None]

    def as_dict(self) -> dict:
        return asdict(self)


def error_rates(refs: Sequence[str], hyps: Sequence[str], lang: str = "en", normalize: bool = True) -> ErrorRateSummary:
    """WER/CER of a list of (reference, hypothesis) transcripts: mean of utterance rates and corpus rates."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    per_wer: list[float | None] = []
    per_cer: list[float | None] = []
    totals = {"word": [0, 0], "char": [0, 0]}  # [errors, reference length]
    skipped = 0
    for ref, hyp in zip(refs, hyps):
        if normalize:
            ref, hyp = normalize_text(ref, lang), normalize_text(hyp, lang)
        else:
            ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
        if not ref:
            skipped += 1
            per_wer.append(None)
            per_cer.append(None)
            continue
        for unit, per in (("word", per_wer), ("char", per_cer)):
            counts = error_counts(ref, hyp, unit)
            per.append(counts.rate)
            totals[unit][0] += counts.errors
            totals[unit][1] += counts.n_ref
    if skipped:
        log.warning("WER: %d utterance(s) skipped (empty reference after normalisation)", skipped)
    scored_w = [r for r in per_wer if r is not None]
    scored_c = [r for r in per_cer if r is not None]
    nan = float("nan")
    return ErrorRateSummary(
        wer_mean=sum(scored_w) / len(scored_w) if scored_w else nan,
        wer_corpus=totals["word"][0] / totals["word"][1] if totals["word"][1] else nan,
        cer_mean=sum(scored_c) / len(scored_c) if scored_c else nan,
        cer_corpus=totals["char"][0] / totals["char"][1] if totals["char"][1] else nan,
        n_scored=len(scored_w),
        n_skipped=skipped,
        per_utt_wer=per_wer,
        per_utt_cer=per_cer,
    )
