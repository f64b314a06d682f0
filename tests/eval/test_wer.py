"""WER/CER: alignment counts vs. a plain Levenshtein, mean-of-utterances vs. corpus aggregation."""

from __future__ import annotations

import math
import random

import pytest

from speech.eval.wer import error_counts, error_rates


def _levenshtein(a: list, b: list) -> int:
    """Textbook dynamic programme: the minimum number of substitutions, deletions and insertions."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_error_counts_match_levenshtein() -> None:
    rng = random.Random(0)
    vocab = "a b c d e".split()
    for _ in range(200):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 8))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        words = error_counts(" ".join(ref), " ".join(hyp), "word")
        assert words.errors == _levenshtein(ref, hyp)
        assert words.n_ref == len(ref)
        chars = error_counts("".join(ref), "".join(hyp), "char")
        assert chars.errors == _levenshtein(list("".join(ref)), list("".join(hyp)))


def test_mean_of_utterances_differs_from_corpus_wer() -> None:
    # utterance 1: 1 deletion of 2 words (50%); utterance 2: perfect, 4 words (0%).
    out = error_rates(["a b", "a b c d"], ["a", "a b c d"], normalize=False)
    assert out.per_utt_wer == [0.5, 0.0]
    assert out.wer_mean == pytest.approx(0.25)  # seed-tts-eval: each utterance weighs the same
    assert out.wer_corpus == pytest.approx(1 / 6)  # 1 error over 6 reference words
    assert out.n_scored == 2 and out.n_skipped == 0


def test_normalisation_applies_to_both_sides() -> None:
    out = error_rates(["We counted 12 boats!"], ["we counted twelve boats"])
    assert out.wer_mean == 0.0 and out.cer_mean == 0.0
    raw = error_rates(["We counted 12 boats!"], ["we counted twelve boats"], normalize=False)
    assert raw.wer_mean == pytest.approx(3 / 4)


def test_empty_reference_is_skipped_and_empty_hypothesis_scores_one() -> None:
    out = error_rates(["...", "good morning", "where is my coat"], ["hello", "", "where is my goat"])
    assert out.n_skipped == 1 and out.per_utt_wer[0] is None
    assert out.per_utt_wer[1] == 1.0  # everything deleted
    assert out.per_utt_wer[2] == pytest.approx(0.25)
    assert out.wer_mean == pytest.approx((1.0 + 0.25) / 2)
    assert out.wer_corpus == pytest.approx(3 / 6)
    assert math.isnan(error_rates(["?"], ["x"]).wer_mean)
    with pytest.raises(ValueError):
        error_counts("", "x")
    with pytest.raises(ValueError):
        error_rates(["a"], [])


def test_cer_counts_spaces_between_words() -> None:
    out = error_rates(["ab cd"], ["ab cx"])
    assert out.cer_mean == pytest.approx(1 / 5)
    assert out.cer_corpus == pytest.approx(1 / 5)
