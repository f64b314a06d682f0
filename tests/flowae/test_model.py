"""flowae's model: shapes at both hops and odd lengths, the conditioning layout, noise
synchronisation, seeded rendering, the exact spectral inverse."""

from __future__ import annotations

import pytest
import torch

from flowae.estimator import DataPrediction
from flowae.model import FlowAE
from flowae.spectral import CompressedSTFT
from speech.flow.estimator import DiT
from tests.dac_vae.conftest import speech_like

from .conftest import build


@pytest.mark.parametrize("hop", [480, 320])
def test_encode_render_shapes_for_any_length(hop):
    model = build(hop).eval()
    lengths = torch.tensor([hop * 7 + 13, hop * 3 + 1])  # neither a multiple of the hop
    short = torch.nn.functional.pad(speech_like(int(lengths[1])), (0, int(lengths[0] - lengths[1])))
    audio = torch.stack([speech_like(int(lengths[0]), seed=1), short])
    mu, logs, latent_len = model.encode(audio, lengths)
    assert model.hop == hop and model.latent_ratio == 24000 // hop // 25
    assert mu.shape == (2, model.latent_dim, 8) and logs.shape == mu.shape
    assert latent_len.tolist() == [8, 4]
    assert torch.all(mu[1, :, 4:] == 0) and torch.all(logs[1, :, 4:] == 0)
    valid = mu[0].transpose(0, 1)  # parameter-free LayerNorm: each frame has mean 0, variance 1
    assert torch.allclose(valid.mean(-1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(valid.var(-1, unbiased=False), torch.ones(8), atol=1e-2)
    audio_out = model.decode(mu, latent_len, n_steps=2)
    assert audio_out.shape == (2, 8 * hop)
    assert torch.all(audio_out[1, 4 * hop :] == 0)
    assert model.decode(mu, latent_len, length=int(lengths[0]), n_steps=1).shape == (2, int(lengths[0]))
    model.train()
    out = model({"audio": audio, "audio_len": lengths})
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_batched_encode_and_render_equal_one_by_one():
    model = build().eval()
    a, b = speech_like(480 * 6 + 100, seed=2), speech_like(480 * 3 + 7, seed=3)
    audio = torch.stack([a, torch.nn.functional.pad(b, (0, a.shape[0] - b.shape[0]))])
    mu, _, latent_len = model.encode(audio, torch.tensor([a.shape[0], b.shape[0]]))
    mu_b, _, len_b = model.encode(b[None], torch.tensor([b.shape[0]]))
    assert torch.allclose(mu[1, :, : int(len_b)], mu_b[0], atol=1e-5)
    both = model.decode(mu, latent_len, n_steps=3)
    alone = model.decode(mu_b, len_b, n_steps=3)
    assert torch.allclose(both[1, : alone.shape[-1]], alone[0], atol=1e-4)


def test_the_estimator_first_layer_takes_frames_plus_latent_channels():
    """The published flow AE concatenated channels its first block did not expect: ours checks the
    layout at construction and feeds exactly ``2F + D`` channels to the first layer."""
    model = build()
    inner = model.estimator.estimator
    assert inner.inp.in_features == model.spec.channels + model.latent_dim == 1922 + 80
    seen = []
    hook = inner.inp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[-1]))
    model({"audio": speech_like(2000)[None]})
    hook.remove()
    assert seen == [inner.inp.in_features]
    for bad in ({"in_channels": 1922, "mu_channels": 64}, {"in_channels": 962, "mu_channels": 80},
                {"in_channels": 1922, "mu_channels": 80, "spk_channels": 192}):
        with pytest.raises(ValueError, match="input layout"):
            FlowAE(model.encoder, DataPrediction(DiT(**bad, cond_channels=0, dim=32, depth=1, heads=2, head_dim=16)),
                   model.objective, latent_dim=80)


