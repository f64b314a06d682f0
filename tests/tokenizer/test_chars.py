"""Character vocabulary for CTC targets: normalisation, ids, round trip, pipeline compatibility."""
from __future__ import annotations

import pytest
import torch

from speech.dataset.processors import tokenize_text
from speech.text import TextTokenizer
from speech.tokenizer.chars import ENGLISH, CharTokenizer


def test_normalises_then_spells_one_id_per_character():
    tok = CharTokenizer()
    assert isinstance(tok, TextTokenizer) and tok.vocab_size == len(ENGLISH) == 38
    assert tok.normalise("  The train leaves at 7:45!\n It's  ＯＫ. ") == "the train leaves at 745 it's ok"
    ids = tok.encode("Hi, Bob.")
    assert ids == [ENGLISH.index(c) for c in "hi bob"]
    assert tok.decode(ids) == "hi bob"
    assert tok.encode("?!") == []


def test_custom_alphabet_and_bad_alphabets():
    tok = CharTokenizer(alphabet="abc", lowercase=False)
    assert tok.encode("a b C c") == [0, 1, 2]  # no space in the alphabet: spaces vanish
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(alphabet="aa")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer(alphabet="")


def test_works_as_the_pipeline_text_tokenizer():
    items = [{"utt": "u1", "text": "Good morning."}, {"utt": "u2", "text": "..."}]
    out = list(tokenize_text(iter(items), CharTokenizer()))
    assert len(out) == 1 and out[0]["text_token"].dtype == torch.int64
    assert CharTokenizer().decode(out[0]["text_token"].tolist()) == "good morning"
