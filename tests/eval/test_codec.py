"""Codec metrics: formulas against hand computations, and their behaviour on real corpus speech."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio

from speech.eval.codec import CodecMetrics, MelDistance, STFTDistance, pesq_wb, si_sdr, stoi, trim_to_common
from speech.eval.degrade import add_white_noise, band_limit


def test_si_sdr_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal(1000)
    e = 0.7 * s + 0.3 * rng.standard_normal(1000) + 0.05
    # Le Roux et al. 2019, eq. 3-4 on zero-mean signals, written out with plain numpy.
    s0, e0 = s - s.mean(), e - e.mean()
    alpha = np.dot(e0, s0) / np.dot(s0, s0)
    target, noise = alpha * s0, e0 - alpha * s0
    expected = 10 * np.log10(np.sum(target**2) / np.sum(noise**2))
    assert si_sdr(torch.from_numpy(s), torch.from_numpy(e)) == pytest.approx(expected, abs=1e-6)


def test_si_sdr_known_value_and_invariances() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4000, generator=g, dtype=torch.float64)
    s -= s.mean()
    n = torch.randn(4000, generator=g, dtype=torch.float64)
    n -= n.mean()
    n -= (n @ s) / (s @ s) * s  # orthogonal to the target: the projection keeps all of s
    n *= torch.sqrt((s @ s) / (n @ n) / 100.0)  # |s|^2 / |n|^2 = 100, i.e. 20 dB
    assert si_sdr(s, s + n) == pytest.approx(20.0, abs=1e-6)
    assert si_sdr(s, 3.0 * (s + n)) == pytest.approx(20.0, abs=1e-6)  # scale-invariant
    assert si_sdr(s, s + n + 0.5) == pytest.approx(20.0, abs=1e-6)  # offset-invariant (zero-mean)
    assert si_sdr(s, s) > 100.0


def test_mel_distance_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(8000, generator=g) * 0.1, torch.randn(8000, generator=g) * 0.1
    dist = MelDistance(16000, scales=[(512, 40)])
    mel = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=512, hop_length=128, n_mels=40, power=1.0, norm="slaney", mel_scale="slaney"
    )
    expected = (torch.log10(mel(a).clamp_min(1e-5)) - torch.log10(mel(b).clamp_min(1e-5))).abs().mean()
    assert float(dist(a, b)) == pytest.approx(float(expected), rel=1e-5)
    assert float(dist(a, a)) == 0.0


def test_stft_distance_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6000, generator=g), torch.randn(6000, generator=g)
    dist = STFTDistance(resolutions=[(512, 128, 400)])
    window = torch.hann_window(400)

    def spec(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, 512, 128, 400, window, center=True, pad_mode="reflect", return_complex=True).abs()

    ra, rb = spec(a), spec(b)
    expected = (
        torch.linalg.norm(ra - rb) / torch.linalg.norm(ra)
        + (ra.clamp_min(1e-7).log() - rb.clamp_min(1e-7).log()).abs().mean()
    )
    assert float(dist(a, b)) == pytest.approx(float(expected), rel=1e-5)


def test_lengths_are_trimmed_to_the_shorter() -> None:
    a, b = torch.randn(100), torch.randn(90)
    ta, tb = trim_to_common(a, b)
    assert ta.shape == tb.shape == (90,)
    assert torch.equal(ta, a[:90])


def test_silence_gives_nan_pesq_not_a_crash() -> None:
    assert math.isnan(pesq_wb(torch.zeros(24000), torch.zeros(24000), 24000))


@pytest.fixture(scope="module")
def speech_pair(test_items, load):
    """Two real utterances of different speakers at 24 kHz."""
    return [load(test_items[i]) for i in (3, 12)]  # slt_020 (flite), enus_f3_005 (espeak-ng)


def test_identical_speech_scores_the_ceiling(speech_pair) -> None:
    metrics = CodecMetrics(24000)
    for wav in speech_pair:
        out = metrics(wav, wav.clone())
        assert out["pesq_wb"] == pytest.approx(4.64, abs=0.01)
        assert out["stoi"] == pytest.approx(1.0, abs=1e-4)
        assert out["si_sdr"] > 80.0
        assert out["mel_distance"] == 0.0
        assert out["stft_distance"] == 0.0


def test_each_metric_worsens_with_noise(speech_pair) -> None:
    metrics = CodecMetrics(24000)
    g = torch.Generator().manual_seed(0)
    for wav in speech_pair:
        clean = metrics(wav, wav)
        mild = metrics(wav, add_white_noise(wav, 20.0, g))
        strong = metrics(wav, add_white_noise(wav, 5.0, g))
        assert mild["si_sdr"] == pytest.approx(20.0, abs=0.5)  # white noise at 20 dB SNR: SI-SDR ~ 20 dB
        assert strong["si_sdr"] == pytest.approx(5.0, abs=0.5)
        for higher_is_better in ("pesq_wb", "stoi", "si_sdr"):
            assert clean[higher_is_better] > mild[higher_is_better] > strong[higher_is_better], higher_is_better
        for lower_is_better in ("mel_distance", "stft_distance"):
            assert clean[lower_is_better] < mild[lower_is_better] < strong[lower_is_better], lower_is_better


def test_band_limiting_costs_pesq_and_mel_but_keeps_intelligibility(speech_pair) -> None:
    metrics = CodecMetrics(24000)
    for wav in speech_pair:
        out = metrics(wav, band_limit(wav, 24000, 8000))
        assert 2.5 < out["pesq_wb"] < 4.5
        assert out["stoi"] > 0.98  # STOI only looks below 5 kHz
        assert out["mel_distance"] > 0.05


def test_pesq_and_stoi_resample_any_rate(speech_pair) -> None:
    wav = speech_pair[0]
    wav16 = torchaudio.functional.resample(wav, 24000, 16000)
    assert pesq_wb(wav16, wav16, 16000) == pytest.approx(pesq_wb(wav, wav, 24000), abs=0.01)
    assert stoi(wav16, wav16, 16000) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        CodecMetrics(24000)(wav[None], wav[None])
