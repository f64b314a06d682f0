"""Reference lists: both formats, path resolution, bad lines skipped; corpus splits."""

from __future__ import annotations

import json

import pytest

from speech.eval.reflist import RefItem, RefListError, corpus_items, read_ref_list


def test_tsv_and_json_lines(tmp_path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    lst = tmp_path / "refs.txt"
    lines = [
        "# comment",
        "",
        "u1\ta.wav\tHello there.",
        "u2\t/abs/b.wav",
        "u3\ta.wav\tText\tprompt.wav",
        json.dumps({"utt": "u4", "spk": "s", "wav": "a.wav", "text": "Index line", "duration": 1.0}),
        json.dumps({"utt": 5, "wav": "a.wav", "text": 2024}),  # non-string values are read as text
        "u5 only-one-column",  # malformed
        "{not json",  # malformed
        json.dumps({"wav": "a.wav"}),  # no utt
        "u1\ta.wav\tduplicate",  # duplicate id
    ]
    lst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = read_ref_list(lst)
    assert [i.utt for i in items] == ["u1", "u2", "u3", "u4", "5"]
    assert items[0] == RefItem("u1", str(tmp_path / "a.wav"), "Hello there.")
    assert items[1].wav == "/abs/b.wav" and items[1].text is None
    assert items[2].prompt_wav == str(tmp_path / "prompt.wav")
    assert items[3].spk == "s" and items[3].text == "Index line"
    assert items[4].text == "2024"


def test_relative_path_falls_back_to_working_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "x.wav").write_bytes(b"")
    (tmp_path / "lists").mkdir()
    lst = tmp_path / "lists" / "refs.tsv"
    lst.write_text("x\taudio/x.wav\thi\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert read_ref_list(lst)[0].wav == "audio/x.wav"  # not beside the list, but from the cwd


def test_unusable_lists_fail_with_one_line(tmp_path) -> None:
    with pytest.raises(RefListError, match="not found"):
        read_ref_list(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("nonsense\n", encoding="utf-8")
    with pytest.raises(RefListError, match="no usable line"):
        read_ref_list(bad)
    with pytest.raises(RefListError, match="no utt2spk"):
        corpus_items(tmp_path)


def test_corpus_split(corpus_dir) -> None:
    items = corpus_items(corpus_dir, "test")
    assert len(items) == 18
    assert all(i.text and i.spk and i.wav.endswith(f"{i.spk}/{i.utt}.wav") for i in items)
    assert len({i.spk for i in items}) == 6
    with pytest.raises(RefListError, match="no split"):
        corpus_items(corpus_dir, "nope")
