"""Process-group set-up and the few collectives the loop needs.

Under ``torchrun`` the usual environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)
is present; without it the run is a single process and no process group is created (except for
DeepSpeed, which always wants one: a 1-process group on a free local port is made for it).
Backends: ``nccl`` when CUDA is present, ``gloo`` otherwise. Control messages (the per-step
"does every rank still have data" flag, log-time counters, CV sums) go through a CPU ``gloo``
group so they never force a device synchronisation.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "all_min_flag", "all_sum_cpu", "all_gather_object", "barrier"]

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, its device and the process groups."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    control_group: Any = None  # CPU gloo group for control messages (None = default group)
    owns_group: bool = False  # this process created the default group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str | None = None, force_group: bool = False, timeout_s: int = 1800) -> DistInfo:
    """Read the torchrun environment, pick the device, create the process groups if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)
    if world == 1 and not force_group:
        return info
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    info.backend = backend
    if not dist.is_initialized():
        if world == 1:  # a lone process (DeepSpeed): make the rendezvous environment it expects
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        info.owns_group = True
    info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    info.control_group = None if backend == "gloo" else dist.new_group(backend="gloo")
    log.info("rank %d/%d on %s (%s)", info.rank, info.world_size, device, backend)
    return info


def all_min_flag(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` is True on every rank (one tiny CPU all-reduce)."""
    if not info.distributed or info.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=info.control_group)
    return bool(t.item())  # a CPU tensor: no device synchronisation


def all_sum_cpu(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small CPU float64 tensor over ranks (log counters, CV sums)."""
    values = values.to("cpu", torch.float64)
    if info.distributed and info.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=info.control_group)
    return values


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (small Python objects: key lists, RNG states)."""
    if not info.distributed or info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj, group=info.control_group)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (on the CPU control group)."""
    if info.distributed and info.world_size > 1:
        dist.barrier(group=info.control_group)