def test_noise_sync_draws_decoder_time_below_one_minus_latent_noise():
    model = build(noise_sync_prob=1.0)
    z = torch.randn(4000, 8, 5)
    t = torch.rand(4000)
    noised, t_sync, tau = model.noise_sync(z, t, torch.Generator().manual_seed(0))
    assert torch.all((tau >= 0) & (tau <= 1)) and tau.std() > 0.25  # U(0, 1) levels
    assert torch.all(t_sync <= 1 - tau + 1e-6) and torch.allclose(t_sync, (1 - tau) * t)
    # the latent moved toward noise by exactly tau
    eps = (noised - (1 - tau.view(-1, 1, 1)) * z) / tau.clamp_min(1e-6).view(-1, 1, 1)
    assert abs(float(eps[tau > 0.1].std()) - 1.0) < 0.05
    model.noise_sync_prob = 0.1
    _, t_some, tau_some = model.noise_sync(z, t, torch.Generator().manual_seed(1))
    share = float((tau_some > 0).float().mean())
    assert 0.08 < share < 0.12 and torch.equal(t_some[tau_some == 0], t[tau_some == 0])


def test_training_passes_the_synced_times_to_the_objective(monkeypatch):
    model = build(noise_sync_prob=1.0)
    seen = {}
    real_loss = model.objective.loss

    def spy(estimator, x1, mask, conditions, **kw):
        seen["t"] = kw["t"]
        return real_loss(estimator, x1, mask, conditions, **kw)

    monkeypatch.setattr(model.objective, "loss", spy)
    out = model({"audio": speech_like(4800)[None].repeat(8, 1)})
    assert out["noise_sync_share"] == 1.0 and seen["t"].shape == (8,)
    assert torch.all((seen["t"] >= 0) & (seen["t"] <= 1))


def test_rendering_is_deterministic_with_a_seed():
    model = build().eval()
    mu, _, latent_len = model.encode(speech_like(480 * 5)[None])
    first = model.decode(mu, latent_len, n_steps=2)
    assert torch.equal(first, model.decode(mu, latent_len, n_steps=2))
    assert torch.equal(model.decode(mu, seed=7, n_steps=2), model.decode(mu, seed=7, n_steps=2))
    assert not torch.equal(first, model.decode(mu, seed=7, n_steps=2))


@pytest.mark.parametrize("frame_hop", [480, 320, 120, 80])
def test_compressed_stft_inverts_exactly(frame_hop):
    spec = CompressedSTFT(frame_hop)
    wav = speech_like(frame_hop * 37)[None]
    frames = spec.analysis(wav)
    assert frames.shape == (1, 2 * (2 * frame_hop + 1), 37)
    assert torch.allclose(spec.synthesis(frames), wav, atol=1e-5)


def test_media_has_audio_and_mel():
    model = build().eval()
    items = model.media({"audio": speech_like(4800)[None], "audio_len": torch.tensor([4800])})
    assert set(items) == {"audio/input", "audio/reconstruction", "image/mel"}
    assert items["audio/reconstruction"][0].shape == (4800,)


def test_the_3x_config_builds_the_hop_320_codec():
    from flowae.checkpoint import build_flowae

    from .conftest import REPO

    model = build_flowae(REPO / "configs/tiny/flowae_3x.yaml")
    assert (model.hop, model.latent_dim, model.latent_ratio, model.spec.channels) == (320, 64, 3, 1282)


def test_codec_key_names_the_section_a_config_holds(tmp_path):
    from flowae.checkpoint import CodecLoadError, codec_key

    from .conftest import REPO

    assert codec_key(REPO / "configs/tiny/dac_vae.yaml") == "dac_vae"
    assert codec_key(REPO / "configs/tiny/flowae.yaml") == "flowae"
    neither = tmp_path / "x.yaml"
    neither.write_text("llm: 1\n")
    with pytest.raises(CodecLoadError, match="exactly one of dac_vae, flowae"):
        codec_key(neither)
