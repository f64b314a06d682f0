"""Speaker extractor: unit vectors, invariant to padding and to the rest of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speech.llm.speaker import SpeakerExtractor, pool_references


def make_extractor(**kw) -> SpeakerExtractor:
    torch.manual_seed(0)
    cfg = {
        "sample_rate": 16000,
        "n_fft": 256,
        "hop_length": 64,
        "n_mels": 20,
        "channels": 16,
        "conv_layers": 2,
        "attention_layers": 1,
        "heads": 2,
        "ffn_dim": 32,
        "dim": 24,
    }
    cfg.update(kw)
    return SpeakerExtractor(**cfg).eval()


def clips(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.2 * torch.randn(n, generator=g) for n in lengths]


def padded(wavs, extra=0, noise=True, seed=3):
    """Right-pad clips to a common length (+ extra); noise in the padding must not matter."""
    g = torch.Generator().manual_seed(seed)
    width = max(w.shape[0] for w in wavs) + extra
    out = torch.randn(len(wavs), width, generator=g) if noise else torch.zeros(len(wavs), width)
    for i, w in enumerate(wavs):
        out[i, : w.shape[0]] = w
    return out, torch.tensor([w.shape[0] for w in wavs])


def test_shape_and_unit_norm():
    ext = make_extractor()
    wav, lens = padded(clips([1000, 3000, 4321]))
    v = ext(wav, lens)
    assert v.shape == (3, 24)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))


def test_invariant_to_padding_length_and_batch_composition():
    ext = make_extractor()
    wavs = clips([1500, 4000, 2333, 800])
    alone = torch.stack([ext(w[None], torch.tensor([w.shape[0]]))[0] for w in wavs])
    for extra, order in [(0, [0, 1, 2, 3]), (1234, [3, 1, 0, 2]), (5000, [2, 0])]:
        wav, lens = padded([wavs[i] for i in order], extra=extra, seed=extra)
        torch.testing.assert_close(ext(wav, lens), alone[order], rtol=1e-4, atol=1e-5)


def test_valid_frames_are_untouched_by_padding():
    ext = make_extractor()
    w = clips([2100])[0]
    valid = int(ext.valid_frames(torch.tensor([2100]))[0])
    clean = ext.mel(w)
    noisy, _ = padded([w], extra=999)
    noisy_mel = ext.mel(noisy[0])
    torch.testing.assert_close(noisy_mel[:, :valid], clean[:, :valid])
    # ...and the first frame past them does see the padding (the bound is tight).
    assert not torch.allclose(noisy_mel[:, valid], clean[:, valid])


def test_embed_references_is_renormalised_mean_and_order_free():
    ext = make_extractor()
    wavs = clips([1200, 3100, 2000], seed=5)
    single = torch.stack([ext(w[None])[0] for w in wavs])
    expected = F.normalize(single.mean(0), dim=0)
    torch.testing.assert_close(ext.embed_references(wavs), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ext.embed_references(wavs[::-1]), expected, rtol=1e-4, atol=1e-5)


def test_pool_references_groups():
    v = F.normalize(torch.randn(5, 4), dim=-1)
    out = pool_references(v, torch.tensor([1, 0, 1, 1, 0]), 2)
    torch.testing.assert_close(out[0], F.normalize(v[[1, 4]].mean(0), dim=0))
    torch.testing.assert_close(out[1], F.normalize(v[[0, 2, 3]].mean(0), dim=0))


def test_trainable_and_different_speakers_differ():
    ext = make_extractor().train()
    wav, lens = padded(clips([3000, 2500], seed=9))
    v = ext(wav, lens)
    assert (v[0] @ v[1]).abs() < 0.999
    v.sum().backward()
    assert all(p.grad is not None for p in ext.parameters())
