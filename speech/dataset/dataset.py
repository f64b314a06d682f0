"""The dataset: index shards in, ready batches out, through a chain of generator processors.

``data.list`` names JSON-lines index shards. Every (rank, dataloader worker) pair reads its own
byte range of every shard, so utterances are split disjointly and completely across all readers
and no reader parses the whole index. Each epoch the byte ranges are dealt to the readers in a new
seeded order, so a rank does not see the same utterances every epoch.

Each processor is a generator ``f(items, **kw)`` taking the previous stage's iterator; YAML lists
them in order (``!name:speech.dataset.processors.x``). A processor that declares a ``ctx`` parameter
also receives the epoch's :class:`~speech.dataset.context.PipelineContext` (epoch, seed, reader
slot, skip counter): that is how seeded processors follow :meth:`Dataset.set_epoch`.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from .context import PipelineContext, SkipCounter

__all__ = [
    "DataListError",
    "PATH_KEYS",
    "read_data_list",
    "read_index",
    "rank_and_world",
    "reader_slot",
    "iter_index_range",
    "Dataset",
]

log = logging.getLogger(__name__)

Processor = Callable[..., Iterator[Any]]

# Index fields holding file paths; relative ones resolve against the folder of their index file.
PATH_KEYS = ("wav", "token_path", "latent_path")


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


def _parse_line(line: bytes, base: str, path: str, offset: int, skips: SkipCounter | None) -> dict | None:
    """One index line as an item with resolved paths, or None (counted) when it is unusable."""
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if skips is not None:
            skips.skip("unreadable index line", f"{path}@{offset}", str(exc))
        return None
    if not isinstance(item, dict) or not isinstance(item.get("utt"), str):
        if skips is not None:
            skips.skip("index entry without an utt id", f"{path}@{offset}")
        return None
    for key in PATH_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            item[key] = os.path.normpath(os.path.join(base, value))
    item["shard"] = path
    item["offset"] = offset
    return item


def read_index(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[dict]:
    """Every entry of one JSON-lines index file (tools use this; training reads byte ranges)."""
    yield from iter_index_range(str(path), 0, 1, skips)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def reader_slot() -> tuple[int, int]:
    """``(index, count)`` of this reader among all ranks × dataloader workers."""
    rank, world = rank_and_world()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def iter_index_range(path: str, slot: int, slots: int, skips: SkipCounter | None = None) -> Iterator[dict]:
    """Lines of one JSON-lines shard whose first byte lies in range ``slot`` of ``slots`` equal ranges.

    A line belongs to the range holding its first byte, so the ranges of all slots together cover
    every line exactly once, whatever the line lengths. Items get ``shard`` and ``offset`` (the
    line's byte offset) fields, and relative paths resolved against the shard's folder.
    """
    size = os.path.getsize(path)
    start, end = size * slot // slots, size * (slot + 1) // slots
    base = os.path.dirname(path)
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line straddling `start` belongs to the previous slot
        while f.tell() < end:
            offset = f.tell()
            line = f.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            item = _parse_line(line, base, path, offset, skips)
            if item is not None:
                yield item


def _accepts_ctx(processor: Processor) -> bool:
    try:
        return "ctx" in inspect.signature(processor).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class Dataset(IterableDataset):
    """Index shards → processor chain → items or batches, split across ranks and workers.

    With ``partition=False`` every reader sees every utterance (e.g. a CV set evaluated whole on
    each rank). ``skips`` holds the skip counter of the latest epoch iterated in this process
    and ``events`` its notable non-skips (with dataloader workers, these live in the workers and
    each worker logs its own summary when its epoch ends).
    """

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
        self.skips = SkipCounter()
        self.events: Counter[str] = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shard order, the range dealing and every seeded processor for a new epoch.

        Call it before iterating a DataLoader for that epoch. Workers copy the dataset when they
        start, so with ``persistent_workers=True`` they would keep the old epoch: leave it False.
        """
        self.epoch = epoch

    def context(self) -> PipelineContext:
        """A fresh context for this reader and epoch."""
        slot, slots = reader_slot() if self.partition else (0, 1)
        where = f"data reader {slot + 1}/{slots}" if slots > 1 else "data"
        return PipelineContext(self.epoch, self.seed, slot, slots, SkipCounter(where))

    def source(self, ctx: PipelineContext | None = None) -> Iterator[dict]:
        """Index items of this reader's byte range of every shard, shards in epoch-seeded order."""
        ctx = ctx or self.context()
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(order)
        for i in order:
            ranges = list(range(ctx.slots))
            if self.shuffle:  # deal the byte ranges anew each epoch; every reader computes the same deal
                random.Random(f"ranges:{self.seed}:{self.epoch}:{i}").shuffle(ranges)
            yield from iter_index_range(self.shards[i], ranges[ctx.slot], ctx.slots, ctx.skips)

    def __iter__(self) -> Iterator[Any]:
        ctx = self.context()
        self.skips, self.events = ctx.skips, ctx.events
        stream: Iterable[Any] = self.source(ctx)
        for processor in self.pipeline:
            stream = processor(stream, ctx=ctx) if _accepts_ctx(processor) else processor(stream)
        yield from stream
        if ctx.skips.total:
            log.warning("%s: epoch %d: %s", ctx.skips.where, ctx.epoch, ctx.skips.summary())
        if ctx.events:
            log.info(
                "%s: epoch %d: %s",
                ctx.skips.where,
                ctx.epoch,
                ", ".join(f"{k}: {n}" for k, n in sorted(ctx.events.items())),
            )
