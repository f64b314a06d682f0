"""Token samplers for autoregressive decoding, batched and seedable.

A sampler maps next-token log-probabilities ``logp [B, V]`` (forbidden ids already at ``-inf``)
and the recent history of generated ids ``history [B, W]`` (``-1`` where there is none yet) to
ids ``[B]``. Randomness comes only from the ``torch.Generator`` passed in, so a fixed seed gives
the same tokens. Chosen from YAML (``!new:speech.llm.sampling.RasSampler``).
"""

from __future__ import annotations

import torch

__all__ = ["GreedySampler", "RasSampler", "Sampler", "TopKTopPSampler", "full_sample", "top_k_top_p_sample"]


def full_sample(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row drawn from the whole distribution ``exp(logp)``."""
    return torch.multinomial(logp.float().exp(), 1, generator=generator).squeeze(-1)


def top_k_top_p_sample(
    logp: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Nucleus sampling restricted to the ``top_k`` most likely ids.

    Ids are taken in order of probability while the mass of the ids already taken is below
    ``top_p`` (so the most likely id is always kept), at most ``top_k`` of them; one is drawn in
    proportion to its probability.
    """
    probs, ids = logp.float().exp().topk(min(top_k, logp.shape[-1]), dim=-1)  # sorted, descending
    mass_before = probs.cumsum(-1) - probs
    probs = probs * (mass_before < top_p)
    choice = torch.multinomial(probs, 1, generator=generator)
    return ids.gather(-1, choice).squeeze(-1)


class Sampler:
    """Base class: ``sampler(logp, history, generator) -> ids``; ``window`` history ids are needed."""

    window: int = 0

    def __call__(
        self, logp: torch.Tensor, history: torch.Tensor, generator: torch.Generator | None = None
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
