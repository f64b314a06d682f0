"""The sentence generator of the larger corpus, and make_demo_corpus.py --hours: plan and a tiny build."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from tools import make_demo_corpus as mdc
from tools.sentences import CMU_PHONES, coverage, flite_phones, generate, sentence_key

HAVE_TTS = bool(shutil.which("flite") and shutil.which("espeak-ng"))
needs_tts = pytest.mark.skipif(not HAVE_TTS, reason="flite/espeak-ng not installed (apt-get install -y flite espeak-ng)")


def test_generator_is_seeded_and_prefix_stable():
    a = generate(200, seed=3)
    assert a == generate(200, seed=3)
    assert generate(50, seed=3) == a[:50]  # taking more never changes what came first
    assert a != generate(200, seed=4)


def test_sentences_have_grammatical_shape():
    sentences = generate(500, seed=0)
    assert len({sentence_key(s) for s in sentences}) == 500  # distinct after normalisation
    starts = Counter()
    for s in sentences:
        assert re.match(r'^"?[A-Z]', s), s  # capitalised (possibly inside an opening quote)
        assert s[-1] in ".?!", s  # final punctuation
        assert "  " not in s and s == s.strip(), s
        assert not re.search(r"\d", s), s  # numbers are spelled out, as the synthesizers say them
        assert not re.search(r"\b(a) [aeio]", s), s  # "an" before a vowel
        assert 2 <= len(sentence_key(s).split()) <= 22, s
        starts[s[-1]] += 1
    assert starts["?"] >= 25 and starts["!"] >= 10  # questions and exclamations, not only statements
    words = Counter(w for s in sentences for w in sentence_key(s).split())
    assert len(words) > 600  # a broad vocabulary


def test_plan_splits_are_disjoint():
    items = mdc.plan_hours(0.2, seed=1)
    assert items == mdc.plan_hours(0.2, seed=1)
    by_split: dict[str, set[str]] = {}
    speakers: dict[str, set[str]] = {}
    for utt, voice, text, split in items:
        by_split.setdefault(split, set()).add(sentence_key(text))
        speakers.setdefault(split, set()).add(voice.speaker)
        assert utt.startswith(voice.speaker + "_")
    assert len({u for u, *_ in items}) == len(items)
    assert set(by_split) == {"train", "dev", "test", "heldout"}
    held = {v.speaker for v in mdc.HOURS_HELDOUT_VOICES}
    assert speakers["heldout"] == held and not held & (speakers["train"] | speakers["dev"] | speakers["test"])
    assert speakers["dev"] | speakers["test"] <= speakers["train"]  # dev/test voices are training voices
    # no sentence of one split is inside a sentence of another (as a word sequence), so no training
    # utterance contains a test or held-out sentence
    for a in by_split:
        for b in by_split:
            if a != b:
                for inner in by_split[a]:
                    assert not any(f" {inner} " in f" {outer} " for outer in by_split[b]), (a, b, inner)
    # every training sentence is spoken by two different seen speakers
    train_speakers: dict[str, set[str]] = {}
    for _, voice, text, split in items:
        if split == "train":
            train_speakers.setdefault(text, set()).add(voice.speaker)
    assert all(len(s) == mdc.TRAIN_SPEAKERS_PER_SENTENCE for s in train_speakers.values())
    seconds = sum(mdc.estimate_seconds(t) for _, _, t, _ in items)
    assert 0.2 * 3600 <= seconds < 0.2 * 3600 + 15


def test_tiny_plan_meets_the_minimums():
    items = mdc.plan_hours(0.001)
    count = Counter(s for *_, s in items)
    assert all(count[s] >= n for s, n in mdc.SPLIT_MIN.items())
    held = Counter(v.speaker for _, v, _, s in items if s == "heldout")
    assert set(held) == {v.speaker for v in mdc.HOURS_HELDOUT_VOICES} and min(held.values()) >= 2


@pytest.mark.skipif(not shutil.which("flite"), reason="flite not installed")
def test_phonetic_coverage():
    # measured on generate(300, 0): all 39 CMU phonemes, 808 of the 1521 phoneme pairs (the 40
    # sentences of the committed demo corpus: 38 phonemes, 388 pairs)
    cov = coverage(flite_phones(generate(300, seed=0)))
    phones = {p for p in cov["phones"] if p != "pau"}
    assert phones == set(CMU_PHONES)
    assert sum(1 for d in cov["diphones"] if "pau" not in d) >= 750


@needs_tts
def test_tiny_corpus_build_and_resume(tmp_path: Path, repo_root: Path):
    out = tmp_path / "corpus"
    cmd = [sys.executable, str(repo_root / "tools" / "make_demo_corpus.py"), "--hours", "0.003",
           "--output_dir", str(out), "--nj", "2", "--no_progress"]
    first = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "0 failed" in first.stdout, first.stdout + first.stderr
    utt2spk = dict(line.split() for line in (out / "utt2spk").read_text().splitlines())
    splits = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "dev", "test", "heldout")}
    assert sorted(u for us in splits.values() for u in us) == sorted(utt2spk)
    planned = {u: t for u, _, t, _ in mdc.plan_hours(0.003)}
    assert set(utt2spk) == set(planned)
    for utt, spk in utt2spk.items():
        wav = out / "wavs" / spk / f"{utt}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert 0.3 < info.duration < 12
        assert wav.with_suffix(".txt").read_text().strip() == planned[utt]
    manifest = (out / "MANIFEST.sha256").read_text().splitlines()
    assert len(manifest) == 2 * len(utt2spk)
    # a resumed run keeps every file (same bytes) and says so
    victim = out / "wavs" / utt2spk[splits["test"][0]] / f"{splits['test'][0]}.wav"
    victim.unlink()
    second = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert f"{len(utt2spk) - 1} already there" in second.stdout
    assert (out / "MANIFEST.sha256").read_text().splitlines() == manifest  # deterministic synthesis


def test_failed_synthesis_is_skipped_and_logged(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(mdc.shutil, "which", lambda tool: "/bin/true")
    monkeypatch.setattr(mdc, "ProcessPoolExecutor", _InlineExecutor)
    items = mdc.plan_hours(0.001)
    bad = items[0][0]

    def fake_speak(job):
        utt, voice, text, wav_path = job
        if utt == bad:
            return utt, None, "silent output"
        Path(wav_path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav_path, [0.1] * 24000, 24000, subtype="PCM_16")
        Path(wav_path).with_suffix(".txt").write_text(text + "\n")
        return utt, 1.0, ""

    monkeypatch.setattr(mdc, "_speak_job", fake_speak)
    monkeypatch.setattr(mdc, "_version", lambda cmd: "")
    info = mdc.build_hours(tmp_path, 0.001, progress=False)
    assert info["failed"] == 1 and info["utterances"] == len(items) - 1
    assert (tmp_path / "failed.tsv").read_text().startswith(f"{bad}\t")
    assert bad not in (tmp_path / "utt2spk").read_text()
    assert not any(bad in (tmp_path / "splits" / f"{s}.txt").read_text() for s in ("train", "dev", "test", "heldout"))


class _InlineExecutor:
    """ProcessPoolExecutor stand-in that runs jobs in this process (so monkeypatches apply)."""

    def __init__(self, max_workers=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future
