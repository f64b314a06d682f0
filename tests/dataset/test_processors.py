"""Each processor against an obvious reference: batching budget, padding, alignment, crops, seeding."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from speech.dataset import processors as P
from speech.dataset.context import PipelineContext

from .synth import SR, level_of, write_corpus, write_features


def _tok_items(lengths: list[int]) -> list[dict]:
    return [{"utt": f"u{i}", "spk": "s", "speech_token": torch.arange(n) % 6561} for i, n in enumerate(lengths)]


# ---------------------------------------------------------------------------------------------
# batch / padding / sort / shuffle


@pytest.mark.parametrize("budget", [50, 200, 1000])
def test_dynamic_batches_never_exceed_the_padded_frame_budget(budget):
    rng = random.Random(budget)
    lengths = [rng.randint(1, 120) for _ in range(400)]
    ctx = PipelineContext()
    batches = list(P.batch(_tok_items(lengths), "dynamic", max_frames_in_batch=budget, ctx=ctx))
    for b in batches:
        padded = len(b) * max(len(x["speech_token"]) for x in b)
        assert padded <= budget
    # Items that fit are all kept, in order; the others are skipped with a reason.
    kept = [x["utt"] for b in batches for x in b]
    fits = [f"u{i}" for i, n in enumerate(lengths) if n <= budget]
    assert kept == fits
    assert ctx.skips.counts.get("longer than max_frames_in_batch", 0) == len(lengths) - len(fits)
    # Greedy: the next item would not have fitted in the previous batch.
    for b, nxt in zip(batches, batches[1:], strict=False):
        longest = max(len(x["speech_token"]) for x in b + [nxt[0]])
        assert (len(b) + 1) * longest > budget


def test_dynamic_batch_budget_over_several_keys_and_batch_cap():
    items = [
        {"utt": str(i), "text_token": torch.zeros(i + 1), "speech_token": torch.zeros(10 * (i + 1))} for i in range(30)
    ]
    for b in P.batch(
        items, "dynamic", max_frames_in_batch=400, frame_key=["text_token", "speech_token"], max_batch_size=3
    ):
        cost = len(b) * (max(len(x["text_token"]) for x in b) + max(len(x["speech_token"]) for x in b))
        assert cost <= 400 and len(b) <= 3


def test_static_batches_and_bad_batch_type():
    sizes = [len(b) for b in P.batch(_tok_items([3] * 10), "static", batch_size=4)]
    assert sizes == [4, 4, 2]
    with pytest.raises(ValueError, match="batch_type"):
        list(P.batch(_tok_items([3]), "bucket"))


def test_padding_matches_the_items_one_by_one():
    items = [
        {
            "utt": f"u{n}",
            "spk": "s",
            "text_token": torch.arange(1, n + 2),
            "text_token_dur": torch.arange(1, n + 2) % 2 + 1,
            "speech_token": torch.arange(2 * n) + 1,
            "latent": torch.randn(5, 4 * n),
            "ref_audio": torch.randn(100 + n),
            "audio": torch.randn(60),
            "audio_len": 50 - n,  # a zero-padded crop keeps its true length
        }
        for n in (3, 1, 2)
    ]
    (out,) = list(P.padding([items]))
    assert out["utt"] == ["u3", "u1", "u2"] and out["spk"] == ["s"] * 3
    assert out["latent"].shape == (3, 5, 12) and out["latent_len"].tolist() == [12, 4, 8]
    assert out["text_token_len"].tolist() == [4, 2, 3] and out["speech_token_len"].tolist() == [6, 2, 4]
    assert out["audio_len"].tolist() == [47, 49, 48] and out["audio"].shape == (3, 60)
    for key in P.PAD_KEYS:
        assert out[f"{key}_len"].dtype == torch.int64
        for b, item in enumerate(items):
            n = item[key].shape[-1]
            assert torch.equal(out[key][b, ..., :n], item[key])
            assert not out[key][b, ..., n:].any(), f"{key}: padding is not zero"
    assert out["text_token"].dtype == torch.int64 and out["latent"].dtype == torch.float32


def test_padding_only_emits_keys_that_are_present_and_rejects_mixed_batches():
    (out,) = list(P.padding([_tok_items([2, 3])]))
    assert set(out) == {"utt", "spk", "speech_token", "speech_token_len"}
    mixed = _tok_items([2, 3])
    mixed[0]["latent"] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="inconsistent"):
        list(P.padding([mixed]))


def test_sort_orders_each_buffer_by_length():
    lengths = [5, 3, 9, 1, 7, 2, 8]
    out = [len(x["speech_token"]) for x in P.sort(_tok_items(lengths), buffer_size=3)]
    assert out == [3, 5, 9, 1, 2, 7, 8]
    with pytest.raises(ValueError, match="length key 'latent'"):
        list(P.sort(_tok_items([1]), key="latent"))


def test_shuffle_is_a_permutation_seeded_by_epoch():
    items = lambda: _tok_items(list(range(1, 60)))  # noqa: E731
    run = lambda epoch, seed=0: [x["utt"] for x in P.shuffle(items(), 16, ctx=PipelineContext(epoch=epoch, seed=seed))]  # noqa: E731
    assert sorted(run(0)) == sorted(x["utt"] for x in items())
    assert run(0) == run(0)
    assert run(0) != run(1) and run(0) != run(0, seed=1)
    assert run(0) != [x["utt"] for x in items()]


# ---------------------------------------------------------------------------------------------
# alignment, crops, filters


@pytest.mark.parametrize("ratio", [2, 3])
def test_align_lengths_gives_n_min_of_latent_over_ratio_and_tokens(ratio):
    cases = [(10, 10 * ratio), (10, 10 * ratio + ratio - 1), (10, 9 * ratio + 1), (8, 9 * ratio), (5, 7 * ratio)]
    items = [
        {"utt": str(i), "speech_token": torch.arange(n), "latent": torch.arange(t).float().expand(3, t)}
        for i, (n, t) in enumerate(cases)
    ]
    ctx = PipelineContext()
    out = list(P.align_lengths(items, token_latent_ratio=ratio, tolerance=1, ctx=ctx))
    assert [x["utt"] for x in out] == ["0", "1", "2", "3"]  # 5 tokens vs 7·ratio frames: off by 2 > tolerance
    assert ctx.skips.counts == {"token/latent lengths disagree": 1}
    for x in out:
        n_tok, t_lat = cases[int(x["utt"])]
        n = min(t_lat // ratio, n_tok)  # the reference formula
        assert x["speech_token"].tolist() == list(range(n))
        assert x["latent"].shape == (3, n * ratio) and x["latent"][0].tolist() == list(range(n * ratio))
        assert len(x["speech_token"]) * ratio == x["latent"].shape[-1]


def test_align_lengths_rejects_a_non_integer_ratio():
    with pytest.raises(ValueError, match="positive integer"):
        list(P.align_lengths([], token_latent_ratio=2.5))


def test_random_crop_fixed_length_pads_short_clips_and_is_seeded():
    items = lambda: [{"utt": "long", "audio": torch.arange(1000.0)}, {"utt": "short", "audio": torch.arange(30.0)}]  # noqa: E731
    out = list(P.random_crop(items(), seconds=0.01, sample_rate=10000, ctx=PipelineContext(epoch=0)))
    long, short = out
    assert long["audio"].shape == (100,) and long["audio_len"] == 100
    start = int(long["audio"][0])
    assert torch.equal(long["audio"], torch.arange(start, start + 100.0))
    assert short["audio"].shape == (100,) and short["audio_len"] == 30
    assert torch.equal(short["audio"][:30], torch.arange(30.0)) and not short["audio"][30:].any()
    starts = {
        int(next(P.random_crop(items(), 0.01, 10000, ctx=PipelineContext(epoch=e)))["audio"][0]) for e in range(6)
    }
    assert len(starts) > 1
    (padded,) = list(P.padding([out]))
    assert padded["audio_len"].tolist() == [100, 30]


def test_filter_items_bounds():
    def item(utt, duration, **kw):
        return {"utt": utt, "wav": f"{utt}.wav", "duration": duration, **kw}

    items = [
        item("ok", 2.0, text_token=torch.zeros(5), n_tokens=50),
        item("short", 0.05),
        item("long", 100.0),
        item("nan", float("nan")),
        item("neg", -3.0),
        item("absurd", 1e9),
        item("none", None),
        item("text", 2.0, text_token=torch.zeros(500)),
        item("tok_idx", 2.0, n_tokens=5000),
        item("tok_loaded", 2.0, speech_token=torch.zeros(5000), n_tokens=50),
        item("lat", 2.0, latent=torch.zeros(4, 9000)),
    ]
    ctx = PipelineContext()
    out = list(P.filter_items(items, min_duration=0.5, max_duration=30, max_text_tokens=100, ctx=ctx))
    assert [x["utt"] for x in out] == ["ok"]
    assert ctx.skips.counts == {
        "duration outside [0.5, 30] s": 3,
        "missing or invalid duration": 3,
        "text tokens outside [1, 100]": 1,
        "speech tokens outside [1, 1500]": 2,
        "latent frames outside [1, 4500]": 1,
    }


def test_tokenize_text_with_any_encoder():
    class Chars:
        def encode(self, text):
            return [ord(c) for c in text]

    items = [{"utt": "a", "text": "hé"}, {"utt": "b", "text": "  "}, {"utt": "c"}, {"utt": "d", "text": "bad \udcff"}]
    ctx = PipelineContext()
    out = list(P.tokenize_text(items, Chars(), ctx=ctx))
    assert len(out) == 1 and out[0]["text_token"].tolist() == [104, 233] and out[0]["text_token"].dtype == torch.int64
    assert ctx.skips.counts == {"empty text": 1, "missing text": 1, "non-UTF-8 text": 1}


def test_loaders_read_what_the_files_hold(tmp_path):
    (entry,) = write_corpus(tmp_path / "wavs", {"a": 1})
    entry = write_features(entry, tmp_path / "feat", ratio=3, dim=6)
    ctx = PipelineContext()
    stream = P.load_audio(
        P.load_latent(P.load_speech_token([dict(entry)], ctx=ctx), dim=6, ctx=ctx), sample_rate=16000, ctx=ctx
    )
    (item,) = list(stream)
    assert item["speech_token"].dtype == torch.int64 and item["speech_token"].tolist() == list(range(entry["n_tokens"]))
    assert item["latent"].shape == (6, entry["n_latent_frames"])
    assert item["audio"].shape[0] == pytest.approx(entry["duration"] * 16000, abs=2)
    assert ctx.skips.total == 0


# ---------------------------------------------------------------------------------------------
# speaker reference


def _which_utterance(ref: torch.Tensor, entries: list[dict]) -> str:
    level = float(ref.median())
    return min(entries, key=lambda e: abs(level_of(e["k"]) - level))["utt"]


def test_speaker_reference_takes_another_utterance_of_the_same_speaker(tmp_path):
    entries = write_corpus(tmp_path, {"a": 3, "b": 2, "c": 1}, seconds=(1.0, 2.0))
    ctx = PipelineContext()
    out = list(
        P.speaker_reference(
            [dict(e) for e in entries], sample_rate=SR, min_seconds=0.5, max_seconds=0.8, lookahead=2, ctx=ctx
        )
    )
    assert [x["utt"] for x in out] == [e["utt"] for e in entries]
    spk_of = {e["utt"]: e["spk"] for e in entries}
    for x in out:
        src = _which_utterance(x["ref_audio"], entries)
        assert spk_of[src] == x["spk"]
        if x["spk"] != "c":
            assert src != x["utt"], f"{x['utt']}: reference cut from itself though its speaker has others"
        assert 0.5 * SR <= x["ref_audio"].shape[0] <= 0.8 * SR
    assert out[-1]["utt"] == "c_000" and _which_utterance(out[-1]["ref_audio"], entries) == "c_000"
    assert ctx.events == Counter({"reference from another utterance": 5, "reference cut from the item itself": 1})


def test_speaker_reference_takes_the_whole_clip_when_shorter_and_survives_a_bad_reference(tmp_path):
    entries = write_corpus(tmp_path, {"a": 2}, seconds=(0.6, 0.6))
    entries[1]["wav_ok"] = entries[1]["wav"]
    broken = [dict(entries[0]), dict(entries[1], wav=str(tmp_path / "gone.wav"))]
    ctx = PipelineContext()
    out = list(P.speaker_reference(broken, sample_rate=SR, min_seconds=2.0, max_seconds=3.0, ctx=ctx))
    # a_000's only partner is unreadable: it falls back to its own clip (whole, since it is short);
    # a_001 itself is unreadable and has a good partner, so it still gets a reference.
    assert [x["utt"] for x in out] == ["a_000", "a_001"]
    assert _which_utterance(out[0]["ref_audio"], entries) == "a_000" and out[0]["ref_audio"].shape[0] == int(0.6 * SR)
    assert _which_utterance(out[1]["ref_audio"], entries) == "a_000"
