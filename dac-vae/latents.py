"""Latent files, dataset statistics and length-bucketed batching shared by the CLIs.

Latent file ``<name>_latent{r}x.pt`` (``r`` = latent frames per 25 Hz token: 2 for hop 480,
3 for hop 320), a dict:

- ``mu``, ``logs``: ``[D, T]`` float32 posterior mean and log-std, ``T = ceil(n_samples / hop)``;
- ``sample_rate``, ``hop``, ``n_samples`` (int): decode gives back exactly ``n_samples`` samples;
- ``checkpoint`` (str): ``name@sha256[:12]`` of the weights that wrote it.

Statistics file ``latent{r}x_stats.json``: per-dimension ``mean`` and ``std`` (population, over
every valid frame of ``mu`` in the set), ``n_frames``, ``n_utts``, ``latent_dim``,
``sample_rate``, ``hop``, ``checkpoint``. Stage 2 normalises ``(mu - mean) / std``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

__all__ = [
    "latent_suffix",
    "stats_filename",
    "save_latent_file",
    "load_latent_file",
    "LatentStats",
    "length_batches",
]

LATENT_KEYS = ("mu", "logs", "sample_rate", "hop", "n_samples", "checkpoint")


def latent_suffix(ratio: float) -> str:
    """``_latent2x.pt`` / ``_latent3x.pt`` (``_latent1x.pt`` at 25 Hz, ``_latent0.5x.pt`` at 12.5 Hz):
    the file suffix for ``ratio`` latent frames per token."""
    return f"_latent{ratio:g}x.pt"


def stats_filename(ratio: float) -> str:
    """``latent2x_stats.json``: the statistics file written next to the latents."""
    return f"latent{ratio:g}x_stats.json"


def _atomic_torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_latent_file(
    path: str | os.PathLike,
    mu: torch.Tensor,
    logs: torch.Tensor,
    sample_rate: int,
    hop: int,
    n_samples: int,
    checkpoint: str,
) -> None:
    """Write one utterance's latents atomically (temp file + rename); tensors are copied so a
    slice of a batch never drags the whole batch storage into the file."""
    if mu.dim() != 2 or mu.shape != logs.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logs {tuple(logs.shape)} must both be [D, T]")
    record = {
        "mu": mu.detach().float().cpu().clone(),
        "logs": logs.detach().float().cpu().clone(),
        "sample_rate": int(sample_rate),
        "hop": int(hop),
        "n_samples": int(n_samples),
        "checkpoint": str(checkpoint),
    }
    _atomic_torch_save(record, Path(path))


def load_latent_file(path: str | os.PathLike) -> dict:
    """Read and check a latent file (``weights_only``); raises ValueError when malformed."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or any(k not in record for k in LATENT_KEYS):
        raise ValueError(f"{path}: not a latent file (needs keys {', '.join(LATENT_KEYS)})")
    mu, logs = record["mu"], record["logs"]
    if mu.dim() != 2 or mu.shape != logs.shape:
        raise ValueError(f"{path}: mu {tuple(mu.shape)} / logs {tuple(logs.shape)} are not both [D, T]")
    expected = -(-int(record["n_samples"]) // int(record["hop"]))
    if mu.shape[1] != expected:
        raise ValueError(f"{path}: {mu.shape[1]} frames, expected ceil(n_samples / hop) = {expected}")
    return record


class LatentStats:
    """Running per-dimension sums of ``mu`` frames (float64) for the dataset mean and std."""

    def __init__(self, dim: int):
        self.count = torch.zeros((), dtype=torch.float64)
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sumsq = torch.zeros(dim, dtype=torch.float64)
        self.n_utts = 0

    def add(self, mu: torch.Tensor) -> None:
        """Add one utterance's ``[D, T]`` valid frames."""
        x = mu.detach().to("cpu", torch.float64)
        self.count += x.shape[1]
        self.sum += x.sum(dim=1)
        self.sumsq += x.pow(2).sum(dim=1)
        self.n_utts += 1

    def all_reduce(self) -> None:
        """Sum over the ranks of an initialised process group (gloo or nccl)."""
        import torch.distributed as dist

        packed = torch.cat(
            [self.count.reshape(1), torch.tensor([float(self.n_utts)], dtype=torch.float64), self.sum, self.sumsq]
        )
        if dist.get_backend() == "nccl":
            packed = packed.cuda()
        dist.all_reduce(packed)
        packed = packed.cpu()
        d = self.sum.numel()
        self.count, self.n_utts = packed[0], int(packed[1])
        self.sum, self.sumsq = packed[2 : 2 + d], packed[2 + d :]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Population mean and std per dimension (float64)."""
        n = self.count.clamp_min(1.0)
        mean = self.sum / n
        var = (self.sumsq / n - mean.pow(2)).clamp_min(0.0)
        return mean, var.sqrt()

    def write(self, path: str | os.PathLike, sample_rate: int, hop: int, checkpoint: str) -> dict:
        """Write the JSON statistics file atomically and return its content."""
        mean, std = self.mean_std()
        record = {
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "n_frames": int(self.count),
            "n_utts": int(self.n_utts),
            "latent_dim": int(mean.numel()),
            "sample_rate": int(sample_rate),
            "hop": int(hop),
            "checkpoint": checkpoint,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return record


def length_batches(lengths: Sequence[int], max_total: int, max_items: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    A batch's padded size (``items x longest``) stays within ``max_total`` (one over-long item
    forms its own batch) and holds at most ``max_items`` items.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1 > max_items or (len(current) + 1) * longest > max_total):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
