"""What a processor may need besides its items: the epoch, a seed, its reader slot, a skip counter.

The :class:`~speech.dataset.dataset.Dataset` builds one :class:`PipelineContext` per epoch and per
reader (rank × dataloader worker) and hands it to every processor that declares a ``ctx``
parameter. Seeded processors draw from ``ctx.rng(name)``: the same (seed, epoch, reader) gives the
same stream, so a run is reproducible and every epoch reshuffles. Bad items go to
``ctx.skips.skip(reason, path)``: counted per reason, logged once per reason with an example,
summarised when the epoch ends; ``ctx.events`` counts notable non-skips (e.g. a speaker reference
cut from the item itself for want of another utterance).
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["SkipCounter", "PipelineContext"]

log = logging.getLogger(__name__)


class SkipCounter:
    """Counts skipped items by reason; the first item of each reason is logged with its path."""

    def __init__(self, where: str = ""):
        self.where = where
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def skip(self, reason: str, example: str | None = None, detail: str | None = None) -> None:
        """Record one skipped item. ``reason`` is a short category; ``detail`` is logged only once."""
        if reason not in self.counts:
            self.examples[reason] = str(example)
            lines = str(detail).strip().splitlines() if detail else []
            extra = f" ({lines[0][:200]})" if lines else ""  # one short log line, whatever the exception says
            prefix = f"{self.where}: " if self.where else ""
            log.warning(
                "%sskipping %s: %s%s [later skips for this reason are only counted]", prefix, example, reason, extra
            )
        self.counts[reason] += 1

    @property
    def total(self) -> int:
        """Items skipped so far, all reasons together."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: the total and the count of each reason, most frequent first."""
        if not self.counts:
            return "no items skipped"
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.counts.most_common())
        return f"{self.total} items skipped ({parts})"

    def merge(self, other: "SkipCounter") -> None:
        """Add another counter's counts (e.g. from several worker processes)."""
        for reason, n in other.counts.items():
            self.examples.setdefault(reason, other.examples.get(reason, ""))
            self.counts[reason] += n


@dataclass
class PipelineContext:
    """Per-epoch, per-reader state shared by the processors of one pipeline."""

    epoch: int = 0
    seed: int = 0
    slot: int = 0
    slots: int = 1
    skips: SkipCounter = field(default_factory=SkipCounter)
    events: Counter[str] = field(default_factory=Counter)  # notable non-skips, e.g. reference fallbacks

    def rng(self, name: str) -> random.Random:
        """A generator private to one processor, fixed by (seed, epoch, reader slot, name)."""
        # A str seed is hashed with SHA-512 by `random`, so it does not depend on PYTHONHASHSEED.
        return random.Random(f"{name}:{self.seed}:{self.epoch}:{self.slot}/{self.slots}")
