"""Frame counting, RNG isolation and the resumable epoch iterator."""
from __future__ import annotations

import io
import random

import numpy as np
import torch

from speech.dataset import Dataset
from speech.trainer.data import (LoaderConf, attach_skip_counts, count_frames, count_items, epoch_batches,
                                 skipped_items)
from speech.trainer.rng import IsolatedRNG, capture_rng, restore_rng

from .toy import batch, parse, shuffle


def test_count_frames_uses_first_present_key():
    b = {"audio_len": torch.tensor([100, 200]), "speech_token_len": torch.tensor([3, 4]),
         "latent_len": torch.tensor([6, 8]), "utt": ["a", "b"]}
    assert count_frames(b) == 14
    del b["latent_len"]
    assert count_frames(b) == 7
    del b["speech_token_len"]
    assert count_frames(b) == 300
    assert count_frames({"x": torch.zeros(2)}) == 0
    assert count_items(b) == 2 and count_items({"x": torch.zeros(5, 3)}) == 5
    assert skipped_items({"skipped": 3}) == {"total": 3}
    assert skipped_items({"skipped": {"too_long": 2}}) == {"too_long": 2}


def test_isolated_rng_neither_sees_nor_changes_the_outer_stream():
    def outer_draws(use_isolated: bool) -> list[float]:
        random.seed(1); np.random.seed(1); torch.manual_seed(1)  # noqa: E702
        iso = IsolatedRNG(5)
        out = [random.random()]
        if use_isolated:
            with iso:
                inner = (random.random(), float(np.random.rand()), float(torch.rand(())))
        out += [random.random(), float(np.random.rand()), float(torch.rand(()))]
        return out, inner if use_isolated else None

    plain, _ = outer_draws(False)
    with_block, inner = outer_draws(True)
    assert plain == with_block
    again = IsolatedRNG(5)
    with again:
        assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == inner


def test_rng_state_survives_weights_only_load():
    state = capture_rng()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    want = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want


def _ids(batches) -> list[list[str]]:
    return [b["utt"] for b in batches]


def test_skip_reproduces_the_epoch_tail(toy_data):
    pipeline = [parse, shuffle, batch]
    ds = Dataset(toy_data / "train.list", pipeline, shuffle=True, seed=3)
    firsts = {}
    for workers in (0, 1):
        conf = LoaderConf(num_workers=workers)
        full = _ids(epoch_batches(ds, 1, conf, seed=3, rank=0))
        torch.manual_seed(123)  # the model's stream must not matter
        tail = _ids(epoch_batches(ds, 1, conf, seed=3, rank=0, skip=2))
        assert len(full) == 6 and tail == full[2:]
        firsts[workers] = full
    other_epoch = _ids(epoch_batches(ds, 2, LoaderConf(), seed=3, rank=0))
    assert other_epoch != firsts[0]  # the shuffle is reseeded per epoch


def drop_every_third(items, ctx):
    """A processor that skips items through the pipeline's skip counter, as the real ones do."""
    for i, item in enumerate(items):
        if i % 3 == 2:
            ctx.skips.skip("third", item["utt"])
            continue
        yield item


def test_skip_counts_reach_the_batches_from_workers(toy_data):
    pipeline = [drop_every_third, parse, batch, attach_skip_counts]
    ds = Dataset(toy_data / "train.list", pipeline, shuffle=False)
    for workers in (0, 1):
        batches = list(epoch_batches(ds, 0, LoaderConf(num_workers=workers), seed=0, rank=0))
        assert sum(len(b["utt"]) for b in batches) == 8  # 12 utterances, 4 skipped
        per_batch = [skipped_items(b) for b in batches]
        # counted once each, from inside the worker, with the batch that follows the skip; u0011 is
        # skipped after the last batch left, so only the dataset's end-of-epoch summary reports it
        assert [c.get("third", 0) for c in per_batch] == [0, 1, 1, 1]
        assert all(c["too_long"] == 1 for c in per_batch)  # the batch's own count is kept
