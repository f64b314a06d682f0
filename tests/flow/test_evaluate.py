"""Held-out evaluation helpers: moment accumulation and the evaluation loop."""

from __future__ import annotations

import pytest
import torch

from speech.flow.evaluate import MomentAccumulator, evaluate_batches
from tests.flow.stand_in import load_flow_config


def test_moments_equal_direct_computation_over_valid_frames():
    acc = MomentAccumulator()
    chunks = []
    for lengths in ([5, 3], [7, 1, 4]):
        lengths = torch.tensor(lengths)
        x = torch.randn(len(lengths), 3, 7) * 2 + 1
        x_padded = x.clone()
        x_padded[..., 5:] += 100 * (torch.arange(7)[5:] >= lengths[:, None, None])  # garbage only in padding
        acc.update(x_padded, lengths)
        chunks += [x[b, :, : int(n)] for b, n in enumerate(lengths)]
    allx = torch.cat(chunks, dim=1)
    mean, std = acc.moments()
    assert torch.allclose(mean, allx.mean(1), atol=1e-5)
    assert torch.allclose(std, allx.std(1, unbiased=False), atol=1e-5)
    with pytest.raises(ValueError):
        MomentAccumulator().moments()


def test_evaluate_batches_reports_loss_and_moments():
    model = load_flow_config("tiny/flow.yaml", {"latent_dim": 4})["flow"]
    batches = []
    for lengths in ([6, 4], [5]):
        n = torch.tensor(lengths)
        batches.append(
            dict(
                utt=[f"u{len(batches)}_{i}" for i in range(len(lengths))],
                speech_token=torch.randint(0, 6561, (len(lengths), 6)),
                speech_token_len=n,
                latent=torch.randn(len(lengths), 4, 12) * (torch.arange(12)[None] < 2 * n[:, None])[:, None],
                latent_len=2 * n,
                ref_audio=torch.randn(len(lengths), 2400),
                ref_audio_len=torch.full((len(lengths),), 2400),
            )
        )
    reals = []
    summary, samples = evaluate_batches(model, batches, n_steps=2, real_latents=reals)
    assert summary["utterances"] == 3 and summary["frames"] == 30
    assert [u for u, _ in samples] == ["u0_0", "u0_1", "u1_0"]
    assert [s.shape for _, s in samples] == [(4, 12), (4, 8), (4, 10)]
    # the real latents of the same utterances, over the same valid frames (the flow's ceiling, decoded)
    truth = [batches[0]["latent"][0], batches[0]["latent"][1, :, :8], batches[1]["latent"][0, :, :10]]
    assert [u for u, _ in reals] == ["u0_0", "u0_1", "u1_0"]
    assert all(torch.equal(r, t) for (_, r), t in zip(reals, truth, strict=True))
    assert summary["cv_loss"] > 0 and summary["real_std_avg"] > 0 and summary["sample_std_avg"] > 0


def test_evaluate_reports_speed_nfe_and_distances_for_both_objectives():
    batches = []
    for lengths in ([6, 4], [5]):
        n = torch.tensor(lengths)
        batches.append(
            dict(
                speech_token=torch.randint(0, 6561, (len(lengths), 6)),
                speech_token_len=n,
                latent=torch.randn(len(lengths), 4, 12) * (torch.arange(12)[None] < 2 * n[:, None])[:, None],
                latent_len=2 * n,
                ref_audio=torch.randn(len(lengths), 2400),
                ref_audio_len=torch.full((len(lengths),), 2400),
            )
        )
    # A stand-in codec: each latent frame becomes 480 samples of a sine whose amplitude is the frame's mean.
    decoded = []

    def decode(latents):
        decoded.append(len(latents))
        wave = torch.sin(torch.arange(480) * 0.3)
        return [(z.mean(0)[:, None] * wave).flatten() for z in latents]

    cfm = load_flow_config("tiny/flow.yaml", {"latent_dim": 4})["flow"]
    s, _ = evaluate_batches(cfm, batches, n_steps=3, cfg_w=0.7, decode=decode)
    assert s["nfe"] == 6 and s["n_steps"] == 3 and decoded == [2, 2, 1, 1]
    assert s["flow_rtf"] > 0 and s["latent_mse"] > 0 and s["latent_mse_norm"] > 0 and s["mel_distance"] > 0
    mf = load_flow_config("tiny/flow_meanflow.yaml", {"latent_dim": 4})["flow"]
    s, samples = evaluate_batches(mf, batches, n_steps=1, with_loss=False)
    assert s["nfe"] == 1 and s["mel_distance"] is None and s["latent_mse"] > 0 and len(samples) == 3
    assert s["cv_loss"] != s["cv_loss"]  # NaN: not computed
