"""CTC forced alignment and durations: Viterbi vs brute force over every path, frame ownership,
spelling sources, per-token sums; the own tokenizer's align and extract_fsq.py --align."""
from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest
import torch

from speech.audio import load_audio, save_audio
from speech.dataset import read_index
from speech.dataset.processors import load_speech_token, load_text_alignment, tokenize_text
from speech.tokenizer.align import char_durations, ctc_forced_align, frames_per_target, token_durations
from speech.tokenizer.chars import CharTokenizer
from speech.tokenizer.own import OwnFSQTokenizer
from tests.dataset.synth import write_corpus, write_index
from tools.extract_fsq import main as extract

from .test_own import REPO, trained  # noqa: F401 - the module's tiny tokenizer checkpoint fixture

BLANK = 2


def collapse(path):
    out, prev = [], None
    for p in path:
        if p != prev and p != BLANK:
            out.append(p)
        prev = p
    return out


def brute_force(log_probs, targets):
    """The best score over every label path of the right length that collapses to ``targets``."""
    best = float("-inf")
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        if collapse(path) == list(targets):
            best = max(best, float(sum(log_probs[t, p] for t, p in enumerate(path))))
    return best


@pytest.mark.parametrize("targets", [[0], [0, 1], [1, 1], [0, 1, 0], [1, 1, 1]])
def test_viterbi_finds_the_best_path(targets):
    g = torch.Generator().manual_seed(len(targets) * 7 + targets[0])
    for t_len in range(1, 7):
        lp = torch.randn(t_len, 3, generator=g).log_softmax(-1)
        best = brute_force(lp, targets)
        path = ctc_forced_align(lp, targets, BLANK)
        if best == float("-inf"):
            assert path is None  # too few frames (a repeat needs a blank between)
            continue
        labels = [BLANK if i < 0 else targets[i] for i in path.tolist()]
        assert collapse(labels) == targets
        assert math.isclose(float(sum(lp[t, p] for t, p in enumerate(labels))), best, rel_tol=1e-5, abs_tol=1e-5)
        # the path names target indices: each one appears, in order
        emitted = [i for i in path.tolist() if i >= 0]
        assert sorted(set(emitted)) == list(range(len(targets))) and emitted == sorted(emitted)


def test_frames_belong_to_the_target_before_them():
    path = torch.tensor([-1, 0, 0, -1, 1, -1])
    assert frames_per_target(path, 2).tolist() == [4, 2]  # leading blank to the first target
    assert frames_per_target(path, 3).tolist() == [4, 2, 0]
    # a frame of two steps (an upsampled CTC head) belongs to the target of its first step
    assert frames_per_target(path, 2, group=2).tolist() == [2, 1]


def test_spelling_keeps_each_characters_source():
    chars = CharTokenizer()
    text = "  Hi,  -- ﬁne 12!"
    ids, sources = chars.spell(text)
    assert chars.decode(ids) == chars.normalise(text) == "hi fine 12"
    assert [text[i] for i in sources] == ["H", "i", " ", "ﬁ", "ﬁ", "n", "e", " ", "1", "2"]
    assert chars.spell("...") == ([], [])


def test_durations_add_up_per_character_and_per_token():
    text = "Hi, yo"
    _, sources = CharTokenizer().spell(text)  # h i ' ' y o
    per_char = char_durations(text, sources, torch.tensor([2, 1, 1, 3, 4]))
    assert per_char.tolist() == [2, 1, 0, 1, 3, 4] and per_char.dtype == torch.int32
    assert token_durations(per_char, [0, 2, 4]).tolist() == [3, 1, 7]  # "Hi" ", " "yo"
    assert token_durations(per_char, [1, 3]).tolist() == [3, 8]  # characters before the first start: token 0


def test_bpe_char_starts_match_the_text(tmp_path):
    from speech.text import BPETextTokenizer, train_bpe

    texts = ["The rain stopped.", "We counted 12 boats.", "Is the shop open? Café, naïve…"] * 20
    train_bpe(texts, vocab_size=300).save(str(tmp_path / "tokenizer.json"))
    tok = BPETextTokenizer(tmp_path / "tokenizer.json")
    for text in texts[:3] + ["unseen wörds ☃ here"]:
        ids = tok.encode(text)
        starts = tok.char_starts(text)
        assert len(starts) == len(ids) and starts[0] == 0 and starts == sorted(starts)
        for k in range(len(ids)):  # each token's text begins at its start (whole characters)
            piece = tok.decode(ids[k : k + 1])
            if "\ufffd" not in piece:
                assert text[starts[k] :].startswith(piece)


