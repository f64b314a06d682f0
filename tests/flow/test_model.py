"""Stage 2 model: configs, losses, prompts, statistics, speaker loading, batched sampling."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from speech.config import ConfigError
from speech.flow.encoder import TokenEncoder
from speech.flow.estimator import DiT, UNet1D
from speech.flow.matching import FlowMatching
from speech.flow.model import FlowModel, concat_padded, seeded_noise, shift_left, smooth_pitch
from tests.flow.stand_in import REPO, TinySpeaker, load_flow_config

CONFIGS = {2: "tiny/flow.yaml", 3: "tiny/flow_3x.yaml"}


def _model(ratio: int = 2, **over) -> FlowModel:
    return load_flow_config(CONFIGS[ratio], over)["flow"]


def _dit_model(D: int = 6, ratio: int = 2, **kw) -> FlowModel:
    enc = TokenEncoder(D, ratio, dim=16, token_blocks=1, latent_blocks=1, heads=2, ffn_dim=32, dropout=0.0)
    est = DiT(D, spk_channels=D, dim=16, depth=2, heads=2, head_dim=8, conv_kernel=5)
    with torch.no_grad():  # leave the zero init so samples are not trivially the noise
        for p in est.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return FlowModel(enc, est, FlowMatching(), D, speaker=TinySpeaker(), **kw)


def _batch(model: FlowModel, lengths=(9, 5, 7), garbage: float = 0.0) -> dict:
    r, D = model.ratio, model.latent_dim
    n = torch.tensor(lengths)
    N = max(lengths)
    tok_mask = torch.arange(N)[None] < n[:, None]
    lat_mask = torch.arange(N * r)[None] < (n * r)[:, None]
    ref_len = torch.tensor([2400 * (1 + i % 3) for i in range(len(lengths))])
    ref_mask = torch.arange(7200)[None] < ref_len[:, None]
    latent = torch.randn(len(lengths), D, N * r) * 2 + 1
    tokens = torch.randint(0, 6561, (len(lengths), N))
    audio = torch.randn(len(lengths), 7200) * 0.1
    if garbage:
        latent = torch.where(lat_mask[:, None, :], latent, garbage)
        tokens = torch.where(tok_mask, tokens, 17)
        audio = torch.where(ref_mask, audio, garbage)
    else:
        latent, tokens, audio = latent * lat_mask[:, None, :], tokens * tok_mask, audio * ref_mask
    return dict(
        speech_token=tokens, speech_token_len=n, latent=latent, latent_len=n * r, ref_audio=audio, ref_audio_len=ref_len
    )


@pytest.mark.parametrize("ratio", [2, 3])
def test_config_builds_and_trains_one_step(ratio):
    model = _model(ratio, contrastive_weight=0.05, immiscible="knn").train()
    assert model.ratio == ratio
    out = model(_batch(model))
    assert set(out) == {"loss", "flow_mse", "contrastive", "len_mismatch"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["len_mismatch"].item() == 0.0
    out["loss"].backward()
    for part in ("encoder", "estimator", "speaker", "spk_proj"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


@pytest.mark.parametrize("ratio", [2, 3])
def test_sample_length_is_ratio_times_tokens(ratio):
    model = _model(ratio).eval()
    b = _batch(model, lengths=(6, 3))
    latent, length = model.sample(
        b["speech_token"], b["speech_token_len"], ref_audio=b["ref_audio"], ref_audio_len=b["ref_audio_len"], n_steps=2
    )
    assert latent.shape == (2, model.latent_dim, 6 * ratio)
    assert length.tolist() == [6 * ratio, 3 * ratio]
    assert (latent[1, :, 3 * ratio :] == 0).all()


def test_loss_ignores_padding():
    model = _model().eval()  # eval: fixed CV seed, so two calls draw the same t, noise, prompts
    torch.manual_seed(5)
    clean = _batch(model)
    torch.manual_seed(5)
    dirty = _batch(model, garbage=37.0)
    a, b = model(clean), model(dirty)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5), key


def test_prompt_frames_are_condition_and_excluded_from_loss(monkeypatch):
    model = _model(prompt_prob=1.0, prompt_max_ratio=0.3, cfg_dropout=0.0).train()
    seen = {}
    loss_fn = model.matching.loss

    def spy(estimator, x1, mask, conditions, loss_mask=None, **kw):
        seen.update(x1=x1, mask=mask, cond=conditions["cond"], loss_mask=loss_mask)

        def wrapped(*args, **kwargs):
            v = estimator(*args, **kwargs)
            v.retain_grad()
            seen["v"] = v
            return v

        return loss_fn(wrapped, x1, mask, conditions, loss_mask=loss_mask, **kw)

    monkeypatch.setattr(model.matching, "loss", spy)
    lengths = (40, 30, 20, 35)
    out = model(_batch(model, lengths=lengths))
    out["loss"].backward()
    prompt = seen["mask"] & ~seen["loss_mask"]
    n_prompt = prompt.sum(1)
    assert (n_prompt > 0).any()
    for b, n in enumerate(lengths):
        p = int(n_prompt[b])
        assert p % model.ratio == 0 and p <= 0.3 * n * model.ratio
        assert prompt[b, :p].all() and not prompt[b, p:].any()  # a prefix
    cond, x1 = seen["cond"], seen["x1"]
    assert torch.equal(cond * prompt[:, None, :], cond) and torch.equal(cond, x1 * prompt[:, None, :])
    grad = seen["v"].grad
    assert (grad * prompt[:, None, :]).abs().sum() == 0
    assert (grad * seen["loss_mask"][:, None, :]).abs().sum() > 0


def _one_by_one(model, b, prompt=None, **kw):
    outs = []
    for i in range(b["speech_token"].shape[0]):
        n = int(b["speech_token_len"][i])
        extra = {}
        if prompt is not None:
            p = int(prompt["prompt_token_len"][i])
            extra = dict(
                prompt_token=prompt["prompt_token"][i : i + 1, :p],
                prompt_token_len=prompt["prompt_token_len"][i : i + 1],
                prompt_latent=prompt["prompt_latent"][i : i + 1, :, : p * model.ratio],
            )
        ref = int(b["ref_audio_len"][i])
        lat, length = model.sample(
            b["speech_token"][i : i + 1, :n],
            b["speech_token_len"][i : i + 1],
            ref_audio=b["ref_audio"][i : i + 1, :ref],
            ref_audio_len=b["ref_audio_len"][i : i + 1],
            **extra,
            **kw,
        )
        assert length.item() == n * model.ratio
        outs.append(lat[0])
    return outs


@pytest.mark.parametrize(
    "name,use_prompt,solver", [("unet2", False, "euler"), ("unet3", True, "midpoint"), ("dit", True, "euler")]
)
def test_batched_sampling_equals_one_by_one(name, use_prompt, solver):
    model = {"unet2": lambda: _model(2), "unet3": lambda: _model(3), "dit": lambda: _dit_model()}[name]().eval()
    b = _batch(model, lengths=(8, 3, 6))
    prompt = None
    if use_prompt:
        pl = torch.tensor([2, 4, 0])
        prompt = dict(
            prompt_token=torch.randint(0, 6561, (3, 4)) * (torch.arange(4)[None] < pl[:, None]),
            prompt_token_len=pl,
            prompt_latent=torch.randn(3, model.latent_dim, 4 * model.ratio),
        )
    kw = dict(n_steps=3, cfg_w=0.7, solver=solver, seed=11)
    batched, lengths = model.sample(
        b["speech_token"],
        b["speech_token_len"],
        ref_audio=b["ref_audio"],
        ref_audio_len=b["ref_audio_len"],
        **(prompt or {}),
        **kw,
    )
    for i, alone in enumerate(_one_by_one(model, b, prompt, **kw)):
        n = int(lengths[i])
        assert torch.allclose(batched[i, :, :n], alone, atol=1e-4), (name, i)
        assert (batched[i, :, n:] == 0).all()


def test_prompt_changes_the_continuation_and_seed_is_fixed():
    model = _model().eval()
    b = _batch(model, lengths=(6,))
    common = dict(ref_audio=b["ref_audio"], ref_audio_len=b["ref_audio_len"], n_steps=2)
    a, _ = model.sample(b["speech_token"], b["speech_token_len"], seed=3, **common)
    again, _ = model.sample(b["speech_token"], b["speech_token_len"], seed=3, **common)
    other, _ = model.sample(b["speech_token"], b["speech_token_len"], seed=4, **common)
    assert torch.equal(a, again) and not torch.allclose(a, other)
    prompted, _ = model.sample(
        b["speech_token"],
        b["speech_token_len"],
        seed=3,
        prompt_token=torch.randint(0, 6561, (1, 3)),
        prompt_token_len=torch.tensor([3]),
        prompt_latent=torch.randn(1, model.latent_dim, 6),
        **common,
    )
    assert prompted.shape == a.shape and not torch.allclose(prompted, a)


def _stats(D):
    return torch.rand(D) * 2 - 1, torch.rand(D) + 0.5


def test_latent_statistics_are_buffers_applied_in_training_and_undone_in_sampling(tmp_path):
    D = 80
    mean, std = _stats(D)
    pt = tmp_path / "latent_stats.pt"
    torch.save({"mean": mean, "std": std}, pt)
    js = tmp_path / "latent_stats.json"
    js.write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist()}))
    torch.manual_seed(0)
    plain = _model().eval()
    for path in (pt, js):
        torch.manual_seed(0)
        scaled = _model(latent_stats=str(path)).eval()
        assert torch.allclose(scaled.latent_mean, mean) and torch.allclose(scaled.latent_std, std)
        assert {"latent_mean", "latent_std"} <= set(scaled.state_dict())
        # Training: raw latents m + s·x under the statistics give the same loss as x without them.
        b = _batch(plain)
        raw = dict(b, latent=(b["latent"] * std[:, None] + mean[:, None]) * (b["latent"] != 0).any(1, keepdim=True))
        assert scaled(raw)["loss"].item() == pytest.approx(plain(b)["loss"].item(), rel=1e-4)
        # Inference: samples come back in raw space; prompts are normalised on the way in.
        common = dict(
            ref_audio=b["ref_audio"][:1],
            ref_audio_len=b["ref_audio_len"][:1],
            n_steps=2,
            prompt_token=torch.randint(0, 6561, (1, 2)),
            prompt_token_len=torch.tensor([2]),
        )
        p = torch.randn(1, D, 4)
        x, _ = plain.sample(b["speech_token"][:1], b["speech_token_len"][:1], prompt_latent=p, **common)
        y, _ = scaled.sample(
            b["speech_token"][:1], b["speech_token_len"][:1], prompt_latent=p * std[:, None] + mean[:, None], **common
        )
        assert torch.allclose(y, x * std[:, None] + mean[:, None], atol=1e-4)
    # The statistics travel with the checkpoint: a model built without the file gets them back.
    rebuilt = _model()
    rebuilt.load_state_dict(scaled.state_dict())
    assert torch.allclose(rebuilt.latent_std, std)


def test_latent_statistics_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        _model(latent_stats=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"mean": torch.zeros(3), "std": torch.ones(3)}, bad)
    with pytest.raises(ConfigError, match="latent_dim is 80"):
        _model(latent_stats=str(bad))
    torch.save({"mean": torch.zeros(80), "std": torch.zeros(80)}, bad)
    with pytest.raises(ConfigError, match="std > 0"):
        _model(latent_stats=str(bad))
    torch.save({"avg": torch.zeros(80)}, bad)
    with pytest.raises(ConfigError, match="'mean' and 'std'"):
        _model(latent_stats=str(bad))


def test_speaker_loaded_from_lm_checkpoint_and_frozen(tmp_path):
    donor = TinySpeaker()
    ckpt = tmp_path / "llm.pt"
    state = {f"speaker.{k}": v for k, v in donor.state_dict().items()}
    state["llm.embed.weight"] = torch.zeros(3, 3)
    torch.save({"model": state, "step": 7}, ckpt)
    model = _model(speaker_checkpoint=str(ckpt), freeze_speaker=True).train()
    assert torch.equal(model.speaker.proj.weight, donor.proj.weight)
    assert not model.speaker.training and model.encoder.training
    assert not any(p.requires_grad for p in model.speaker.parameters())
    model(_batch(model))["loss"].backward()
    assert all(p.grad is None for p in model.speaker.parameters())
    torch.save({"model": {"llm.x": torch.zeros(1)}}, ckpt)
    with pytest.raises(ConfigError, match="no 'speaker.\\*' weights"):
        _model(speaker_checkpoint=str(ckpt))
    with pytest.raises(ConfigError, match="not found"):
        _model(speaker_checkpoint=str(tmp_path / "nope.pt"))


def test_length_mismatch_is_handled_and_logged():
    model = _model().eval()
    b = _batch(model, lengths=(9, 5, 7))
    b["latent_len"] = b["latent_len"] - torch.tensor([0, 2, 0])  # item 1 lost a token's frames
    out = model(b)
    assert out["len_mismatch"].item() == pytest.approx(1 / 3)
    assert torch.isfinite(out["loss"])
    b["latent"] = b["latent"][..., :-3]  # shorter padded latent than tokens x ratio: cropped/padded by shape
    assert torch.isfinite(model(b)["loss"])


def test_config_consistency_is_checked():
    enc = TokenEncoder(8, 2, dim=16, token_blocks=0, latent_blocks=0, heads=2, ffn_dim=16)
    with pytest.raises(ConfigError, match="latent_dim"):
        FlowModel(enc, UNet1D(6, channels=[8], n_blocks=0, num_mid_blocks=0), FlowMatching(), 8)
    with pytest.raises(ConfigError, match="chunk_size"):
        FlowModel(enc, UNet1D(8, channels=[8], n_blocks=0, num_mid_blocks=0, chunk_size=40), FlowMatching(), 8)
    with pytest.raises(ConfigError, match="speaker"):
        FlowModel(enc, UNet1D(8, spk_channels=8, channels=[8], n_blocks=0, num_mid_blocks=0), FlowMatching(), 8)
    model = FlowModel(
        enc,
        UNet1D(8, spk_channels=0, channels=[8], n_blocks=0, num_mid_blocks=0, heads=1, head_dim=4),
        FlowMatching(),
        8,
    )
    lat, _ = model.sample(torch.randint(0, 6561, (1, 4)), torch.tensor([4]), n_steps=1)  # no speaker needed
    assert lat.shape == (1, 8, 8)


def test_seeded_noise_depends_only_on_seed_and_frame():
    long = seeded_noise(5, 4, 200)
    assert torch.equal(seeded_noise(5, 4, 70), long[:, :70])
    assert not torch.allclose(seeded_noise(6, 4, 70), long[:, :70])
    assert long.std().item() == pytest.approx(1.0, abs=0.1)


def test_concat_padded_and_shift_left_equal_loops():
    a = torch.randint(1, 9, (3, 4))
    b = torch.randint(1, 9, (3, 5))
    al, bl = torch.tensor([2, 0, 4]), torch.tensor([5, 3, 1])
    out, length = concat_padded(a, al, b, bl)
    assert length.tolist() == [7, 3, 5]
    for i in range(3):
        ref = torch.cat([a[i, : al[i]], b[i, : bl[i]]])
        assert torch.equal(out[i, : length[i]], ref) and (out[i, length[i] :] == 0).all()
    x = torch.randn(3, 2, 9)
    off = torch.tensor([0, 3, 7])
    y = shift_left(x, off, 5)
    for i in range(3):
        o = int(off[i])
        ref = x[i, :, o : o + 5]
        assert torch.equal(y[i, :, : ref.shape[-1]], ref) and (y[i, :, ref.shape[-1] :] == 0).all()


def test_smooth_pitch_is_a_causal_moving_average_of_channel_0_in_any_chunking():
    x = torch.randn(2, 3, 23)
    y, _ = smooth_pitch(x, 5)
    for b in range(2):  # reference: the mean of the last 5 frames, the first frame standing in before the start
        padded = [float(x[b, 0, 0])] * 4 + x[b, 0].tolist()
        ref = torch.tensor([sum(padded[t : t + 5]) / 5 for t in range(23)])
        torch.testing.assert_close(y[b, 0], ref)
    assert torch.equal(y[:, 1:], x[:, 1:])
    for cuts in ([0, 1, 23], [0, 3, 4, 17, 23], [0, 10, 10, 23]):  # chunk by chunk with the carried history
        parts, history = [], None
        for s, e in zip(cuts, cuts[1:]):
            part, history = smooth_pitch(x[..., s:e], 5, history)
            parts.append(part)
        torch.testing.assert_close(torch.cat(parts, -1), y)
    assert smooth_pitch(x, 1)[0] is x and smooth_pitch(x, 0)[0] is x


def test_pitch_smoothing_in_batched_sampling_and_its_config_check():
    model = _model(2).eval()
    b = _batch(model, lengths=(8, 3, 6))
    kw = dict(ref_audio=b["ref_audio"], ref_audio_len=b["ref_audio_len"], n_steps=2, seed=3)
    rough, lengths = model.sample(b["speech_token"], b["speech_token_len"], **kw)
    model.pitch_smoothing = 4
    smooth, _ = model.sample(b["speech_token"], b["speech_token_len"], **kw)
    for i in range(3):  # each item smoothed over its own frames only; padding stays 0
        n = int(lengths[i])
        torch.testing.assert_close(smooth[i, :, :n], smooth_pitch(rough[i : i + 1, :, :n], 4)[0][0])
        assert (smooth[i, :, n:] == 0).all()
    with pytest.raises(ConfigError, match="pitch_smoothing"):
        FlowModel(model.encoder, model.estimator, model.matching, model.latent_dim, model.speaker, pitch_smoothing=2.5)


def test_media_returns_a_latent_figure():
    model = _model().eval()
    fig = model.media(_batch(model, lengths=(4, 3)))["image/latent"]
    assert len(fig.axes) == 2


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(
    not all(_importable(m) for m in ("speech.llm.speaker", "speech.dataset.processors", "speech.trainer.scheduler")),
    reason="needs the LM speaker extractor, the data processors and the trainer (other parts)",
)
@pytest.mark.parametrize("name", ["tiny/flow.yaml", "tiny/flow_3x.yaml"])
def test_real_config_with_real_speaker_extractor(name):
    from speech.config import load_config

    config = load_config(REPO / "configs" / name)
    model = config["flow"].train()
    out = model(_batch(model))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("ratio", [2, 3])
def test_streamed_prefix_equals_offline_with_causal_chunks(ratio):
    """Chunked encoder + causal chunked estimator + frame-indexed noise: sampling the tokens received so far
    (plus the 3-token look-ahead) gives the final result's frames for every completed chunk."""
    D, chunk = 6, 4
    enc = TokenEncoder(
        D, ratio, dim=16, token_blocks=1, latent_blocks=1, heads=2, ffn_dim=32, dropout=0.0, chunk_size=chunk
    )
    est = UNet1D(
        D,
        spk_channels=D,
        channels=[12],
        n_blocks=1,
        num_mid_blocks=1,
        heads=2,
        head_dim=4,
        chunk_size=chunk * ratio,
        causal=True,
    )
    model = FlowModel(enc, est, FlowMatching(), D, speaker=TinySpeaker()).eval()
    tokens, ref = torch.randint(0, 6561, (1, 16)), torch.randn(1, 2400)
    kw = dict(ref_audio=ref, ref_audio_len=torch.tensor([2400]), n_steps=3, cfg_w=0.7, seed=2, streaming=True)
    offline, _ = model.sample(tokens, torch.tensor([16]), **kw)
    done = 2 * chunk  # two chunks complete once their look-ahead tokens have arrived
    prefix, _ = model.sample(tokens[:, : done + 3], torch.tensor([done + 3]), **kw)
    assert torch.allclose(prefix[..., : done * ratio], offline[..., : done * ratio], atol=1e-5)
    assert not torch.allclose(prefix[..., done * ratio :], offline[..., done * ratio : (done + 3) * ratio], atol=1e-3)
