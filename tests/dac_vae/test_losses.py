"""Loss terms of dac_vae.losses against closed forms and slow references."""

from __future__ import annotations

import math

import torch
import torchaudio

from dac_vae.discriminators import BandSTFTDiscriminator, Discriminator, PeriodDiscriminator
from dac_vae.losses import (
    MultiScaleMelLoss,
    discriminator_loss,
    dispersive_loss,
    feature_matching_loss,
    gaussian_kl,
    generator_adversarial_loss,
)


def test_kl_is_zero_for_the_prior():
    mu = torch.zeros(2, 8, 10)
    assert float(gaussian_kl(mu, torch.zeros_like(mu))) == 0.0


def test_kl_matches_the_closed_form_for_known_values():
    # One element: mu = 1, logs = log 2 (std 2): 0.5 (1 + 4 - 1 - 2 log 2) = 2 - log 2.
    mu = torch.tensor([[[1.0]]])
    logs = torch.tensor([[[math.log(2.0)]]])
    assert math.isclose(float(gaussian_kl(mu, logs)), 2.0 - math.log(2.0), rel_tol=1e-6)
    # Many elements against torch.distributions (an independent implementation).
    mu = torch.randn(3, 5, 7)
    logs = 0.5 * torch.randn(3, 5, 7)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, logs.exp()), torch.distributions.Normal(0.0, 1.0)
    ).mean()
    torch.testing.assert_close(gaussian_kl(mu, logs), ref)
    # A log-variance reading (0.5 (mu^2 + exp(logs) - 1 - logs)) would differ: the test can fail.
    wrong = (0.5 * (mu.pow(2) + logs.exp() - 1 - logs)).mean()
    assert not torch.allclose(gaussian_kl(mu, logs), wrong)


def test_kl_mask_averages_valid_frames_only():
    mu, logs = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    lengths = [6, 2]
    mask = torch.arange(6).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    per_elem = [
        0.5 * (mu[b, :, t] ** 2 + torch.exp(2 * logs[b, :, t]) - 1 - 2 * logs[b, :, t])
        for b in range(2)
        for t in range(lengths[b])
    ]
    ref = torch.cat(per_elem).mean()
    torch.testing.assert_close(gaussian_kl(mu, logs, mask), ref)


def test_dispersive_loss_against_a_loop():
    x = torch.randn(4, 3, 5)
    lengths = [5, 3, 5, 1]
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    vecs = [torch.cat([x[b, :, : lengths[b]], torch.zeros(3, 5 - lengths[b])], 1).flatten() for b in range(4)]
    sims = [
        torch.nn.functional.cosine_similarity(vecs[i], vecs[j], dim=0) ** 2
        for i in range(4)
        for j in range(4)
        if i != j
    ]
    torch.testing.assert_close(dispersive_loss(x, mask), torch.stack(sims).mean())
    same = torch.randn(1, 3, 5).expand(3, 3, 5)
    torch.testing.assert_close(dispersive_loss(same), torch.tensor(1.0))  # identical items: cos^2 = 1
    assert float(dispersive_loss(x[:1])) == 0.0


def test_mel_loss_matches_torchaudio_reference_and_ignores_padding():
    sr = 24000
    loss = MultiScaleMelLoss(sr, window_lengths=[256, 1024], n_mels=[40, 80])
    a, b = 0.3 * torch.randn(2, 6000), 0.3 * torch.randn(2, 6000)
    ref = 0.0
    for win, mels in ((256, 40), (1024, 80)):
        mel = torchaudio.transforms.MelSpectrogram(
            sr, n_fft=win, hop_length=win // 4, n_mels=mels, power=1.0, center=True, norm="slaney", mel_scale="slaney"
        )
        ref += (mel(a).clamp_min(1e-5).log10() - mel(b).clamp_min(1e-5).log10()).abs().mean()
    torch.testing.assert_close(loss(a, b), ref, rtol=1e-4, atol=1e-5)
    assert float(loss(a, a)) == 0.0
    # Masked: frames centred past the length do not count, whatever the padding holds.
    lengths = torch.tensor([6000, 3000])
    b2 = b.clone()
    b2[1, 4200:] = 0.9  # beyond every valid frame's window (centre < 3000, half window <= 512)
    torch.testing.assert_close(loss(a, b, lengths), loss(a, b2, lengths))
    assert not torch.allclose(loss(a, b), loss(a, b2))


def test_lsgan_and_feature_matching_closed_forms():
    real = [torch.full((2, 5), 0.5), torch.full((3,), 1.0)]
    fake = [torch.full((2, 5), -0.5), torch.full((3,), 0.25)]
    # (0.5-1)^2 + (-0.5)^2 + (1-1)^2 + 0.25^2
    assert math.isclose(float(discriminator_loss(real, fake)), 0.25 + 0.25 + 0.0 + 0.0625)
    # (-0.5-1)^2 + (0.25-1)^2
    assert math.isclose(float(generator_adversarial_loss(fake)), 2.25 + 0.5625)
    feats_real = [[torch.zeros(2, 3), torch.ones(4)], [torch.full((5,), 2.0)]]
    feats_fake = [[torch.ones(2, 3), torch.ones(4)], [torch.full((5,), -1.0)]]
    assert math.isclose(float(feature_matching_loss(feats_real, feats_fake)), 1.0 + 0.0 + 3.0)


def test_discriminators_return_feature_lists_with_logits_last():
    wav = 0.1 * torch.randn(2, 4000)
    mpd = PeriodDiscriminator(3, channels=(4, 8, 8))
    feats = mpd(wav)
    assert len(feats) == 4 and feats[-1].shape[1] == 1
    assert feats[0].shape[-1] == 3  # folded by the period
    band = BandSTFTDiscriminator(512, channels=4)
    feats = band(wav)
    assert len(feats) == 5 * 5 + 1 and feats[-1].shape[1] == 1
    # the bands tile the spectrum: concatenated widths follow the band edges
    assert sum(hi - lo for lo, hi in band.bands) == 512 // 2 + 1
    disc = Discriminator(periods=(2, 3), period_channels=(4, 8), fft_sizes=(256,), band_channels=4)
    outs = disc(wav)
    assert len(outs) == 3 and all(o[-1].shape[0] == 2 for o in outs)
    # gradients reach the input through every sub-discriminator
    wav.requires_grad_(True)
    sum(o[-1].sum() for o in disc(wav)).backward()
    assert wav.grad is not None and float(wav.grad.abs().sum()) > 0
