"""The dataset: index shards in, ready batches out, through a chain of generator processors.

``data.list`` names JSON-lines index shards. Every (rank, dataloader worker) pair reads its own
byte range of every shard, so utterances are split disjointly and completely across all readers
and no reader parses the whole index. Each processor is a generator ``f(items, **kw)`` taking the
previous stage's iterator; YAML lists them in order (``!name:speech.dataset.processors.x``).
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["DataListError", "read_data_list", "reader_slot", "iter_index_range", "Dataset"]

log = logging.getLogger(__name__)

Processor = Callable[..., Iterator[Any]]


class DataListError(ValueError):
    """A data.list that cannot be used (missing, empty, or naming missing shards)."""


def read_data_list(path: str | os.PathLike) -> list[str]:
    """Shard paths from a data.list; relative paths resolve against the list's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataListError(f"data list not found: {path}")
    shards = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            shard = Path(line)
            shards.append(str(shard if shard.is_absolute() else path.parent / shard))
    if not shards:
        raise DataListError(f"data list names no shards: {path}")
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise DataListError(f"{path} names {len(missing)} missing shard(s), e.g. {missing[0]}")
    return shards


def reader_slot() -> tuple[int, int]:
    """``(index, count)`` of this reader among all ranks × dataloader workers."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def iter_index_range(path: str, slot: int, slots: int) -> Iterator[dict]:
    """Lines of one JSON-lines shard whose first byte lies in this slot's byte range.

    A line belongs to the range holding its first byte, so the ranges of all slots together cover
    every line exactly once, whatever the line lengths.
    """
    size = os.path.getsize(path)
    start, end = size * slot // slots, size * (slot + 1) // slots
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line straddling `start` belongs to the previous slot
        while f.tell() < end:
            line = f.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("skipping unreadable index line in %s", path)
                continue
            item["shard"] = path
            yield item


class Dataset(IterableDataset):
    """Index shards → processor chain → items or batches, split across ranks and workers."""

    def __init__(
        self,
        data_list: str | os.PathLike,
        pipeline: Sequence[Processor] = (),
        shuffle: bool = True,
        partition: bool = True,
        seed: int = 0,
    ):
        self.shards = read_data_list(data_list)
        self.pipeline = list(pipeline)
        self.shuffle = shuffle
        self.partition = partition
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shard order (and any seeded processor) for a new epoch."""
        self.epoch = epoch

    def source(self) -> Iterator[dict]:
        slot, slots = reader_slot() if self.partition else (0, 1)
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(shards)
        for shard in shards:
            yield from iter_index_range(shard, slot, slots)

    def __iter__(self) -> Iterator[Any]:
        stream: Iterable[Any] = self.source()
        for processor in self.pipeline:
            stream = processor(stream)
        return iter(stream)
