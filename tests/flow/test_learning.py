"""The tiny flow learns: on latents that are a fixed function of the tokens, training lowers the loss
and samples move from noise to the targets (CFM with an 8-step solve, MeanFlow in one step)."""

from __future__ import annotations

import pytest
import torch

from tests.flow.stand_in import load_flow_config


def _train(config: str, overrides: dict, sample_kw: dict, steps: int = 80) -> tuple[list[float], float, float]:
    """Train ``steps`` AdamW steps on a token -> latent table; returns (flow MSEs, sample error before, after)."""
    torch.manual_seed(0)
    model = load_flow_config(config, {"latent_dim": 8, "speech_vocab": 16, "cfg_dropout": 0.1, **overrides})["flow"]
    r, D, vocab = model.ratio, model.latent_dim, 16
    table = torch.randn(vocab, D, r) * 1.5  # each token's r frames
    lengths = torch.tensor([16, 14, 12, 10, 15, 13, 11, 9])
    tokens = torch.randint(0, vocab, (8, 16)) * (torch.arange(16)[None] < lengths[:, None])
    latent = (
        table[tokens].permute(0, 2, 1, 3).reshape(8, D, 16 * r)
        * (torch.arange(16 * r)[None] < (lengths * r)[:, None])[:, None]
    )
    ref = torch.randn(8, 4800) * 0.1
    batch = dict(
        speech_token=tokens,
        speech_token_len=lengths,
        latent=latent,
        latent_len=lengths * r,
        ref_audio=ref,
        ref_audio_len=torch.full((8,), 4800),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def sample_error():
        model.eval()
        out, _ = model.sample(tokens[:4], lengths[:4], ref_audio=ref[:4], ref_audio_len=batch["ref_audio_len"][:4], **sample_kw)
        model.train()
        m = latent[:4] != 0
        return ((out - latent[:4]) ** 2)[m].mean().item()

    before = sample_error()
    model.train()
    losses = []
    for _ in range(steps):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["flow_mse"].item())
    return losses, before, sample_error()


@pytest.mark.slow
def test_tiny_flow_learns_token_to_latent_map():
    losses, before, after = _train("tiny/flow.yaml", {}, dict(n_steps=8, cfg_w=0.0))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert after < 0.6 * before, (before, after)


@pytest.mark.slow
def test_tiny_flow_with_data_prediction_learns_and_samples_closer_than_velocity():
    # The table is deterministic given the tokens: after the same 80 steps the data-predicting estimator's
    # 8-step samples land nearer the targets than the velocity-predicting one's (which still carry noise).
    kw = dict(n_steps=8, cfg_w=0.0)
    data = {"prediction": "data", "time_sampler": "logit_normal", "time_sampler_args": {"mean": -0.8, "std": 0.8}}
    losses, before, after = _train("tiny/flow.yaml", data, kw)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert after < 0.6 * before, (before, after)
    _, _, after_velocity = _train("tiny/flow.yaml", {}, kw)
    assert after < after_velocity, (after, after_velocity)


@pytest.mark.slow
def test_tiny_meanflow_learns_token_to_latent_map_in_one_step():
    # Guidance off (cfg_w = 0), as the CFM test samples: the table is deterministic, guidance only overshoots it.
    losses, before, after = _train("tiny/flow_meanflow.yaml", {"cfg_w": 0.0}, dict(n_steps=1))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert after < 0.6 * before, (before, after)
