"""Random-number-generator state: capture/restore for exact resume, and isolated streams.

Checkpoints store every rank's Python, NumPy and torch (CPU and CUDA) generator states as plain
containers and tensors, so they load with ``torch.load(weights_only=True)``.

``IsolatedRNG`` gives a piece of code (the data pipeline when it runs in the main process, the
CV loop) its own seeded generators: it cannot perturb the training stream (dropout, noise) and
its own draws are a pure function of its seed, which is what makes "skip the first N batches of
the epoch" reproduce the data position after a resume.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "derive_seed", "seed_rank_rng", "IsolatedRNG"]

_RANK_STREAM = 104729  # keeps the per-rank training stream apart from other derive_seed users


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers (e.g. base seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_rank_rng(seed: int, rank: int) -> int:
    """Seed this process's global generators (Python, NumPy, torch CPU and every CUDA device) for
    training from ``(seed, rank)``; returns the seed used.

    Called after the model is built from ``seed`` alone (identical initial weights on every rank)
    and before training: every draw a model makes from the global generators while training
    (flow time and noise, CFG dropout, prompt choice, dropout masks, the LM's bi-stream choice,
    the codec's posterior noise) then differs between data-parallel ranks, instead of each rank
    repeating rank 0's noise on its own batch. The states are part of each rank's checkpoint, so
    resume stays exact.
    """
    s = derive_seed(seed, _RANK_STREAM, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def _numpy_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    return {
        "bit_generator": state["bit_generator"],
        "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
        "pos": int(state["state"]["pos"]),
        "has_gauss": int(state["has_gauss"]),
        "gauss": float(state["gauss"]),
    }


def _set_numpy_state(s: dict[str, Any]) -> None:
    np.random.set_state({
        "bit_generator": s["bit_generator"],
        "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
        "has_gauss": s["has_gauss"],
        "gauss": s["gauss"],
    })


def capture_rng(cuda: bool = True) -> dict[str, Any]:
    """This process's generator states (Python, NumPy, torch CPU and, if used, CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class IsolatedRNG:
    """A private set of Python/NumPy/torch-CPU generators, swapped in around selected code.

    ``with rng:`` runs the block with this object's generators and then puts the caller's back,
    so the block neither sees nor changes the surrounding random stream.
    """

    def __init__(self, seed: int):
        outer = capture_rng(cuda=False)
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reseed CUDA too
        self._state = capture_rng(cuda=False)
        restore_rng(outer)

    def __enter__(self) -> "IsolatedRNG":
        self._outer = capture_rng(cuda=False)
        restore_rng(self._state)
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = capture_rng(cuda=False)
        restore_rng(self._outer)

    def wrap(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """Yield from ``iterator`` with every ``next()`` evaluated under these generators."""
        while True:
            with self:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


@contextmanager
def fork_all_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with every generator (incl. the device's) seeded to ``seed``, then restore."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with IsolatedRNG(seed), torch.random.fork_rng(devices=devices, enabled=bool(devices)):
        if devices:
            torch.cuda.manual_seed(seed)
        yield
