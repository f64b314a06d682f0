"""A tiny SLED trained on corpus latents beats an untrained one on dev energy distance and on how well
the statistics of its sampled latents match the dev latents'.

The latents are those of the corpus' shortest utterances under a fixed (randomly initialised) tiny
codec: its encoder is a fixed feature map of the audio, so the latents carry the corpus' structure
(speech vs silence, speakers) while the test stays well below a minute on one thread. The mel distance
after decoding is not asserted here: an untrained decoder's output hardly depends on its input
(measured: 0.018 vs 0.019 log10-mel for untrained vs trained SLED), so it needs a trained codec —
the demo recipe's SLED option measures it.
"""

from __future__ import annotations

import pytest
import torch

from speech.audio import load_audio
from speech.config import load_config
from speech.llm import SpeakerExtractor, build_qwen2
from speech.llm.sampling import RowRandom
from speech.sled import SledLM
from tests.llm.conftest import tiny_backbone_config

VOCAB = 128


def _corpus(corpus_dir, split: str, n: int, codec):
    names = (corpus_dir / "splits" / f"{split}.txt").read_text().split()
    wavs = sorted(corpus_dir.glob("wavs/*/*.wav"))
    by_name = {w.stem: w for w in wavs}
    items = []
    for name in names:
        wav, sr = load_audio(by_name[name], 24000)
        items.append((wav.shape[-1], name, wav, by_name[name].with_suffix(".txt").read_text().strip().lower()))
    items = sorted(items)[:n]
    text = [torch.tensor([ord(c) % VOCAB for c in t]) for *_, t in items]
    audio = [w for _, _, w, _ in items]
    pad = torch.nn.utils.rnn.pad_sequence
    audio_len = torch.tensor([a.shape[-1] for a in audio])
    with torch.no_grad():
        mu, _, latent_len = codec.encode(pad(audio, batch_first=True), audio_len)
    return {"text_token": pad(text, batch_first=True), "text_token_len": torch.tensor([len(t) for t in text]),
            "latent": mu, "latent_len": latent_len,
            "ref_audio": pad(audio, batch_first=True), "ref_audio_len": audio_len}


@pytest.mark.slow
def test_tiny_sled_learns_corpus_latents(corpus_dir, repo_root, tmp_path):
    torch.manual_seed(0)
    codec = load_config(repo_root / "configs/tiny/dac_vae.yaml")["dac_vae"].eval()
    train = _corpus(corpus_dir, "train", 12, codec)
    dev = _corpus(corpus_dir, "dev", 4, codec)
    mask = torch.arange(train["latent"].shape[-1]) < train["latent_len"][:, None]
    frames = train["latent"].transpose(1, 2)[mask]
    stats = tmp_path / "stats.pt"
    torch.save({"mean": frames.mean(0), "std": frames.std(0)}, stats)

    torch.manual_seed(0)
    speaker = SpeakerExtractor(sample_rate=24000, n_fft=512, hop_length=240, n_mels=20, channels=16, conv_layers=1,
                               attention_layers=1, heads=2, ffn_dim=32, dim=12)
    backbone = build_qwen2(config=tiny_backbone_config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                                       initializer_range=0.02))
    model = SledLM(backbone, speaker, latent_dim=80, latent_rate=50.0, patch_size=2, latent_stats=str(stats),
                   head_width=64, head_depth=2, noise_dim=16, cfg_dropout=0.1)

    def evaluate():
        model.eval()
        energy = float(model(dev)["energy"])
        real, fake = [], []
        for i in range(dev["latent"].shape[0]):  # the real length, so the statistics compare frame for frame
            n, tl = int(dev["latent_len"][i]), int(dev["text_token_len"][i])
            ratio = (n + 0.5) / tl
            lat, _ = model.generate(dev["text_token"][i : i + 1, :tl], dev["text_token_len"][i : i + 1],
                                    dev["ref_audio"][i : i + 1], dev["ref_audio_len"][i : i + 1],
                                    min_len_ratio=ratio, max_len_ratio=ratio, cfg_w=0.0,
                                    generator=RowRandom(torch.tensor([i])))
            real.append(model.normalise(dev["latent"][i : i + 1, :, :n])[0].T)
            fake.append(model.normalise(lat[:, :, :n])[0].T)
        real, fake = torch.cat(real), torch.cat(fake)
        moments = float((real.mean(0) - fake.mean(0)).abs().mean() + (real.std(0) - fake.std(0)).abs().mean())
        model.train()
        return energy, moments

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(train)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    after = evaluate()
    assert after[0] < 0.8 * before[0], (before, after)
    assert after[1] < 0.8 * before[1], (before, after)
