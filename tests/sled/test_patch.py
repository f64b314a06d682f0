"""Patching k consecutive latent frames per AR step round-trips frames exactly."""

from __future__ import annotations

import pytest
import torch

from speech.sled.patch import frame_mask, patchify, step_lengths, unpatchify


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("t", [1, 7, 8, 13])
def test_patching_round_trips_frames_exactly(k, t):
    x = torch.randn(2, 5, t)
    steps = patchify(x, k)
    assert steps.shape == (2, -(-t // k), 5 * k)
    assert torch.equal(unpatchify(steps, k, t), x)
    # step s holds frames s·k .. s·k + k - 1, frame-major
    assert torch.equal(steps[1, 0, :5], x[1, :, 0])
    if t > k:
        assert torch.equal(steps[0, 1, :5], x[0, :, k])
    lens = torch.tensor([t, max(1, t - 3)])
    assert step_lengths(lens, k).tolist() == [-(-int(n) // k) for n in lens]
    m = frame_mask(lens, steps.shape[1], k)
    assert m.flatten(1).sum(1).tolist() == lens.tolist()
