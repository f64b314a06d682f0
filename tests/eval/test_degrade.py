"""Degradations: exact SNR, a real band limit, names parsed."""

from __future__ import annotations

import pytest
import torch

from speech.eval.degrade import DEGRADATIONS, add_white_noise, band_limit, mu_law, parse_degradation, white_noise_like


def test_white_noise_has_the_requested_snr(test_items, load) -> None:
    wav = load(test_items[0])
    for snr in (20.0, 0.0, -5.0):
        noisy = add_white_noise(wav, snr, torch.Generator().manual_seed(0))
        noise = (noisy - wav).double()
        measured = 10 * torch.log10(wav.double().pow(2).mean() / noise.pow(2).mean())
        assert float(measured) == pytest.approx(snr, abs=1e-3)
    a = add_white_noise(wav, 10.0, torch.Generator().manual_seed(5))
    b = add_white_noise(wav, 10.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_band_limit_removes_the_upper_band(test_items, load) -> None:
    wav = load(test_items[3])
    out = band_limit(wav, 24000, 8000)
    assert out.shape == wav.shape

    def power(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x.double()).abs().pow(2)

    freqs = torch.fft.rfftfreq(wav.shape[-1], 1 / 24000)
    high = freqs > 4300
    before = power(wav)[high].sum() / power(wav).sum()
    after = power(out)[high].sum() / power(out).sum()
    assert before > 1e-3  # the voice has energy up there...
    assert after < before * 1e-2  # ...and the 8 kHz channel keeps under 1% of it
    assert mu_law(wav, 24000).shape == wav.shape


def test_white_noise_like_keeps_power_and_nothing_else(test_items, load) -> None:
    wav = load(test_items[0])
    noise = white_noise_like(wav, torch.Generator().manual_seed(0))
    assert noise.shape == wav.shape
    assert float(noise.pow(2).mean()) == pytest.approx(float(wav.pow(2).mean()), rel=1e-4)
    corr = torch.dot(noise.double(), wav.double()) / (noise.double().norm() * wav.double().norm())
    assert abs(float(corr)) < 0.02


def test_parse_degradation() -> None:
    wav = torch.randn(24000) * 0.1
    g = torch.Generator().manual_seed(0)
    assert torch.equal(parse_degradation("clean")(wav, 24000, g), wav)
    noisy = parse_degradation("noise3.5db")(wav, 24000, g)
    assert 10 * torch.log10(wav.pow(2).mean() / (noisy - wav).pow(2).mean()) == pytest.approx(3.5, abs=1e-3)
    assert parse_degradation("lowpass4k")(wav, 24000, g).shape == wav.shape
    assert set(DEGRADATIONS) >= {"clean", "lowpass8k", "noise20db"}
    with pytest.raises(ValueError, match="unknown degradation"):
        parse_degradation("reverb")
