"""The tiny flow learns: on latents that are a fixed function of the tokens, training lowers the loss
and samples move from noise to the targets."""

from __future__ import annotations

import pytest
import torch

from tests.flow.stand_in import load_flow_config


@pytest.mark.slow
def test_tiny_flow_learns_token_to_latent_map():
    torch.manual_seed(0)
    model = load_flow_config("tiny/flow.yaml", {"latent_dim": 8, "speech_vocab": 16, "cfg_dropout": 0.1})["flow"]
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
        out, _ = model.sample(
            tokens[:4], lengths[:4], ref_audio=ref[:4], ref_audio_len=batch["ref_audio_len"][:4], n_steps=8, cfg_w=0.0
        )
        model.train()
        m = latent[:4] != 0
        return ((out - latent[:4]) ** 2)[m].mean().item()

    before = sample_error()
    model.train()
    losses = []
    for _ in range(80):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    after = sample_error()
    assert last < 0.7 * first, (first, last)
    assert after < 0.6 * before, (before, after)
