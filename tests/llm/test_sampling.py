"""Samplers: nucleus membership and frequencies, RAS fallback rule, seeded reproducibility."""

from __future__ import annotations

import torch

from speech.llm.sampling import GreedySampler, RasSampler, RowRandom, TopKTopPSampler, draw, top_k_top_p_sample


def logp_of(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float32).log()


def test_greedy_is_argmax():
    logp = torch.randn(6, 30).log_softmax(-1)
    assert torch.equal(GreedySampler()(logp, torch.empty(6, 0, dtype=torch.long)), logp.argmax(-1))


def test_top_p_set_and_frequencies():
    # mass before each id: 0, .5, .75, .9 -> top_p 0.8 keeps ids {0, 1, 2}, renormalised to .5/.9, .25/.9, .15/.9
    probs = [0.5, 0.25, 0.15, 0.1]
    logp = logp_of(probs).expand(20000, 4)
    ids = top_k_top_p_sample(logp, top_k=25, top_p=0.8, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4).float() / ids.numel()
    assert freq[3] == 0
    torch.testing.assert_close(freq[:3], torch.tensor([0.5, 0.25, 0.15]) / 0.9, atol=0.015, rtol=0)


def test_top_k_caps_the_set():
    logp = logp_of([0.3, 0.3, 0.2, 0.2]).expand(5000, 4)
    ids = top_k_top_p_sample(logp, top_k=2, top_p=0.99, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {0, 1}


def test_ras_falls_back_to_full_distribution_on_repetition():
    # The nucleus is {0} alone (p0 = .9 > top_p); when 0 is in the recent window, RAS samples the full distribution.
    logp = logp_of([0.9] + [0.1 / 9] * 9).expand(4000, 10)
    sampler = RasSampler(top_k=25, top_p=0.8, win_size=10, tau_r=0.1)
    g = torch.Generator().manual_seed(0)
    fresh = torch.full((4000, 10), -1, dtype=torch.long)
    assert (sampler(logp, fresh, g) == 0).all()
    repeated = fresh.clone()
    repeated[:, -1] = 0
    ids = sampler(logp, repeated, g)
    frac_other = (ids != 0).float().mean()
    assert 0.07 < frac_other < 0.13  # ~10 % of the full distribution is outside id 0
    # Only the last win_size ids count: a 0 further back does not trigger the fallback.
    old = torch.cat([torch.zeros(4000, 1, dtype=torch.long), fresh], dim=1)
    assert (sampler(logp, old, g) == 0).all()


def test_ras_threshold_counts_repeats():
    logp = logp_of([0.9] + [0.1 / 9] * 9).expand(2000, 10)
    sampler = RasSampler(top_k=25, top_p=0.8, win_size=10, tau_r=0.3)  # needs 3 repeats
    g = torch.Generator().manual_seed(1)
    two = torch.tensor([0, 0] + [5] * 8).expand(2000, 10)
    three = torch.tensor([0, 0, 0] + [5] * 7).expand(2000, 10)
    assert (sampler(logp, two, g) == 0).all()
    assert (sampler(logp, three, g) != 0).any()


def test_seeded_sampling_is_reproducible():
    logp = torch.randn(64, 100).log_softmax(-1)
    hist = torch.randint(0, 100, (64, 10))
    for sampler in (RasSampler(), TopKTopPSampler()):
        a = sampler(logp, hist, torch.Generator().manual_seed(123))
        b = sampler(logp, hist, torch.Generator().manual_seed(123))
        c = sampler(logp, hist, torch.Generator().manual_seed(124))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_row_random_is_uniform_and_per_row():
    seeds = torch.arange(50_000)
    r = RowRandom(seeds)
    u, v = r.uniform(), r.uniform()
    assert ((u > 0) & (u < 1)).all()
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (counts - 5000).abs().max() < 300  # ~4 sigma of a binomial(50000, 0.1)
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.02  # successive draws
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.02  # neighbouring seeds
    # a row's numbers depend only on its seed and the draw count, not on the other rows
    alone = RowRandom(seeds[123:124])
    assert alone.uniform().item() == u[123].item() and alone.uniform().item() == v[123].item()


def test_draw_frequencies_follow_the_probabilities():
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3]).expand(40_000, 4)
    ids = draw(probs * 7.0, RowRandom(torch.arange(40_000)))  # any positive scale
    freq = torch.bincount(ids, minlength=4).double() / 40_000
    assert freq[1] == 0  # a zero-probability id is never drawn
    torch.testing.assert_close(freq, probs[0].double(), atol=0.01, rtol=0)


def test_samplers_accept_row_random():
    logp = torch.randn(6, 100).log_softmax(-1)
    history = torch.full((6, 10), -1)
    for sampler in (RasSampler(), TopKTopPSampler(top_k=5, top_p=0.9)):
        a = sampler(logp, history, RowRandom(torch.arange(6)))
        b = torch.cat([sampler(logp[i : i + 1], history[i : i + 1], RowRandom(torch.tensor([i]))) for i in range(6)])
        assert torch.equal(a, b)
