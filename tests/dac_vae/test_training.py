"""GAN training contract of DACVAE (docs/contracts.md) driven directly with two optimizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dac_vae.audio import load_wav
from dac_vae.checkpoint import build_codec

from .conftest import REPO, TINY_CONFIGS, speech_like


def _optimizers(codec, weight_decay: float = 0.0):
    return {
        name: torch.optim.AdamW(params, lr=1e-3, betas=(0.8, 0.99), weight_decay=weight_decay)
        for name, params in codec.parameter_groups().items()
    }


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params))


def _batch(n_items: int = 2, n: int = 4800):
    audio = torch.stack([speech_like(n, seed=i) for i in range(n_items)])
    lengths = torch.full((n_items,), n, dtype=torch.long)
    lengths[-1] = n - 1500  # one padded item
    audio[-1, n - 1500 :] = 0.0
    return {"audio": audio, "audio_len": lengths}


def test_parameter_groups_partition_the_parameters(tiny_codec_2x):
    groups = tiny_codec_2x.parameter_groups()
    assert list(groups) == ["generator", "discriminator"]  # the trainer's order
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in tiny_codec_2x.parameters()}


def _step(codec, opts, batch, group, step):
    out = codec(batch, group=group, step=step)
    opts[group].zero_grad(set_to_none=True)
    out["loss"].backward()
    return out


def test_one_gan_iteration_updates_each_group_only_on_its_own_step(tiny_codec_2x):
    codec = tiny_codec_2x.train()
    codec.disc_start_step = 0
    groups = codec.parameter_groups()
    opts = _optimizers(codec, weight_decay=0.01)
    batch = _batch()
    encoder_calls = []
    codec.encoder.register_forward_hook(lambda *a: encoder_calls.append(1))

    d0, g0 = _snapshot(groups["discriminator"]), _snapshot(groups["generator"])
    out = _step(codec, opts, batch, "generator", 0)
    assert {"loss", "mel", "kl", "adversarial", "feature", "posterior_std"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    assert all(p.grad is None for p in groups["discriminator"])  # frozen during the generator loss
    assert all(p.grad is not None for p in groups["generator"])
    assert all(p.requires_grad for p in groups["discriminator"])  # and unfrozen afterwards
    opts["generator"].step()
    opts["generator"].zero_grad(set_to_none=True)
    assert _changed(g0, groups["generator"]) and not _changed(d0, groups["discriminator"])
    # The loss is the weighted sum of its named terms.
    w = codec.loss_weights
    total = sum(w[k] * out[k] for k in ("mel", "kl", "adversarial", "feature"))
    torch.testing.assert_close(out["loss"].detach(), total)

    g1 = _snapshot(groups["generator"])
    out = _step(codec, opts, batch, "discriminator", 0)
    assert set(out) == {"loss", "discriminator"} and out["loss"].requires_grad
    assert all(p.grad is None for p in groups["generator"])  # the cached fake carries no graph
    assert all(p.grad is not None for p in groups["discriminator"])
    opts["discriminator"].step()
    assert _changed(d0, groups["discriminator"]) and not _changed(g1, groups["generator"])
    assert len(encoder_calls) == 1  # the generator ran once for both calls (cache hit)
    assert codec._fake_cache is None  # and the cache was released


def test_discriminator_trains_on_the_generator_calls_fake(tiny_codec_2x):
    """The cached fake is exactly what the discriminator call would see (same sampled latent)."""
    codec = tiny_codec_2x.train()
    codec.disc_start_step = 0
    batch = _batch()
    codec(batch, group="generator", step=7)
    fake = codec._fake_cache[2]
    seen = []
    codec.discriminator.discriminators[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    codec(batch, group="discriminator", step=7)
    assert torch.equal(seen[1], fake)  # real first, then the fake


def test_cache_misses_recompute_instead_of_reusing(tiny_codec_2x):
    codec = tiny_codec_2x.train()
    codec.disc_start_step = 0
    batch = _batch()
    calls = []
    codec.encoder.register_forward_hook(lambda *a: calls.append(1))
    codec(batch, group="generator", step=3)
    codec(dict(batch, audio=batch["audio"].clone()), group="discriminator", step=3)  # another batch object
    assert len(calls) == 2
    codec(batch, group="generator", step=4)
    out = codec(batch, group="discriminator", step=5)  # another step
    assert len(calls) == 4 and codec._fake_cache is None
    assert out["loss"].requires_grad and out["loss"].grad_fn is not None


def test_discriminator_warmup(tiny_codec_2x):
    codec = tiny_codec_2x.train()
    codec.disc_start_step = 2
    groups = codec.parameter_groups()
    opts = _optimizers(codec)
    batch = _batch()
    for step in range(3):
        out_g = _step(codec, opts, batch, "generator", step)
        opts["generator"].step()
        before = _snapshot(groups["discriminator"])
        out_d = _step(codec, opts, batch, "discriminator", step)
        opts["discriminator"].step()
        if step < 2:
            assert "adversarial" not in out_g and "feature" not in out_g
            assert float(out_d["loss"].detach()) == 0.0 and not _changed(before, groups["discriminator"])
        else:
            assert "adversarial" in out_g and "feature" in out_g
            assert float(out_d["loss"].detach()) > 0.0 and _changed(before, groups["discriminator"])


def test_bf16_autocast_iteration_is_finite(tiny_codec_2x):
    codec = tiny_codec_2x.train()
    codec.disc_start_step = 0
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_g = codec(batch, group="generator", step=0)
        out_d = codec(batch, group="discriminator", step=0)
    for out in (out_g, out_d):
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())  # losses in fp32
    out_g["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in codec.parameter_groups()["generator"])


def test_validation_call_without_group_gives_the_reconstruction_objective(tiny_codec_2x):
    codec = tiny_codec_2x.eval()
    with torch.no_grad():
        out = codec(_batch())
    assert set(out) == {"loss", "mel", "kl", "posterior_std"}
    torch.testing.assert_close(out["loss"], 15.0 * out["mel"] + 0.1 * out["kl"])


def test_dispersive_term_when_enabled(tiny_codec_2x):
    codec = tiny_codec_2x.train()
    codec.loss_weights["dispersive"] = 0.25
    out = codec(_batch(3))
    assert "dispersive" in out and 0.0 <= float(out["dispersive"]) <= 1.0


def test_media_returns_audio_and_a_mel_figure(tiny_codec_2x):
    media = tiny_codec_2x.media(_batch())
    wav, sr = media["audio/reconstruction"]
    assert sr == 24000 and wav.shape == media["audio/input"][0].shape == (4800,)
    assert len(media["image/mel"].axes) == 2


def _one_utterance() -> torch.Tensor:
    """A real corpus utterance when the corpus is present, else synthetic speech-like audio."""
    wavs = sorted((REPO / "data" / "wavs").glob("*/*.wav"))
    if wavs:
        wav = load_wav(wavs[0], 24000)
        return wav[:6000]
    return speech_like(6000, seed=3)


@pytest.mark.slow
def test_overfit_one_utterance_lowers_the_mel_loss():
    """A tiny codec trained 25 steps on one utterance: the multi-scale mel loss drops clearly
    (to about 0.4 of its initial value on the corpus; the bound leaves room for other machines)."""
    torch.manual_seed(0)
    codec = build_codec(Path(TINY_CONFIGS["2x"])).train()
    wav = _one_utterance()
    batch = {"audio": wav.unsqueeze(0), "audio_len": torch.tensor([wav.shape[0]])}
    opt = torch.optim.AdamW(codec.parameter_groups()["generator"], lr=1e-3, betas=(0.8, 0.99))
    codec.eval()
    with torch.no_grad():
        initial = float(codec(batch)["mel"])
    codec.train()
    for _ in range(25):
        out = codec(batch)  # reconstruction objective: mel + KL
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    codec.eval()
    with torch.no_grad():
        final = float(codec(batch)["mel"])
    assert final < 0.6 * initial, (initial, final)
