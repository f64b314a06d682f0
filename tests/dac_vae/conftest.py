"""Fixtures for the codec tests: tiny codecs from the shipped configs and speech-like audio."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dac_vae.checkpoint import build_codec

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIGS = {"2x": REPO / "configs/tiny/dac_vae.yaml", "3x": REPO / "configs/tiny/dac_vae_3x.yaml"}


def speech_like(n: int, sample_rate: int = 24000, seed: int = 0) -> torch.Tensor:
    """``[n]`` deterministic voiced-speech-like audio: harmonics of a gliding f0 under a syllabic
    envelope, plus a little noise; peak about 0.5."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    f0 = 120 + 40 * torch.sin(2 * math.pi * 1.5 * t + float(torch.rand(1, generator=g)) * 6)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    wav = sum(torch.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - torch.cos(2 * math.pi * 4 * t)) ** 2
    wav = wav * envelope + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    return (0.5 * wav / wav.abs().max()).float()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny codecs run thin convolutions, which a second intra-op thread slows down more than it
    helps on a shared 2-core machine (measured: 52 s vs 124 s for this folder); restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=["2x", "3x"])
def tiny_codec(request):
    """The tiny codec of each stride set (hop 480 / 80 dims and hop 320 / 64 dims)."""
    torch.manual_seed(0)
    return build_codec(TINY_CONFIGS[request.param])


@pytest.fixture
def tiny_codec_2x():
    torch.manual_seed(0)
    return build_codec(TINY_CONFIGS["2x"])
