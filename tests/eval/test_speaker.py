"""Speaker encoders: same-speaker pairs beat different-speaker pairs on the corpus; local-path backends."""

from __future__ import annotations

import itertools

import pytest
import torch

from speech.eval.speaker import (
    SPEAKER_BACKENDS,
    TorchScriptEncoder,
    XVectorEncoder,
    build_speaker_encoder,
    cosine_similarity,
)


def test_cosine_similarity() -> None:
    a = torch.tensor([1.0, 0.0])
    assert cosine_similarity(a, torch.tensor([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(a, torch.tensor([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine_similarity(a, torch.tensor([-1.0, 1.0])) == pytest.approx(-(0.5**0.5))


@pytest.mark.slow
def test_resemblyzer_same_speaker_is_more_similar_than_different_speaker(test_items, load, resemblyzer_encoder) -> None:
    enc = resemblyzer_encoder
    by_spk: dict[str, list[torch.Tensor]] = {}
    for item in test_items:  # 6 speakers x 2 utterances, all of different sentences
        embs = by_spk.setdefault(item.spk, [])
        if len(embs) < 2:
            embs.append(enc.embed(load(item, enc.sample_rate)))
    for embs in by_spk.values():
        for e in embs:
            assert e.shape == (256,)
            assert float(e.norm()) == pytest.approx(1.0, abs=1e-5)
    same = [cosine_similarity(a, b) for embs in by_spk.values() for a, b in itertools.combinations(embs, 2)]
    diff = [
        cosine_similarity(a, b)
        for (_, ea), (_, eb) in itertools.combinations(by_spk.items(), 2)
        for a in ea
        for b in eb
    ]
    mean_same, mean_diff = sum(same) / len(same), sum(diff) / len(diff)
    print(f"resemblyzer SIM: same speaker {mean_same:.3f} ({len(same)} pairs), different {mean_diff:.3f}")
    assert mean_same > mean_diff + 0.1
    # and for every speaker: its own utterances are closer on average than any other speaker's
    for spk, embs in by_spk.items():
        own = [cosine_similarity(a, b) for a, b in itertools.combinations(embs, 2)]
        for other, other_embs in by_spk.items():
            if other != spk:
                cross = [cosine_similarity(a, b) for a in embs for b in other_embs]
                assert sum(own) / len(own) > sum(cross) / len(cross), (spk, other)


def test_xvector_backend_loads_a_local_transformers_folder(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.WavLMConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        tdnn_dim=(16, 16),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=24,
    )
    transformers.WavLMForXVector(config).save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path)
    enc = build_speaker_encoder(f"wavlm-xvector:{tmp_path}")
    assert isinstance(enc, XVectorEncoder) and enc.sample_rate == 16000
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16000, generator=g) * 0.1, torch.randn(12000, generator=g) * 0.1
    ea = enc.embed(a)
    assert ea.shape == (24,) and float(ea.norm()) == pytest.approx(1.0, abs=1e-5)
    assert enc.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert enc.similarity(a, b) < 1.0 - 1e-6


class _TinySpeakerNet(torch.nn.Module):
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav[:, : wav.shape[1] // 160 * 160].reshape(wav.shape[0], -1, 160)
        return torch.stack([frames.pow(2).mean((1, 2)), frames.abs().amax((1, 2)), frames.mean((1, 2))], dim=1)


def test_torchscript_backend(tmp_path) -> None:
    path = tmp_path / "spk.pt"
    torch.jit.script(_TinySpeakerNet()).save(str(path))
    enc = TorchScriptEncoder(str(path))
    wav = torch.randn(16000) * 0.1
    expected = _TinySpeakerNet()(wav[None])[0]
    assert torch.allclose(enc.embed(wav), expected / expected.norm(), atol=1e-6)


def test_build_speaker_encoder_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown speaker encoder"):
        build_speaker_encoder("ivector")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        build_speaker_encoder(f"torchscript:{tmp_path / 'missing.pt'}")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        build_speaker_encoder(f"wavlm-xvector:{tmp_path / 'missing'}")
    assert "resemblyzer" in SPEAKER_BACKENDS