def test_own_tokenizer_alignments_add_up_to_its_tokens(trained):  # noqa: F811
    _, ckpt = trained
    tok = OwnFSQTokenizer.from_checkpoint(ckpt)
    g = torch.Generator().manual_seed(0)
    wavs = [0.2 * torch.randn(int(s * 24000), generator=g) for s in (1.2, 0.5, 0.12)]
    texts = ["Hello there, friend.", "a b", "a much too long text for three frames"]
    out = tok.align(wavs, texts)
    ids = tok.tokenize(wavs)
    for a, i, text in zip(out[:2], ids[:2], texts[:2]):
        assert a.dtype == torch.int32 and a.shape == (len(text),) and int(a.sum()) == i.numel()
        assert all(int(a[k]) == 0 for k, c in enumerate(text) if c in ",.")  # spelled away: no frames
    assert out[2] is None
    both_ids, both_align = tok.tokenize_and_align(wavs, texts)  # one encoder pass: the same ids and alignments
    assert all(torch.equal(a, b) for a, b in zip(both_ids, ids, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(both_align[:2], out[:2], strict=True)) and both_align[2] is None
    assert tok.align(wavs[:1], ["!!!"]) == [None]
    with pytest.raises(ValueError, match="one text per waveform"):
        tok.align(wavs, texts[:1])


def test_extract_fsq_align_feeds_the_lm_pipeline(trained, tmp_path, capsys):  # noqa: F811
    from speech.dataset.context import PipelineContext
    from speech.text import BPETextTokenizer, train_bpe

    _, ckpt = trained
    entries = write_corpus(tmp_path / "wavs", {"a": 2, "b": 2}, seconds=(2.0, 3.0))
    for e in entries:
        n = round(e["duration"] * 24000)
        save_audio(e["wav"], 0.3 * torch.sin(torch.arange(n) * (0.01 + 0.003 * e["k"])), 24000)
    index = write_index(tmp_path / "index.jsonl", entries)
    out = tmp_path / "tokens"
    args = ["--index", str(index), "--num_workers", "0", "--tokenizer", "own", "--checkpoint", str(ckpt),
            "--out_dir", str(out), "--align"]
    assert extract(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 token files" in printed and ", 4 alignments, 0 already existed" in printed
    assert extract(args + ["--skip_existing"]) == 0 and "4 already existed" in capsys.readouterr().out

    texts = [e["text"] for e in entries]
    train_bpe(texts * 5, vocab_size=300).save(str(tmp_path / "bpe.json"))
    bpe = BPETextTokenizer(tmp_path / "bpe.json")
    items = []
    for e in read_index(index):
        align = torch.load(out / e["spk"] / f"{e['utt']}_align.pt", weights_only=True)
        wav, _ = load_audio(e["wav"], 24000)
        assert align.shape == (len(e["text"]),)
        assert int(align.sum()) == math.ceil(Fraction(wav.numel(), 24000) * 25)
        items.append({**e, "token_path": str(out / e["spk"] / f"{e['utt']}_fsq.pt")})
    # one file that no longer matches its text, one missing: both items stay, unaligned (-1)
    torch.save(torch.ones(3, dtype=torch.int32), out / "a" / "a_000_align.pt")
    (out / "b" / "b_001_align.pt").unlink()
    ctx = PipelineContext()
    got = list(load_text_alignment(load_speech_token(tokenize_text(iter(items), bpe, ctx=ctx), ctx=ctx), bpe, ctx=ctx))
    assert [x["utt"] for x in got] == ["a_000", "a_001", "b_000", "b_001"]
    for x in got:
        dur = x["text_token_dur"]
        assert dur.shape == x["text_token"].shape
        if x["utt"] in ("a_000", "b_001"):
            assert (dur == -1).all()
        else:
            assert (dur >= 0).all() and int(dur.sum()) == x["speech_token"].numel()
    assert ctx.events == {"unaligned (alignment does not match the text)": 1, "unaligned (no alignment file)": 1}


def test_extract_fsq_align_needs_a_ctc_alphabet(tmp_path, capsys):
    entries = write_corpus(tmp_path / "wavs", {"a": 1})
    index = write_index(tmp_path / "index.jsonl", entries)
    torch.manual_seed(0)
    from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

    model = S3TokenizerV2("speech_tokenizer_v2_25hz", ModelConfig(n_audio_state=64, n_audio_head=1, n_audio_layer=1))
    torch.save(model.eval().state_dict(), tmp_path / "s3.pt")
    with pytest.raises(SystemExit, match="--align needs a tokenizer with a CTC alphabet"):
        extract(["--index", str(index), "--num_workers", "0", "--checkpoint", str(tmp_path / "s3.pt"), "--align"])


def test_a_config_whose_alphabet_cannot_be_built_still_loads(trained, tmp_path):  # noqa: F811
    model, _ = trained
    text = (REPO / "configs/tiny/fsq.yaml").read_text()
    text = text.replace("vocab_size: !ref <text_tokenizer.vocab_size>", "vocab_size: 38")
    text = text.replace("text_tokenizer: !new:speech.tokenizer.chars.CharTokenizer",
                        "text_tokenizer: !new:speech.tokenizer.chars.CharTokenizer {alphabet: aa}")
    ckpt = tmp_path / "fsq.pt"
    torch.save({"model": model.state_dict(), "config": text}, ckpt)
    tok = OwnFSQTokenizer.from_checkpoint(ckpt)  # the broken alphabet only matters to align()
    assert tok.chars is not None and tok.chars.alphabet == CharTokenizer().alphabet  # 38 ids: the English default
