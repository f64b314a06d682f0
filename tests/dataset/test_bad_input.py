"""Every kind of bad input is skipped with its counted reason; good items still come through; the
disk is left untouched; each reason is logged once with an example path and summarised per epoch."""
from __future__ import annotations

import json
import logging
from functools import partial

import torch
from torch.utils.data import DataLoader

from speech.dataset import Dataset
from speech.dataset import processors as P

from .synth import hash_tree, write_corpus, write_features


class Chars:
    def encode(self, text):
        return [ord(c) % 1000 for c in text]


def _build(tmp_path):
    entries = write_corpus(tmp_path / "wavs", {"a": 6, "b": 6, "c": 6, "d": 6, "e": 5}, seconds=(0.8, 1.2))
    feat = tmp_path / "feat"
    entries = [write_features(e, feat, ratio=2, dim=8) for e in entries]
    good, bad = entries[:8], entries[8:]
    expect = {}

    def spoil(e, reason, **changes):
        e.update(changes)
        expect[reason] = expect.get(reason, 0) + 1
        return e

    wav_bytes = open(bad[0]["wav"], "rb").read()
    open(bad[0]["wav"], "wb").write(wav_bytes[: len(wav_bytes) // 2])
    spoil(bad[0], "audio length disagrees with the index (truncated?)")
    open(bad[1]["wav"], "wb").close()
    spoil(bad[1], "unreadable audio (empty file (0 bytes))")
    spoil(bad[2], "non-UTF-8 text", text="caf\udce9")
    spoil(bad[3], "empty text", text="   ")
    spoil(bad[4], "missing token file", token_path=str(feat / "nowhere_fsq.pt"))
    open(bad[5]["token_path"], "wb").write(b"not a torch file")
    spoil(bad[5], "corrupt token file")
    open(bad[6]["latent_path"], "wb").close()
    spoil(bad[6], "corrupt latent file")
    torch.save({"mu": torch.full((8, bad[7]["n_latent_frames"]), float("nan"))}, bad[7]["latent_path"])
    spoil(bad[7], "non-finite latent values")
    mu = torch.zeros(8, bad[8]["n_latent_frames"])
    mu[3, 5] = float("inf")
    torch.save({"mu": mu}, bad[8]["latent_path"])
    spoil(bad[8], "non-finite latent values")
    torch.save(torch.zeros(2, 10, dtype=torch.long), bad[9]["token_path"])
    spoil(bad[9], "token file is not a 1-D integer tensor")
    torch.save(torch.zeros(10), bad[10]["token_path"])
    spoil(bad[10], "token file is not a 1-D integer tensor")
    torch.save({"mu": torch.zeros(6, bad[11]["n_latent_frames"])}, bad[11]["latent_path"])
    spoil(bad[11], "latent has the wrong shape")
    torch.save({"mu": torch.zeros(bad[12]["n_latent_frames"])}, bad[12]["latent_path"])
    spoil(bad[12], "latent has the wrong shape")
    torch.save(torch.tensor([1, 2, 6561]), bad[13]["token_path"])
    spoil(bad[13], "token id outside 0..6560")
    torch.save(torch.tensor([-1, 2, 3]), bad[14]["token_path"])
    spoil(bad[14], "token id outside 0..6560")
    spoil(bad[15], "duration outside [0.3, 20.0] s", duration=1e9)
    spoil(bad[16], "missing or invalid duration", duration=-1.0)
    spoil(bad[17], "missing or invalid duration", duration=float("nan"))
    spoil(bad[18], "missing or invalid duration", duration="long")
    torch.save({"logs": torch.zeros(8, 4)}, bad[19]["latent_path"])
    spoil(bad[19], "latent file has no 'mu' tensor")
    torch.save(torch.arange(3), bad[20]["token_path"])  # 3 tokens against ~50 latent frames
    spoil(bad[20], "token/latent lengths disagree")

    lines = [json.dumps({k: v for k, v in e.items() if k != "k"}).encode() for e in good + bad]
    lines.insert(3, b'{"utt": "raw", "text": "\xff\xfe not utf-8"}')
    expect["unreadable index line"] = 1
    shard = tmp_path / "index" / "shard.jsonl"
    shard.parent.mkdir()
    shard.write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "index" / "data.list").write_text("shard.jsonl\n")
    pipeline = [
        partial(P.tokenize_text, tokenizer=Chars()),
        partial(P.filter_items, min_duration=0.3, max_duration=20.0),
        P.load_speech_token,
        partial(P.load_latent, dim=8),
        partial(P.align_lengths, token_latent_ratio=2),
        P.load_audio,
        partial(P.speaker_reference, min_seconds=0.3, max_seconds=0.6),
        partial(P.batch, batch_type="static", batch_size=3),
        P.padding,
    ]
    return tmp_path / "index" / "data.list", pipeline, good, expect


def test_every_bad_kind_is_skipped_with_its_reason(tmp_path, caplog):
    data_list, pipeline, good, expect = _build(tmp_path)
    before = hash_tree(tmp_path)
    ds = Dataset(data_list, pipeline, shuffle=False)
    with caplog.at_level(logging.WARNING):
        batches = list(ds)
    utts = [u for b in batches for u in b["utt"]]
    assert sorted(utts) == sorted(e["utt"] for e in good)
    assert dict(ds.skips.counts) == expect
    for b in batches:
        assert (b["speech_token_len"] * 2 == b["latent_len"]).all()
        assert torch.isfinite(b["latent"]).all() and b["ref_audio"].shape[0] == len(b["utt"])
    # One log line per reason, naming an example path, then one summary at the end of the epoch.
    messages = [r.getMessage() for r in caplog.records]
    for reason in expect:
        lines = [m for m in messages if f": {reason}" in m and "skipping" in m]
        assert len(lines) == 1, reason
        assert ds.skips.examples[reason] in lines[0]
    summary = [m for m in messages if "epoch 0" in m]
    assert len(summary) == 1 and f"{sum(expect.values())} items skipped" in summary[0]
    assert hash_tree(tmp_path) == before, "the pipeline modified or created files"


def test_bad_items_are_skipped_inside_dataloader_workers_too(tmp_path):
    data_list, pipeline, good, _ = _build(tmp_path)
    before = hash_tree(tmp_path)
    loader = DataLoader(Dataset(data_list, pipeline), batch_size=None, num_workers=2)
    utts = [u for b in loader for u in b["utt"]]
    assert sorted(utts) == sorted(e["utt"] for e in good)
    assert hash_tree(tmp_path) == before
