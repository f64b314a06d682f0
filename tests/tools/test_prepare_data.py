"""tools/prepare_data.py: the seed tree layout and the Kaldi layout give the same index; bad
entries are skipped with reasons; speakers come from utt2spk or a configurable rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from speech.dataset import read_index
from tests.dataset.synth import hash_tree, write_corpus
from tools.prepare_data import main


def _read(path: Path) -> list[dict]:
    return list(read_index(path))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def corpus(tmp_path):
    entries = write_corpus(tmp_path / "corpus" / "wavs", {"spkB": 2, "spkA": 3})
    return tmp_path / "corpus", entries


def test_tree_layout_with_speaker_from_parent_folder(corpus, tmp_path, capsys):
    root, entries = corpus
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    got = _read(tmp_path / "out" / "all.jsonl")
    assert [(g["spk"], g["utt"]) for g in got] == sorted((e["spk"], e["utt"]) for e in entries)  # sorted by speaker
    by_utt = {e["utt"]: e for e in entries}
    for g in got:
        e = by_utt[g["utt"]]
        assert g["wav"] == e["wav"] and g["text"] == e["text"]
        assert g["duration"] == pytest.approx(e["duration"], abs=1e-4)
    # Paths are stored relative to the index, so the tree can move.
    assert not Path(_rows(tmp_path / "out" / "all.jsonl")[0]["wav"]).is_absolute()
    assert "5 utterances" in capsys.readouterr().out


def test_speaker_from_utt2spk_or_regex_never_a_fixed_prefix(corpus, tmp_path):
    root, entries = corpus
    (root / "utt2spk").write_text("".join(f"{e['utt']} talker{i % 2}\n" for i, e in enumerate(entries)))
    main([str(root), "--out", str(tmp_path / "u")])
    assert {g["utt"]: g["spk"] for g in _read(tmp_path / "u" / "all.jsonl")} == {
        e["utt"]: f"talker{i % 2}" for i, e in enumerate(entries)
    }
    (root / "utt2spk").unlink()
    main([str(root), "--out", str(tmp_path / "r"), "--speaker_rule", "regex", "--speaker_regex", r"_(\d)\d\d\.wav$"])
    assert {g["utt"]: g["spk"] for g in _read(tmp_path / "r" / "all.jsonl")} == {
        e["utt"]: e["utt"][-3] for e in entries
    }


def test_kaldi_layout_gives_the_same_index_as_the_tree(corpus, tmp_path):
    root, entries = corpus
    main([str(root), "--out", str(tmp_path / "tree")])
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(
        "".join(f"{e['utt']} {e['wav']}\n" for e in entries) + "piped sox x.wav -t wav - |\n"
    )
    (kaldi / "text").write_text("".join(f"{e['utt']} {e['text']}\n" for e in entries), encoding="utf-8")
    (kaldi / "utt2spk").write_text("".join(f"{e['utt']} {e['spk']}\n" for e in entries))
    main([str(kaldi), "--out", str(tmp_path / "k")])
    assert _read(tmp_path / "k" / "all.jsonl") == [
        dict(g, shard=str(tmp_path / "k" / "all.jsonl")) for g in _read(tmp_path / "tree" / "all.jsonl")
    ]


def test_bad_entries_are_skipped_with_reasons_and_the_corpus_is_untouched(corpus, tmp_path, capsys):
    root, entries = corpus
    wavs = [Path(e["wav"]) for e in entries]
    data = wavs[0].read_bytes()
    wavs[0].write_bytes(data[: len(data) * 2 // 3])  # truncated
    wavs[1].write_bytes(b"")  # 0 bytes
    wavs[2].with_suffix(".txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8
    wavs[3].with_suffix(".txt").write_text(" \n\t")  # empty
    (root / "wavs" / "orphan.wav").write_bytes(data)
    (root / "wavs" / "spkA" / "noise.wav").write_bytes(b"RIFF....WAVEjunk")
    (root / "wavs" / "spkA" / "noise.txt").write_text("not audio")
    before = hash_tree(root)
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    got = _read(tmp_path / "out" / "all.jsonl")
    assert [g["utt"] for g in got] == [entries[4]["utt"]]
    for reason in (
        "truncated audio: 1",
        "empty audio file (0 bytes): 1",
        "non-UTF-8 transcript: 1",
        "empty transcript: 1",
        "no transcript file: 1",
        "undecodable audio: 1",
    ):
        assert reason in out, reason
    assert hash_tree(root) == before


def test_splits_give_one_index_each(corpus, tmp_path, capsys):
    root, entries = corpus
    (tmp_path / "train.txt").write_text("\n".join(e["utt"] for e in entries[:3]) + "\n")
    (tmp_path / "dev.txt").write_text(f"{entries[3]['utt']}\nnot_an_utt\n")
    main([str(root), "--out", str(tmp_path / "o"), "--split", str(tmp_path / "train.txt"), str(tmp_path / "dev.txt")])
    assert sorted(g["utt"] for g in _read(tmp_path / "o" / "train.jsonl")) == sorted(e["utt"] for e in entries[:3])
    assert [g["utt"] for g in _read(tmp_path / "o" / "dev.jsonl")] == [entries[3]["utt"]]
    assert not (tmp_path / "o" / "all.jsonl").exists()


def test_committed_corpus_indexes_every_split(corpus_dir, tmp_path):
    splits = sorted((corpus_dir / "splits").glob("*.txt"))
    splits = [s for s in splits if s.stem in ("train", "dev", "test", "heldout")]
    assert main([str(corpus_dir), "--out", str(tmp_path), "--split", *map(str, splits)]) == 0
    for split in splits:
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        got = _read(tmp_path / f"{split.stem}.jsonl")
        assert sorted(g["utt"] for g in got) == sorted(ids)
        assert all(0.3 < g["duration"] < 10 and g["text"] for g in got)


def test_usage_errors_are_one_line(tmp_path, corpus):
    root, _ = corpus
    with pytest.raises(SystemExit, match="^error: corpus folder not found"):
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="^error: --speaker_rule regex needs"):
        main([str(root), "--out", str(tmp_path / "o"), "--speaker_rule", "regex"])
