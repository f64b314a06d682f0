"""YIN pitch, the pitch latent channel and the harmonic excitation against direct references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dac_vae.pitch import (
    fill_unvoiced,
    harmonic_excitation,
    latent_to_pitch,
    per_sample_f0,
    pitch_to_latent,
    yin,
)

SR, HOP = 24000, 480


def _tone(f0_hz: torch.Tensor, n_harmonics: int = 15) -> torch.Tensor:
    """A harmonic tone following per-sample ``f0_hz`` ``[S]`` (1/k amplitudes)."""
    phase = 2 * math.pi * torch.cumsum(f0_hz.double(), 0) / SR
    return (0.3 * sum(torch.sin(k * phase) / k for k in range(1, n_harmonics + 1))).float()


@pytest.mark.parametrize("f0", [70.0, 150.0, 310.0, 480.0])
def test_yin_finds_the_pitch_of_harmonic_tones(f0):
    wav = _tone(torch.full((HOP * 20,), f0)).unsqueeze(0)
    est, aperiodicity = yin(wav, SR, HOP)
    inner = slice(3, -3)  # away from the zero padding at both ends
    assert est.shape == (1, 20)
    assert (est[0, inner] / f0 - 1).abs().max() < 0.005
    assert aperiodicity[0, inner].max() < 0.05


def test_yin_follows_a_glide_and_rejects_noise_and_silence():
    t = torch.arange(HOP * 50) / SR
    glide = 120 + 60 * torch.sin(2 * math.pi * 0.8 * t)
    noise = 0.3 * torch.randn(HOP * 50, generator=torch.Generator().manual_seed(0))
    batch = torch.stack([_tone(glide), noise, torch.zeros(HOP * 50)])
    est, aperiodicity = yin(batch, SR, HOP)
    centres = glide.reshape(50, HOP)[:, HOP // 2]
    assert (est[0, 3:-3] / centres[3:-3] - 1).abs().max() < 0.03  # a fast glide (up to 30 Hz per frame)
    assert aperiodicity[1].min() > 0.3  # white noise has no period
    assert (aperiodicity[2] == 1).all()  # silence is reported as aperiodic, not as a pitch
    alone, _ = yin(batch[:1], SR, HOP)
    torch.testing.assert_close(alone, est[:1])


def test_fill_unvoiced_matches_a_loop_reference():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        t = int(torch.randint(1, 30, (1,), generator=gen))
        f0 = 60 + 400 * torch.rand(2, t, generator=gen)
        voiced = torch.rand(2, t, generator=gen) < 0.4
        out = fill_unvoiced(f0, voiced, default=111.0)
        for b in range(2):
            idx = [i for i in range(t) if voiced[b, i]]
            for i in range(t):
                if not idx:
                    want = 111.0
                elif voiced[b, i]:
                    want = float(f0[b, i])
                else:
                    left = [j for j in idx if j < i]
                    right = [j for j in idx if j > i]
                    if not left:
                        want = float(f0[b, right[0]])
                    elif not right:
                        want = float(f0[b, left[-1]])
                    else:
                        p, q = left[-1], right[0]
                        lp, lq = math.log(f0[b, p]), math.log(f0[b, q])
                        want = math.exp(lp + (i - p) / (q - p) * (lq - lp))
                assert math.isclose(float(out[b, i]), want, rel_tol=1e-5), (b, i)


def test_per_sample_f0_is_linear_between_centres_and_the_same_in_any_window():
    f0 = 80 + 300 * torch.rand(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = per_sample_f0(f0, HOP)
    reference = F.interpolate(f0.unsqueeze(1), scale_factor=HOP, mode="linear", align_corners=False).squeeze(1)
    torch.testing.assert_close(whole, reference, atol=1e-9, rtol=0)
    # a window of frames [2, 7) gives the same samples from frame 2's centre to frame 6's centre, exactly
    part = per_sample_f0(f0[:, 2:7], HOP)
    assert torch.equal(part[:, HOP // 2 : 4 * HOP + HOP // 2], whole[:, 2 * HOP + HOP // 2 : 6 * HOP + HOP // 2])


def test_pitch_latent_round_trip_and_clamp():
    f0 = torch.tensor([60.0, 100.0, 150.0, 333.0, 500.0])
    torch.testing.assert_close(latent_to_pitch(pitch_to_latent(f0), 60.0, 500.0), f0)
    assert pitch_to_latent(torch.tensor(150.0)).abs() < 1e-6
    assert torch.allclose(latent_to_pitch(torch.tensor([-9.0, 9.0]), 60.0, 500.0), torch.tensor([60.0, 500.0]))


def test_excitation_equals_a_direct_sum_of_harmonics():
    """The closed form equals sum_k sin(k phi) over every harmonic under Nyquist, with phase0."""
    f0 = torch.tensor([[90.0, 140.0, 260.0, 1000.0, 7000.0]])
    phase0 = torch.tensor([1.3])
    out = harmonic_excitation(f0, HOP, SR, phase0)
    f = per_sample_f0(f0.double(), HOP)[0]
    phi = 2 * math.pi * torch.cumsum(f / SR, 0) + 1.3
    ref = torch.zeros_like(phi)
    for k in range(1, SR // 2 // 60 + 1):
        ref += torch.sin(k * phi) * (k * f < SR / 2)
    ref = ref * 2 * torch.sqrt(f / SR)
    torch.testing.assert_close(out[0].double(), ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("f0", [75.0, 200.0, 440.0])
def test_excitation_has_unit_power_and_a_harmonic_comb(f0):
    e = harmonic_excitation(torch.full((1, 50), f0), HOP, SR)[0].double()
    assert abs(e.pow(2).mean().item() - 1) < 0.05
    spectrum = torch.fft.rfft(e * torch.hann_window(e.numel(), dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(e.numel(), 1 / SR)
    on_comb = ((freqs / f0 - (freqs / f0).round()).abs() * f0 < 10) & (freqs > f0 / 2)
    energy = spectrum.pow(2)
    assert energy[on_comb].sum() > 0.999 * energy.sum()  # all energy on k * f0: no aliases
