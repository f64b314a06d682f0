"""Token consistency across voices: the vectorised edit rate against a plain loop, pairing, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speech.tokenizer.consistency import digit_matrix, edit_rate, main, token_consistency
from speech.tokenizer.fsq import FSQ

LEVELS = [3, 3, 2]  # 18 ids


def _reference(a, b, levels=None) -> float:
    """The textbook table, one cell at a time."""
    n, m = len(a), len(b)
    if max(n, m) == 0:
        return 0.0
    d = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = float(i)
    for j in range(m + 1):
        d[0][j] = float(j)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if levels:
                da, db = FSQ(levels).ids_to_digits(torch.tensor([a[i - 1], b[j - 1]]))
                sub = float((da != db).float().mean())
            else:
                sub = float(a[i - 1] != b[j - 1])
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + sub)
    return d[n][m] / max(n, m)


ids = st.lists(st.integers(0, 17), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ids, ids, st.booleans())
def test_edit_rate_equals_the_textbook_table(a, b, digits):
    levels = LEVELS if digits else None
    got = edit_rate(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), levels)
    assert got == pytest.approx(_reference(a, b, levels), abs=1e-6)


def test_edit_rate_extremes_and_digits_of_the_fsq_grid():
    a = np.array([1, 5, 7, 2])
    assert edit_rate(a, a) == 0.0
    assert edit_rate(a, np.array([], dtype=np.int64)) == 1.0
    assert edit_rate(np.array([0]), np.array([1])) == 1.0
    assert edit_rate(np.array([0]), np.array([1]), LEVELS) == pytest.approx(1 / 3)  # one digit of three differs
    every = torch.arange(18)
    assert np.array_equal(digit_matrix(every.numpy(), LEVELS), FSQ(LEVELS).ids_to_digits(every).numpy())


def _items():
    rng = np.random.default_rng(0)
    base = {t: rng.integers(0, 18, 10) for t in ("One two.", "three four", "five")}
    items = []
    for spk in ("a", "b", "c"):
        for text, toks in base.items():
            items.append({"text": text, "spk": spk, "tokens": toks.copy()})
    items.append({"text": "one TWO", "spk": "a", "tokens": rng.integers(0, 18, 10)})  # same speaker, same text
    return items


def test_same_sentence_pairs_are_across_speakers_and_unrelated_pairs_across_texts():
    out = token_consistency(_items(), LEVELS, max_pairs=1000)
    # 3 texts x 3 speaker pairs, plus the extra "one two" of speaker a with b's and c's (normalised text)
    assert out["same_text_pairs"] == 3 * 3 + 2
    assert out["unrelated_pairs"] == out["same_text_pairs"]
    assert out["same_text_ids"] < 0.2 and out["unrelated_ids"] > 0.5  # only the extra utterance differs
    assert out["same_text_digits"] < out["same_text_ids"] or out["same_text_ids"] == 0
    assert token_consistency(_items(), max_pairs=4)["same_text_pairs"] == 4
    assert "same_text_digits" not in token_consistency(_items())  # digits only with levels


def test_cli_writes_its_figures_and_counts_unusable_token_files(tmp_path):
    rows = []
    for spk in ("a", "b"):
        (tmp_path / "tok" / spk).mkdir(parents=True)
        for k, text in enumerate(("hello there", "good bye")):
            utt = f"{spk}_{k}"
            rows.append({"utt": utt, "spk": spk, "text": text})
            torch.save(torch.tensor([k, 1, 2, 3]), tmp_path / "tok" / spk / f"{utt}_fsq.pt")
    rows.append({"utt": "c_0", "spk": "c", "text": "hello there"})  # no token file
    rows.append({"utt": "c_1", "spk": "c", "text": "good bye"})  # a broken one
    (tmp_path / "tok" / "c").mkdir()
    (tmp_path / "tok" / "c" / "c_1_fsq.pt").write_bytes(b"not a tensor")
    index = tmp_path / "index.jsonl"
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval" / "tc.json"
    args = ["--index", str(index), "--token_dir", str(tmp_path / "tok")]
    assert main([*args, "--levels", "3", "3", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["unusable_token_files"] == 2 and got["utterances"] == 4
    assert got["same_text_pairs"] == 2 and got["same_text_ids"] == 0.0
    assert got["unrelated_ids"] == pytest.approx(0.25)  # [0,1,2,3] vs [1,1,2,3]
    assert main(["--index", str(tmp_path / "none.jsonl"), "--token_dir", str(tmp_path)]) == 2
    assert main([*args, "--levels", "1"]) == 2
    assert main([*args, "--levels", "2"]) == 2  # id 3 does not fit a grid of 2 ids
