"""Both BPE sources encode and decode the corpus text exactly; loading errors are one line."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from speech.text import BPETextTokenizer, HFTextTokenizer, TextTokenizerError, load_text_tokenizer, train_bpe
from tools.train_bpe import main as train_bpe_main

EXTRA = ["Ünïcödé: naïve café, 東京, emoji 🙂, tabs\tand  double  spaces.", "7:45 — 250 g; 1889!"]


@pytest.fixture(scope="module")
def corpus_texts(corpus_dir) -> list[str]:
    texts = [p.read_text(encoding="utf-8").strip() for p in sorted((corpus_dir / "wavs").rglob("*.txt"))]
    assert len(texts) == 500
    return texts


@pytest.fixture(scope="module")
def bpe_path(corpus_texts, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    train_bpe(corpus_texts, vocab_size=500).save(str(path))
    return path


@pytest.fixture(scope="module")
def qwen_dir(bpe_path, tmp_path_factory) -> Path:
    """A Qwen2-class tokenizer directory (vocab + merges of the trained BPE), as save_pretrained writes it."""
    from transformers import Qwen2Tokenizer

    model = json.loads(bpe_path.read_text(encoding="utf-8"))["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    folder = tmp_path_factory.mktemp("qwen")
    Qwen2Tokenizer(vocab=model["vocab"], merges=merges).save_pretrained(str(folder))
    return folder


def _round_trip(tok, texts):
    for text in texts:
        ids = tok.encode(text)
        assert ids and all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_trained_bpe_round_trips_the_corpus(bpe_path, corpus_texts):
    tok = load_text_tokenizer(bpe_path)
    assert isinstance(tok, BPETextTokenizer) and 300 < tok.vocab_size <= 500
    _round_trip(tok, corpus_texts + EXTRA)
    # It learned merges: far fewer ids than bytes.
    assert sum(len(tok.encode(t)) for t in corpus_texts) < 0.5 * sum(len(t.encode()) for t in corpus_texts)
    assert pickle.loads(pickle.dumps(tok)).encode(EXTRA[0]) == tok.encode(EXTRA[0])  # dataloader workers


def test_pretrained_directory_round_trips_the_corpus(qwen_dir, corpus_texts):
    tok = load_text_tokenizer(qwen_dir)
    assert isinstance(tok, HFTextTokenizer) and type(tok.tokenizer).__name__ == "Qwen2Tokenizer"
    _round_trip(tok, corpus_texts + EXTRA)
    assert pickle.loads(pickle.dumps(tok)).encode(EXTRA[1]) == tok.encode(EXTRA[1])


def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(TextTokenizerError, match="not found"):
        load_text_tokenizer(tmp_path / "nope")
    with pytest.raises(TextTokenizerError, match="cannot load a tokenizer from") as exc:
        HFTextTokenizer(tmp_path)  # an empty directory
    assert "\n" not in str(exc.value)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TextTokenizerError, match="cannot read tokenizer"):
        load_text_tokenizer(bad)


def test_train_bpe_cli_checks_its_round_trip(corpus_dir, tmp_path, capsys):
    out = tmp_path / "bpe" / "tokenizer.json"
    assert train_bpe_main([str(corpus_dir / "wavs"), "--out", str(out), "--vocab_size", "400"]) == 0
    printed = capsys.readouterr().out
    assert "round-trip exact for 500/500" in printed
    assert load_text_tokenizer(out).vocab_size <= 400
