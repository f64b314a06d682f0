"""Dataset core: utterance-level split across ranks × workers, epoch seeding, path resolution."""
from __future__ import annotations

import json
from collections import Counter
from functools import partial

import pytest
from torch.utils.data import DataLoader

import speech.dataset.dataset as dataset_module
from speech.dataset import DataListError, Dataset, read_data_list
from speech.dataset.context import PipelineContext
from speech.dataset.dataset import iter_index_range

from .synth import write_data_list, write_index


def _entries(n: int) -> list[dict]:
    # Varied line lengths, so byte ranges cut lines at arbitrary points.
    return [
        {"utt": f"u{i:03d}", "spk": f"s{i % 3}", "wav": f"w/{i}.wav", "text": "x" * (i * 7 % 23), "duration": 1.0}
        for i in range(n)
    ]


def _utts_per_rank(data_list, rank: int, world: int, workers: int, epoch: int, monkeypatch, **kw) -> list[str]:
    monkeypatch.setattr(dataset_module, "rank_and_world", lambda: (rank, world))
    ds = Dataset(data_list, [], **kw)
    ds.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return [item["utt"] for item in loader]


@pytest.mark.parametrize("num_shards", [1, 5])
def test_ranks_times_workers_split_is_disjoint_and_complete(tmp_path, monkeypatch, num_shards):
    entries = _entries(37)
    data_list = write_data_list(tmp_path, entries, num_shards)
    for epoch in (0, 1):
        per_rank = [_utts_per_rank(data_list, r, 2, 2, epoch, monkeypatch) for r in range(2)]
        seen = Counter(u for utts in per_rank for u in utts)
        assert seen == Counter(e["utt"] for e in entries), f"epoch {epoch}: some utterance missing or repeated"
        assert all(len(utts) >= 5 for utts in per_rank), "a rank got (almost) nothing"
    # Each epoch deals the byte ranges anew: a rank does not see the same utterances every epoch.
    e0 = set(_utts_per_rank(data_list, 0, 2, 2, 0, monkeypatch))
    e1 = set(_utts_per_rank(data_list, 0, 2, 2, 1, monkeypatch))
    e2 = set(_utts_per_rank(data_list, 0, 2, 2, 2, monkeypatch))
    assert len({frozenset(e0), frozenset(e1), frozenset(e2)}) > 1


def test_byte_ranges_cover_every_line_once_for_any_slot_count(tmp_path):
    path = write_index(tmp_path / "one.jsonl", _entries(23))
    for slots in (1, 2, 3, 7, 23, 40):
        got = [item["utt"] for s in range(slots) for item in iter_index_range(str(path), s, slots)]
        assert sorted(got) == [f"u{i:03d}" for i in range(23)], slots


def test_without_partition_every_reader_sees_everything(tmp_path, monkeypatch):
    data_list = write_data_list(tmp_path, _entries(11), 3)
    utts = _utts_per_rank(data_list, 1, 2, 0, 0, monkeypatch, partition=False)
    assert sorted(utts) == sorted(e["utt"] for e in _entries(11))


def test_shard_order_is_seeded_by_epoch(tmp_path):
    data_list = write_data_list(tmp_path, _entries(30), 6)
    ds = Dataset(data_list, [], seed=3)
    orders = []
    for epoch in (0, 0, 1):
        ds.set_epoch(epoch)
        orders.append([item["utt"] for item in ds])
    assert orders[0] == orders[1]
    assert orders[0] != orders[2] and sorted(orders[0]) == sorted(orders[2])
    unshuffled = [item["utt"] for item in Dataset(data_list, [], shuffle=False)]
    assert unshuffled == [e["utt"] for e in _entries(30)]


def test_relative_paths_resolve_against_the_shard_and_items_carry_their_origin(tmp_path):
    folder = tmp_path / "idx"
    write_index(
        folder / "a.jsonl", [{"utt": "x", "wav": "../wavs/x.wav", "token_path": "/abs/x_fsq.pt", "duration": 1.0}]
    )
    (folder / "data.list").write_text("a.jsonl\n")
    (item,) = list(Dataset(folder / "data.list", []))
    assert item["wav"] == str(tmp_path / "wavs" / "x.wav")
    assert item["token_path"] == "/abs/x_fsq.pt"
    assert item["shard"] == str(folder / "a.jsonl") and item["offset"] == 0


def test_unreadable_index_lines_are_counted_and_the_rest_read(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b'{"utt": "a", "duration": 1}\nnot json\n\xff\xfe{"utt": 1}\n[1, 2]\n{"utt": "b", "duration": 1}\n'
    )
    (tmp_path / "data.list").write_text("s.jsonl\n")
    ds = Dataset(tmp_path / "data.list", [])
    assert [item["utt"] for item in ds] == ["a", "b"]
    assert ds.skips.counts == {"unreadable index line": 2, "index entry without an utt id": 1}


def test_processors_receive_the_epoch_context(tmp_path):
    data_list = write_data_list(tmp_path, _entries(3), 1)
    seen = []

    def record(items, tag, ctx=None):
        for item in items:
            seen.append((tag, ctx.epoch, ctx.seed))
            yield item

    def plain(items):  # a processor without ctx is called without it
        yield from items

    ds = Dataset(data_list, [partial(record, tag="a"), plain], seed=5)
    ds.set_epoch(4)
    assert len(list(ds)) == 3
    assert set(seen) == {("a", 4, 5)}


def test_context_rng_is_fixed_by_seed_epoch_and_slot():
    draw = lambda **kw: PipelineContext(**kw).rng("x").random()  # noqa: E731
    assert draw(epoch=1, seed=2, slot=0, slots=2) == draw(epoch=1, seed=2, slot=0, slots=2)
    assert len({draw(epoch=e, seed=s, slot=k, slots=2) for e in (0, 1) for s in (0, 1) for k in (0, 1)}) == 8


def test_data_list_errors_are_one_line(tmp_path):
    with pytest.raises(DataListError, match="not found"):
        read_data_list(tmp_path / "nope.list")
    (tmp_path / "empty.list").write_text("# nothing\n")
    with pytest.raises(DataListError, match="no shards"):
        read_data_list(tmp_path / "empty.list")
    (tmp_path / "bad.list").write_text("missing.jsonl\n")
    with pytest.raises(DataListError, match="1 missing shard"):
        read_data_list(tmp_path / "bad.list")


def test_read_index_returns_what_was_written(tmp_path):
    entries = _entries(4)
    path = write_index(tmp_path / "i.jsonl", entries)
    got = list(dataset_module.read_index(path))
    assert [g["utt"] for g in got] == [e["utt"] for e in entries]
    assert got[1]["wav"] == str(tmp_path / "w" / "1.wav")
    assert json.loads(path.read_text().splitlines()[2])["text"] == got[2]["text"]
