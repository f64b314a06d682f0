"""A learning test: the tiny flowae overfits one utterance and its rendering gets clearly closer."""

from __future__ import annotations

import torch

from dac_vae.audio import load_wav

from .conftest import REPO, build


def test_overfitting_one_utterance_lowers_the_mel_distance():
    wav_path = sorted((REPO / "data" / "wavs").glob("*/*.wav"))[0]
    audio = load_wav(wav_path, 24000)[12000 : 12000 + 480 * 24][None]  # 0.48 s of speech
    model = build()
    torch.manual_seed(0)

    def distance() -> float:
        model.eval()
        with torch.no_grad():
            mu, _, latent_len = model.encode(audio)
            rendered = model.decode(mu, latent_len, length=audio.shape[-1])
        model.train()
        return float(model.mel_distance(audio, rendered))

    before = distance()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(40):
        loss = model({"audio": audio})["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    after = distance()
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert after < 0.5 * before, (before, after)
