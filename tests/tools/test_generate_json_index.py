"""tools/generate_json_index.py: joins tokens and latents, reports inconsistent items, shards."""
from __future__ import annotations

import json

import torch

from speech.dataset import Dataset, read_data_list
from speech.dataset import processors as P
from tests.dataset.synth import hash_tree, write_corpus, write_features, write_index
from tools.generate_json_index import main


def _setup(tmp_path, ratio=2):
    entries = write_corpus(tmp_path / "wavs", {"a": 4, "b": 4}, seconds=(0.5, 1.5))
    feats = [write_features(e, tmp_path / "feat" / e["spk"], ratio=ratio, dim=8) for e in entries]
    index = write_index(tmp_path / "index.jsonl", entries)
    return entries, feats, index


def _rows(data_list):
    return [json.loads(line) for shard in read_data_list(data_list) for line in open(shard, encoding="utf-8")]


def test_join_shards_and_data_list_feed_the_dataset(tmp_path, capsys):
    _, feats, index = _setup(tmp_path, ratio=3)
    args = ["--index", str(index), "--out", str(tmp_path / "out"), "--token_dir", str(tmp_path / "feat")]
    args += ["--latent_dir", str(tmp_path / "feat"), "--latent_suffix", "_latent3x.pt", "--token_latent_ratio", "3"]
    assert main(args + ["--num_shards", "3", "--num_workers", "0"]) == 0
    assert "8 items (8 with tokens, 8 with latents) in 3 shard(s)" in capsys.readouterr().out
    data_list = tmp_path / "out" / "data.list"
    assert data_list.read_text().split() == ["shard_00000.jsonl", "shard_00001.jsonl", "shard_00002.jsonl"]
    rows = _rows(data_list)
    assert [r["utt"] for r in rows] == [f["utt"] for f in feats]  # input (speaker-grouped) order kept
    for r, f in zip(rows, feats, strict=False):
        assert (r["n_tokens"], r["n_latent_frames"]) == (f["n_tokens"], f["n_latent_frames"])
        assert not r["token_path"].startswith("/")  # relative to the shard folder
    pipeline = [P.load_speech_token, P.load_latent, lambda items: P.align_lengths(items, token_latent_ratio=3)]
    items = list(Dataset(data_list, pipeline, shuffle=False))
    assert [i["utt"] for i in items] == [f["utt"] for f in feats]
    assert all(len(i["speech_token"]) * 3 == i["latent"].shape[-1] for i in items)


def test_inconsistent_items_are_reported_and_left_out(tmp_path, capsys):
    entries, feats, index = _setup(tmp_path)
    torch.save(torch.arange(5), feats[0]["token_path"])  # far from T_lat / 2
    open(feats[1]["latent_path"], "wb").write(b"garbage")
    torch.save({"mu": torch.full((8, 10), float("nan"))}, feats[2]["latent_path"])
    torch.save(torch.tensor([0, 7000]), feats[3]["token_path"])
    before = hash_tree(tmp_path / "feat")
    main(
        [
            "--index",
            str(index),
            "--out",
            str(tmp_path / "out"),
            "--token_dir",
            str(tmp_path / "feat"),
            "--latent_dir",
            str(tmp_path / "feat"),
            "--num_workers",
            "2",
        ]
    )
    out = capsys.readouterr().out
    for reason in (
        "token/latent lengths disagree: 1",
        "corrupt latent file: 1",
        "non-finite latent values: 1",
        "token id outside 0..6560: 1",
    ):
        assert reason in out
    assert [r["utt"] for r in _rows(tmp_path / "out" / "data.list")] == [f["utt"] for f in feats[4:]]
    assert hash_tree(tmp_path / "feat") == before


def test_works_before_latents_exist_and_require_drops_what_is_missing(tmp_path, capsys):
    entries, feats, index = _setup(tmp_path)
    for f in feats:
        (tmp_path / "feat" / f["spk"] / f"{f['utt']}_latent2x.pt").unlink()
    (tmp_path / "feat" / "a" / "a_000_fsq.pt").unlink()
    common = ["--index", str(index), "--token_dir", str(tmp_path / "feat"), "--num_workers", "0"]
    main(common + ["--out", str(tmp_path / "llm")])
    rows = _rows(tmp_path / "llm" / "data.list")
    assert len(rows) == 8 and all("latent_path" not in r for r in rows)
    assert sum("token_path" in r for r in rows) == 7
    main(common + ["--out", str(tmp_path / "req"), "--require", "tokens"])
    assert "no token file: 1" in capsys.readouterr().out
    assert [r["utt"] for r in _rows(tmp_path / "req" / "data.list")] == [f["utt"] for f in feats[1:]]


def test_latents_below_the_token_rate_join_at_a_fractional_ratio(tmp_path, capsys):
    entries, feats, index = _setup(tmp_path)
    for f in feats:  # 12.5 Hz latents: one frame per two tokens
        n_lat = (f["n_tokens"] + 1) // 2
        torch.save({"mu": torch.zeros(8, n_lat), "logs": torch.zeros(8, n_lat), "sample_rate": 24000, "hop": 1920,
                    "n_samples": 0, "checkpoint": "t"}, f["latent_path"].replace("_latent2x.pt", "_latent0.5x.pt"))
    args = ["--index", str(index), "--out", str(tmp_path / "out"), "--token_dir", str(tmp_path / "feat"),
            "--latent_dir", str(tmp_path / "feat"), "--latent_suffix", "_latent0.5x.pt", "--token_latent_ratio", "0.5",
            "--num_workers", "0"]
    assert main(args) == 0
    assert "8 items (8 with tokens, 8 with latents)" in capsys.readouterr().out
