"""Token samplers for autoregressive decoding, batched and seedable.

A sampler maps next-token log-probabilities ``logp [B, V]`` (forbidden ids already at ``-inf``)
and the recent history of generated ids ``history [B, W]`` (``-1`` where there is none yet) to
ids ``[B]``. Randomness comes only from the generator passed in, so a fixed seed gives the same
tokens: a ``torch.Generator`` (one stream for the whole batch), or a :class:`RowRandom`, whose
draws for a row depend only on that row's seed and the draw count, so an utterance samples the
same tokens in any batch as alone. Chosen from YAML (``!new:speech.llm.sampling.RasSampler``).
"""

from __future__ import annotations

import torch

__all__ = [
    "GreedySampler",
    "RasSampler",
    "RowRandom",
    "Sampler",
    "TopKTopPSampler",
    "draw",
    "full_sample",
    "top_k_top_p_sample",
]

_M31 = (1 << 31) - 1


def _hash31(x: torch.Tensor) -> torch.Tensor:
    """Integer hash of int64 values in ``[0, 2**31)`` to ``[0, 2**31)`` (products stay below 2**63)."""
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    return (x >> 16) ^ x


class RowRandom:
    """Per-row random numbers: draw ``k`` of row ``i`` depends only on ``seeds[i]`` and ``k``.

    A counter-based generator (an integer hash of the seed's key and the draw count, computed on
    the seeds' device: no host sync, no per-row kernel), so a batch gives each item the numbers it
    would get alone, whatever its neighbours. Every call of :meth:`uniform` advances the count.
    """

    def __init__(self, seeds: torch.Tensor):
        self.key = _hash31((seeds.long() & _M31) ^ 0x2545F491)
        self.count = 0

    def uniform(self, n: int | None = None) -> torch.Tensor:
        """One float64 in ``(0, 1)`` per row ``[B]``, or ``n`` of them ``[B, n]`` (draws ``count .. count + n - 1``)."""
        if n is None:
            step = (self.count * 0x9E3779B + 0x6A09E66) & _M31  # Weyl sequence over draw counts
            h = _hash31(_hash31((self.key + step) & _M31) ^ 0x5851F42D)
            self.count += 1
        else:
            counts = torch.arange(self.count, self.count + n, device=self.key.device, dtype=torch.long)
            step = (counts * 0x9E3779B + 0x6A09E66) & _M31
            h = _hash31(_hash31((self.key.unsqueeze(1) + step.unsqueeze(0)) & _M31) ^ 0x5851F42D)
            self.count += n
        return (h.double() + 0.5) / float(1 << 31)

    def normal(self, n: int) -> torch.Tensor:
        """``n`` standard normal float64 per row ``[B, n]`` (Box-Muller of ``2 n`` uniform draws)."""
        u1, u2 = self.uniform(n), self.uniform(n)
        return (-2.0 * u1.log()).sqrt() * torch.cos(2.0 * torch.pi * u2)


def draw(probs: torch.Tensor, generator: torch.Generator | RowRandom | None = None) -> torch.Tensor:
    """One index per row of ``probs [B, K]`` (non-negative, any positive sum), in proportion to it."""
    if not isinstance(generator, RowRandom):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = probs.double().cumsum(-1)
    target = generator.uniform().to(cdf.device) * cdf[:, -1]
    # The first index whose cumulative mass reaches the target: never one of zero probability.
    return (cdf < target.unsqueeze(-1)).sum(-1).clamp_max(probs.shape[-1] - 1)


def full_sample(logp: torch.Tensor, generator: torch.Generator | RowRandom | None = None) -> torch.Tensor:
    """One id per row drawn from the whole distribution ``exp(logp)``."""
    return draw(logp.float().exp(), generator)


def top_k_top_p_sample(
    logp: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | RowRandom | None = None
) -> torch.Tensor:
    """Nucleus sampling restricted to the ``top_k`` most likely ids.

    Ids are taken in order of probability while the mass of the ids already taken is below
    ``top_p`` (so the most likely id is always kept), at most ``top_k`` of them; one is drawn in
    proportion to its probability.
    """
    probs, ids = logp.float().exp().topk(min(top_k, logp.shape[-1]), dim=-1)  # sorted, descending
    mass_before = probs.cumsum(-1) - probs
    probs = probs * (mass_before < top_p)
    choice = draw(probs, generator)
    return ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


class Sampler:
    """Base class: ``sampler(logp, history, generator) -> ids``; ``window`` history ids are needed."""

    window: int = 0

    def __call__(
        self, logp: torch.Tensor, history: torch.Tensor, generator: torch.Generator | RowRandom | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


class GreedySampler(Sampler):
    """Most likely id (deterministic; ties go to the lowest id)."""

    def __call__(self, logp, history, generator=None):
        return logp.argmax(dim=-1)


class TopKTopPSampler(Sampler):
    """Plain top-k / top-p sampling."""

    def __init__(self, top_k: int = 25, top_p: float = 0.8):
        self.top_k, self.top_p = top_k, top_p

    def __call__(self, logp, history, generator=None):
        return top_k_top_p_sample(logp, self.top_k, self.top_p, generator)


class RasSampler(Sampler):
    """Repetition-aware sampling (VALL-E 2, as used by CosyVoice 2).

    Draw from the top-k/top-p nucleus; if that id already occurs at least ``win_size * tau_r``
    times among the last ``win_size`` generated ids, draw again from the full distribution
    instead, which breaks the loops nucleus sampling falls into. Both draws are made for every row
    (the choice is a ``where``), so there is no host sync and the random stream is deterministic.
    """

    def __init__(self, top_k: int = 25, top_p: float = 0.8, win_size: int = 10, tau_r: float = 0.1):
        self.top_k, self.top_p, self.win_size, self.tau_r = top_k, top_p, win_size, tau_r
        self.window = win_size

    def __call__(self, logp, history, generator=None):
        ids = top_k_top_p_sample(logp, self.top_k, self.top_p, generator)
        fallback = full_sample(logp, generator)
        recent = history[:, -self.win_size :] if self.win_size > 0 else history[:, :0]
        repeats = (recent == ids.unsqueeze(-1)).sum(-1)
        return torch.where(repeats >= self.win_size * self.tau_r, fallback, ids)
