"""Learning-rate schedules, stepped once per optimizer step (after every accumulation boundary).

Each is a ``torch.optim.lr_scheduler.LRScheduler``, so its state round-trips through checkpoints.
``step`` below is the number of optimizer steps already taken; the LR of step ``s`` (0-based) is
``base_lr * factor(s)``. Configs name them as partials called with the optimizer:

    scheduler: !name:speech.trainer.scheduler.WarmupLR
      warmup_steps: 2500
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupLR", "NoamLR", "WarmupCosineLR", "ConstantLR"]


class _FactorLR(LRScheduler):
    """Base: LR = base_lr × factor(step), a pure function of the step (so resume is exact)."""

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    _get_closed_form_lr = get_lr


class ConstantLR(_FactorLR):
    """The optimizer's LR, unchanged (what an absent ``scheduler:`` entry means)."""

    def factor(self, step: int) -> float:
        return 1.0


class WarmupLR(_FactorLR):
    """Linear warm-up from ``base/warmup_steps`` to ``base`` over ``warmup_steps``, then constant."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, last_epoch: int = -1):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, (step + 1) / self.warmup_steps)


class NoamLR(_FactorLR):
    """Linear warm-up, then inverse square-root decay (Vaswani et al. 2017, eq. 3), peak = base.

    ``factor(s) = min((s+1)/w, sqrt(w/(s+1)))``: 1.0 exactly at ``s+1 = w``.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 25000, last_epoch: int = -1):
        if warmup_steps <= 0:
            raise ValueError(f"warmup_steps must be > 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        s = step + 1
        return min(s / self.warmup_steps, math.sqrt(self.warmup_steps / s))


class WarmupCosineLR(_FactorLR):
    """Linear warm-up, then half-cosine from ``base`` down to ``base*min_ratio`` at ``total_steps``.

    Past ``total_steps`` the LR stays at the floor.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: int = 100000,
        min_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
