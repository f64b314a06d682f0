"""The committed corpus matches its lists, and its generator is reproducible."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tools.make_demo_corpus import (EXTRA_TRAIN_SENTENCES, HELDOUT_SENTENCES, HELDOUT_VOICES, SEEN_VOICES, SENTENCES,
                                    _contains, extra_sentences, plan, sha256)
from tools.sentences import sentence_key


def _split(corpus: Path, name: str) -> list[str]:
    return (corpus / "splits" / f"{name}.txt").read_text(encoding="utf-8").split()


def test_every_listed_wav_is_24k_mono_with_text(corpus_dir: Path):
    utt2spk = dict(line.split() for line in (corpus_dir / "utt2spk").read_text().splitlines())
    listed = [u for s in ("train", "dev", "test", "heldout") for u in _split(corpus_dir, s)]
    assert sorted(listed) == sorted(utt2spk), "splits must cover utt2spk exactly once"
    assert len(set(listed)) == len(listed)
    for utt in listed:
        wav = corpus_dir / "wavs" / utt2spk[utt] / f"{utt}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16"), wav
        assert 0.5 < info.duration < 9.0, wav
        assert wav.with_suffix(".txt").read_text(encoding="utf-8").strip(), f"empty text for {utt}"


def test_corpus_size_and_speakers(corpus_dir: Path):
    utt2spk = dict(line.split() for line in (corpus_dir / "utt2spk").read_text().splitlines())
    per_speaker: dict[str, int] = {}
    for spk in utt2spk.values():
        per_speaker[spk] = per_speaker.get(spk, 0) + 1
    seen = {v.speaker for v in SEEN_VOICES}
    assert len(seen) >= 6 and all(per_speaker[s] >= 30 + 2 * EXTRA_TRAIN_SENTENCES // len(seen) for s in seen)
    heldout = set(_split(corpus_dir, "heldout_speakers"))
    assert heldout == {v.speaker for v in HELDOUT_VOICES} and not heldout & seen
    assert {utt2spk[u] for u in _split(corpus_dir, "heldout")} == heldout
    total = sum(p.stat().st_size for p in (corpus_dir / "wavs").rglob("*"))
    assert total < 64 * 2**20


def test_manifest_matches_committed_files(corpus_dir: Path):
    rows = (corpus_dir / "MANIFEST.sha256").read_text().splitlines()
    on_disk = sorted(p.relative_to(corpus_dir).as_posix() for p in (corpus_dir / "wavs").rglob("*") if p.is_file())
    assert sorted(r.split("  ", 1)[1] for r in rows) == on_disk
    for row in rows[::7]:  # a sample keeps the test fast; any drift in the generator shows up
        digest, rel = row.split("  ", 1)
        assert sha256(corpus_dir / rel) == digest, rel


def test_plan_is_fixed():
    items = plan()
    assert len(items) == 6 * 30 + 2 * 10 + 2 * EXTRA_TRAIN_SENTENCES
    assert [s for *_, s in items].count("dev") == 18 and [s for *_, s in items].count("test") == 18
    assert len({u for u, *_ in items}) == len(items)


def test_extra_sentences_are_new_and_never_inside_a_heldout_one():
    extra = [sentence_key(t) for t in extra_sentences()]
    assert len(set(extra)) == len(extra) == EXTRA_TRAIN_SENTENCES
    assert not set(extra) & {sentence_key(t) for t in SENTENCES}
    for held in map(sentence_key, HELDOUT_SENTENCES):
        assert not any(_contains(held, e) or _contains(e, held) for e in extra)
    speakers = {}
    for utt, voice, text, split in plan():
        if "_x" in utt:
            assert split == "train"
            speakers.setdefault(text, set()).add(voice.speaker)
    assert all(len(s) == 2 for s in speakers.values())  # two different voices per sentence


@pytest.mark.skipif(not (shutil.which("flite") and shutil.which("espeak-ng")), reason="flite/espeak-ng not installed")
def test_generator_is_reproducible(tmp_path: Path, corpus_dir: Path, repo_root: Path):
    subprocess.run(
        [sys.executable, str(repo_root / "tools" / "make_demo_corpus.py"), "--out", str(tmp_path), "--limit", "1"],
        check=True, capture_output=True,
    )
    manifest = dict(r.split("  ", 1)[::-1] for r in (corpus_dir / "MANIFEST.sha256").read_text().splitlines())
    regenerated = [p for p in (tmp_path / "wavs").rglob("*") if p.is_file()]
    assert len(regenerated) == 2 * len(plan(1))
    for path in regenerated:
        assert sha256(path) == manifest[path.relative_to(tmp_path).as_posix()], path
