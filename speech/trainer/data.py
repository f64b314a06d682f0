"""Batches for the loop: per-epoch loaders with reproducible randomness and resumable position.

The dataset (``speech.dataset.Dataset``) already yields ready, padded batches, so the
``DataLoader`` only adds worker processes (``batch_size=None``: no collation). Reproducibility,
which exact resume relies on:

* with workers, the loader's ``generator`` is seeded from (seed, epoch, rank), so every worker's
  Python/NumPy/torch generators are seeded identically on a rerun;
* without workers, the pipeline runs in this process under its own ``IsolatedRNG`` seeded the
  same way, so the model's random draws (dropout, noise) and the data's never interleave.

The data position is "batches of this epoch already consumed": a resumed run rebuilds the epoch's
iterator and discards that many batches (they are produced again, then dropped).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, IterableDataset

from .rng import IsolatedRNG, derive_seed

__all__ = ["LoaderConf", "FRAME_KEYS", "count_frames", "count_items", "skipped_items", "attach_skip_counts",
           "to_device", "epoch_batches"]

log = logging.getLogger(__name__)

#: Throughput is reported in frames of the first of these length keys present in a batch:
#: latent frames (flow), speech tokens (LM), audio samples (codec).
FRAME_KEYS = ("latent_len", "speech_token_len", "audio_len")


@dataclass
class LoaderConf:
    """DataLoader settings from the command line."""

    num_workers: int = 0
    prefetch: int = 2
    pin_memory: bool = False


def count_frames(batch: Mapping[str, Any]) -> int:
    """Summed lengths of the first of :data:`FRAME_KEYS` present (0 if none), read on the host."""
    for key in FRAME_KEYS:
        lengths = batch.get(key)
        if isinstance(lengths, torch.Tensor):
            return int(lengths.sum()) if lengths.device.type == "cpu" else 0
    return 0


def count_items(batch: Mapping[str, Any]) -> int:
    """Utterances in a batch: ``len(utt)`` when present, else the first tensor's leading size."""
    utt = batch.get("utt")
    if isinstance(utt, (list, tuple)):
        return len(utt)
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def skipped_items(batch: Mapping[str, Any]) -> dict[str, int]:
    """Items the pipeline dropped since the previous batch, by reason.

    Read from the batch key ``skipped`` (an int or a ``{reason: count}`` mapping), which
    :func:`attach_skip_counts` fills from the pipeline's skip counter.
    """
    skipped = batch.get("skipped")
    if skipped is None:
        return {}
    if isinstance(skipped, Mapping):
        return {str(k): int(v) for k, v in skipped.items()}
    return {"total": int(skipped)}


def attach_skip_counts(batches: Iterator[Any], ctx: Any) -> Iterator[Any]:
    """Last stage the trainer appends to every pipeline: puts the items the pipeline skipped since
    the previous batch (``ctx.skips``, by reason) under ``batch["skipped"]``, so counts made in
    dataloader workers reach the training process and TensorBoard. (Items skipped after an
    epoch's last batch only appear in the dataset's end-of-epoch summary line.)"""
    seen: dict[str, int] = {}
    for batch in batches:
        counts = dict(ctx.skips.counts)
        delta = {reason: n - seen.get(reason, 0) for reason, n in counts.items() if n > seen.get(reason, 0)}
        seen = counts
        if delta and isinstance(batch, Mapping):
            merged = dict(skipped_items(batch))
            for reason, n in delta.items():
                merged[reason] = merged.get(reason, 0) + n
            batch = {**batch, "skipped": merged}
        yield batch


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor of a (nested) batch to ``device``; other values pass through."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and obj and any(isinstance(v, torch.Tensor) for v in obj):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def epoch_batches(
    dataset: IterableDataset,
    epoch: int,
    conf: LoaderConf,
    seed: int,
    rank: int,
    skip: int = 0,
    pin_memory: bool = False,
) -> Iterator[Any]:
    """This rank's batches of one epoch, after discarding the first ``skip`` (resume)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    epoch_seed = derive_seed(seed, epoch, rank)
    if conf.num_workers > 0:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed)
        loader = DataLoader(dataset, batch_size=None, num_workers=conf.num_workers,
                            prefetch_factor=conf.prefetch, pin_memory=pin_memory,
                            generator=generator, persistent_workers=False)
        iterator: Iterator[Any] = iter(loader)
    else:
        rng = IsolatedRNG(epoch_seed)
        with rng:
            inner = iter(DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin_memory))
        iterator = rng.wrap(inner)
    for done in range(skip):
        if next(iterator, None) is None:
            log.warning("epoch %d has only %d batches on rank %d, fewer than the %d to skip", epoch, done, rank, skip)
            return
    if skip:
        log.info("resumed data position: skipped %d batches of epoch %d", skip, epoch)
    yield from iterator
