"""Immiscible noise assignment: exact minimum-cost matching, k-nearest variant, padding ignored."""

from __future__ import annotations

import itertools

import pytest
import torch

from speech.flow.assignment import KNearestNoise, LinearSumAssignment, masked_sq_distances, min_cost_permutation
from speech.utils.mask import lengths_to_mask


def _data(B=5, D=3, T=8):
    lengths = torch.tensor([8, 3, 5, 1, 6][:B])
    mask = lengths_to_mask(lengths, T)
    return torch.randn(B, D, T) * mask[:, None, :], torch.randn(B, D, T), mask, lengths


def test_distances_equal_loop_over_valid_frames():
    x1, noise, mask, lengths = _data()
    d = masked_sq_distances(x1, noise, mask)
    for b in range(5):
        n = int(lengths[b])
        for k in range(5):
            ref = ((x1[b, :, :n] - noise[k, :, :n]) ** 2).sum()
            assert d[b, k].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-4)


def test_min_cost_permutation_is_optimal_and_beats_identity():
    for seed in range(5):
        torch.manual_seed(seed)
        x1, noise, mask, _ = _data()
        perm = min_cost_permutation(x1, noise, mask)
        assert sorted(perm.tolist()) == list(range(5))
        d = masked_sq_distances(x1, noise, mask)
        total = d[torch.arange(5), perm].sum().item()
        identity = d.diagonal().sum().item()
        brute = min(sum(d[i, p[i]].item() for i in range(5)) for p in itertools.permutations(range(5)))
        assert total <= identity + 1e-5
        assert total == pytest.approx(brute, rel=1e-6)


def test_assignment_ignores_padded_frames():
    x1, noise, mask, _ = _data()
    garbage = x1 + 50.0 * (~mask)[:, None, :]
    assert torch.equal(min_cost_permutation(x1, noise, mask), min_cost_permutation(garbage, noise, mask))
    assert torch.allclose(masked_sq_distances(x1, noise, mask), masked_sq_distances(garbage, noise, mask))
    # Valid frame 0 pairs items with noises in order; padded frame 7 would pair them in reverse.
    far, noise_far = torch.zeros_like(x1), torch.zeros_like(noise)
    far[:, :, 0] = noise_far[:, :, 0] = torch.arange(5.0)[:, None]
    far[:, :, -1] = torch.arange(5.0)[:, None] * 10
    noise_far[:, :, -1] = torch.arange(4.0, -1.0, -1.0)[:, None] * 10
    assert min_cost_permutation(far, noise_far, torch.ones_like(mask)).tolist() == [4, 3, 2, 1, 0]
    valid = lengths_to_mask(torch.full((5,), 7), 8)
    assert min_cost_permutation(far, noise_far, valid).tolist() == [0, 1, 2, 3, 4]


def test_linear_sum_assignment_reorders_the_same_draws():
    x1, _, mask, _ = _data()
    x0 = LinearSumAssignment()(x1, mask, torch.Generator().manual_seed(7))
    draws = torch.randn(x1.shape, generator=torch.Generator().manual_seed(7))
    perm = min_cost_permutation(x1, draws, mask)
    assert torch.equal(x0, draws[perm])
    d = masked_sq_distances(x1, draws, mask)
    assert d[torch.arange(5), perm].sum() <= d.diagonal().sum() + 1e-5


def test_k_nearest_picks_the_closest_of_k_draws_over_valid_frames():
    x1, _, mask, lengths = _data()
    k = 6
    x0 = KNearestNoise(k)(x1, mask, torch.Generator().manual_seed(3))
    draws = torch.randn((5, k) + tuple(x1.shape[1:]), generator=torch.Generator().manual_seed(3))
    for b in range(5):
        n = int(lengths[b])
        dists = ((draws[b, :, :, :n] - x1[b, None, :, :n]) ** 2).sum(dim=(1, 2))
        assert torch.equal(x0[b], draws[b, int(dists.argmin())])
    garbage = x1 + 50.0 * (~mask)[:, None, :]
    assert torch.equal(KNearestNoise(k)(garbage, mask, torch.Generator().manual_seed(3)), x0)


def test_immiscible_pairs_are_closer_than_random_pairs():
    torch.manual_seed(0)
    x1 = torch.randn(32, 4, 10) + 0.5
    mask = torch.ones(32, 10, dtype=torch.bool)
    plain = torch.randn(32, 4, 10)
    lsa = LinearSumAssignment()(x1, mask)
    knn = KNearestNoise(8)(x1, mask)
    dist = lambda a: ((x1 - a) ** 2).sum(dim=(1, 2)).mean().item()  # noqa: E731
    assert dist(lsa) < dist(plain)
    assert dist(knn) < dist(plain)
