"""The share of speaker references cut from the item itself: a per-item flag the pipeline carries
into every batch (so it crosses dataloader workers), logged by the trainer every window and
warned about above 20%."""
from __future__ import annotations

import json
import logging
from functools import partial
from typing import Iterable, Iterator

import pytest
import torch
from torch.utils.data import DataLoader

from speech.dataset import Dataset
from speech.dataset import processors as P

from .synth import write_corpus


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Speaker a: 3 utterances, b and c: one each (their references can only be self-crops)."""
    root = tmp_path_factory.mktemp("refshare")
    entries = write_corpus(root / "wavs", {"a": 3, "b": 1, "c": 1}, seconds=(0.6, 0.8))
    shard = root / "index.jsonl"
    shard.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "k"}) + "\n" for e in entries))
    (root / "data.list").write_text("index.jsonl\n")
    return root / "data.list"


PIPELINE = [
    partial(P.speaker_reference, min_seconds=0.2, max_seconds=0.4),
    partial(P.batch, batch_type="static", batch_size=2),
    P.padding,
]


def test_batches_flag_the_items_whose_reference_is_a_self_crop(index):
    ds = Dataset(index, PIPELINE, shuffle=False)
    flags = {u: bool(f) for b in ds for u, f in zip(b["utt"], b["ref_self_crop"], strict=True)}
    assert flags == {"a_000": False, "a_001": False, "a_002": False, "b_000": True, "c_000": True}
    assert ds.events["reference cut from the item itself"] == 2
    assert sum(flags.values()) / len(flags) == pytest.approx(0.4)


def test_the_flags_cross_dataloader_workers(index):
    # partition=False: each of the two workers reads the whole list, so every item arrives twice.
    loader = DataLoader(Dataset(index, PIPELINE, shuffle=False, partition=False), batch_size=None, num_workers=2)
    batches = list(loader)
    assert all(b["ref_self_crop"].dtype == torch.bool for b in batches)
    selfs = sorted(u for b in batches for u, f in zip(b["utt"], b["ref_self_crop"], strict=True) if f)
    assert selfs == ["b_000", "b_000", "c_000", "c_000"]


def mark_refs(batches: Iterable[dict], pattern: tuple = (True, False)) -> Iterator[dict]:
    """A toy stand-in for speaker_reference + padding: flags the batch items by ``pattern``."""
    for batch in batches:
        yield {**batch, "ref_self_crop": torch.tensor(list(pattern)[: len(batch["utt"])], dtype=torch.bool)}


@pytest.mark.parametrize("pattern,share,warns", [([True, False], 0.5, True), ([False, False], 0.0, False)])
def test_the_trainer_logs_the_share_every_window_and_warns_above_20_percent(tmp_path, caplog, pattern, share,
                                                                              warns):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from speech.trainer.cli import run
    from tests.trainer.support import TOY_CONFIG
    from tests.trainer.toy import write_corpus as write_toy_corpus

    data = write_toy_corpus(tmp_path / "data", [12])
    text = tmp_path / "toy.yaml"
    conf = TOY_CONFIG.read_text().replace(
        "    poison: !ref <poison>\n",
        f"    poison: !ref <poison>\n  - !name:tests.dataset.test_ref_share.mark_refs\n    pattern: {pattern}\n",
    )
    assert "mark_refs" in conf
    text.write_text(conf)
    args = ["--config", str(text), "--trust_config", "--model", "toy", "--train_data", str(data), "--model_dir", str(tmp_path / "exp"),
            "--comet_disabled", "train_conf.max_epoch=1"]
    with caplog.at_level(logging.WARNING, logger="speech"):
        run(args)
    events = EventAccumulator(str(tmp_path / "exp" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    values = [e.value for e in events.Scalars("data/ref_self_crop_share")]
    assert len(values) == 3 and values == pytest.approx([share] * 3)  # 12 items, batches of 2, a log every 2 steps
    warnings = [r.getMessage() for r in caplog.records if "cut from the item itself" in r.getMessage()]
    assert len(warnings) == (1 if warns else 0), warnings  # once, not every window
    if warns:
        assert "50%" in warnings[0]
