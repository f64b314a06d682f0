"""Tiny SLED models and batches for the SLED tests (one intra-op thread: tiny matmuls, shared CPUs)."""

from __future__ import annotations

import pytest
import torch

from speech.llm import SpeakerExtractor, build_qwen2
from speech.sled import SledLM
from tests.llm.conftest import TEXT_VOCAB, tiny_backbone_config

LATENT_DIM = 6


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_speaker(sample_rate: int = 16000) -> SpeakerExtractor:
    return SpeakerExtractor(sample_rate=sample_rate, n_fft=256, hop_length=64, n_mels=20, channels=16, conv_layers=1,
                            attention_layers=1, heads=2, ffn_dim=32, dim=12)


def make_sled(seed: int = 0, latent_dim: int = LATENT_DIM, **kwargs) -> SledLM:
    torch.manual_seed(seed)
    kwargs = {"head_width": 32, "head_depth": 2, "noise_dim": 8, **kwargs}
    return SledLM(build_qwen2(config=tiny_backbone_config()), tiny_speaker(), latent_dim=latent_dim, **kwargs).eval()


def make_batch(text_len, latent_len, ref_len, seed: int = 1, dim: int = LATENT_DIM, garbage: bool = True) -> dict:
    """A padded batch; padding holds random ids and noise, which must never matter."""
    g = torch.Generator().manual_seed(seed)
    b = len(text_len)
    text_len, latent_len, ref_len = (torch.tensor(x) for x in (text_len, latent_len, ref_len))
    text = torch.randint(0, TEXT_VOCAB, (b, int(text_len.max())), generator=g)
    latent = torch.randn(b, dim, int(latent_len.max()), generator=g)
    ref = 0.1 * torch.randn(b, int(ref_len.max()), generator=g)
    if not garbage:
        for i in range(b):
            text[i, text_len[i]:] = 0
            latent[i, :, latent_len[i]:] = 0
            ref[i, ref_len[i]:] = 0
    return {"text_token": text, "text_token_len": text_len, "latent": latent, "latent_len": latent_len,
            "ref_audio": ref, "ref_audio_len": ref_len}


def build_sled_system(root, corpus_dir, repo_root) -> dict:
    """Trainer-style checkpoints for the synthesizer, CLI and server tests: a tiny SLED LM (configs/tiny/sled.yaml,
    2 layers, k = 2; ``sled_bi`` also trained on the bi-stream layout) and the demo's frame-rate codec."""
    from speech.text.bpe import train_bpe
    from tests.inference.conftest import save_like_trainer

    texts = [p.read_text(encoding="utf-8").strip() for p in sorted(corpus_dir.glob("wavs/*/*.txt"))]
    bpe = root / "tokenizer.json"
    train_bpe(texts, vocab_size=512).save(str(bpe))
    over = {"text_tokenizer_path": str(bpe), "qwen": {"num_hidden_layers": 2}}
    cfg = repo_root / "configs/tiny/sled.yaml"
    return {
        "root": root,
        "sled": save_like_trainer(root / "sled", cfg, "sled", over),
        "sled_bi": save_like_trainer(root / "sled_bi", cfg, "sled", {**over, "sled": {"bistream_prob": 0.5}}),
        "codec": save_like_trainer(root / "codec", repo_root / "configs/tiny/dac_vae_frame.yaml", "dac_vae", {}),
        "prompt": corpus_dir / "wavs/slt/slt_000.wav",
        "prompt2": corpus_dir / "wavs/rms/rms_001.wav",
    }
