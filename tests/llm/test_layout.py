"""Unistream / bistream layouts: known examples written out by hand, and a slow per-item reference."""

from __future__ import annotations

import random

import torch

from speech.llm.layout import bistream_allowed, build_layout

SOS, SPK, TASK, EOS, FILL, IGN = "sos", "spk", "task", "eos", "fill", "-"


def symbolic(text_len: int, speech_len: int, max_text: int, max_speech: int, bistream: bool, mix=(5, 15)):
    """Render one item's layout as readable symbols: inputs like 't3'/'s7', targets like 's8'/'eos'."""
    lay = build_layout(
        torch.tensor([text_len]), torch.tensor([speech_len]), max_text, max_speech, torch.tensor([bistream]), mix
    )
    pool = [SOS, SPK] + [f"t{i}" for i in range(max_text)] + [TASK] + [f"s{i}" for i in range(max_speech)]
    tpool = [f"s{i}" for i in range(max_speech)] + [EOS, FILL, IGN]
    n = int(lay.valid[0].sum())
    return [pool[i] for i in lay.src[0, :n]], [tpool[i] for i in lay.tgt[0, :n]], lay


def s(a: int, b: int) -> list[str]:
    return [f"s{i}" for i in range(a, b)]


def t(a: int, b: int) -> list[str]:
    return [f"t{i}" for i in range(a, b)]


def test_unistream_known_example():
    inp, tgt, lay = symbolic(3, 4, max_text=5, max_speech=6, bistream=False)
    assert inp == [SOS, SPK, "t0", "t1", "t2", TASK, "s0", "s1", "s2", "s3"]
    assert tgt == [IGN, IGN, IGN, IGN, IGN, "s0", "s1", "s2", "s3", EOS]
    # Padding positions (sequence is 3 + 5 + 6 long) are invalid and ignored.
    assert lay.src.shape == (1, 14) and not lay.valid[0, 10:].any()


def test_bistream_known_example():
    # 7 text, 40 speech: one full chunk (t0..t4 + s0..s14), then t5 t6 task s15..s39.
    inp, tgt, _ = symbolic(7, 40, max_text=7, max_speech=40, bistream=True)
    assert inp == [SOS, SPK] + t(0, 5) + s(0, 15) + ["t5", "t6", TASK] + s(15, 40)
    assert tgt == [IGN, IGN] + [IGN] * 4 + s(0, 15) + [FILL] + [IGN, IGN] + s(15, 40) + [EOS]


def test_bistream_text_multiple_of_chunk():
    # 10 text, 33 speech: two full chunks, no text left: the fill of chunk 2 is followed by task.
    inp, tgt, _ = symbolic(10, 33, max_text=10, max_speech=33, bistream=True)
    assert inp == [SOS, SPK] + t(0, 5) + s(0, 15) + t(5, 10) + s(15, 30) + [TASK] + s(30, 33)
    assert tgt == [IGN] * 6 + s(0, 15) + [FILL] + [IGN] * 4 + s(15, 30) + [FILL] + s(30, 33) + [EOS]


def test_bistream_with_other_ratio():
    inp, tgt, _ = symbolic(4, 9, max_text=4, max_speech=9, bistream=True, mix=(2, 3))
    assert inp == [SOS, SPK, "t0", "t1", "s0", "s1", "s2", "t2", "t3", "s3", "s4", "s5", TASK] + s(6, 9)
    assert tgt == [IGN, IGN, IGN, "s0", "s1", "s2", FILL, IGN, "s3", "s4", "s5", FILL, "s6", "s7", "s8", EOS]


def test_bistream_allowed_ratio():
    allowed = bistream_allowed(torch.tensor([5, 5, 7, 0]), torch.tensor([15, 14, 21, 3]), (5, 15))
    assert allowed.tolist() == [True, False, True, True]


def reference_item(text_len: int, speech_len: int, bistream: bool, mix):
    """Slow per-item construction: the layout described in the module docstring, one token at a time."""
    a, b = mix
    inp, tgt = [SOS, SPK], [IGN, IGN]
    text, speech = t(0, text_len), s(0, speech_len)
    ti = si = 0
    if bistream:
        while text_len - ti >= a:
            inp += text[ti : ti + a] + speech[si : si + b]
            tgt += [IGN] * (a - 1) + speech[si : si + b] + [FILL]
            ti, si = ti + a, si + b
    rest = text[ti:]
    inp += rest + [TASK] + speech[si:]
    tgt += [IGN] * len(rest) + speech[si:] + [EOS]
    return inp, tgt


def test_batched_layout_matches_per_item_reference():
    rng = random.Random(0)
    mix = (5, 15)
    items = []
    for _ in range(40):
        tl = rng.randint(0, 23)
        sl = rng.randint(0, 90)
        items.append((tl, sl, rng.random() < 0.5 and sl * mix[0] >= tl * mix[1]))
    max_t, max_s = max(i[0] for i in items) + 2, max(i[1] for i in items) + 1
    lay = build_layout(
        torch.tensor([i[0] for i in items]),
        torch.tensor([i[1] for i in items]),
        max_t,
        max_s,
        torch.tensor([i[2] for i in items]),
        mix,
    )
    pool = [SOS, SPK] + t(0, max_t) + [TASK] + s(0, max_s)
    tpool = s(0, max_s) + [EOS, FILL, IGN]
    for row, (tl, sl, bi) in enumerate(items):
        ref_in, ref_tgt = reference_item(tl, sl, bi, mix)
        n = 3 + tl + sl
        assert int(lay.valid[row].sum()) == n and bool(lay.valid[row, :n].all())
        assert [pool[i] for i in lay.src[row, :n]] == ref_in
        assert [tpool[i] for i in lay.tgt[row, :n]] == ref_tgt
        assert all(tpool[i] == IGN for i in lay.tgt[row, n:])
