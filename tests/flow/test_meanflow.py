"""MeanFlow: the JVP target against finite differences, its CFM limit, one-step sampling, configs."""

from __future__ import annotations

import pytest
import torch

from speech.config import ConfigError
from speech.flow.encoder import TokenEncoder
from speech.flow.estimator import DiT, UNet1D
from speech.flow.matching import FlowMatching
from speech.flow.meanflow import MeanFlow, mean_flow_target
from speech.flow.model import FlowModel
from tests.flow.stand_in import TinySpeaker, load_flow_config
from tests.flow.test_model import _batch

D = 6


def _estimator(kind: str) -> torch.nn.Module:
    if kind == "unet":
        est = UNet1D(D, channels=[16, 16], n_blocks=1, num_mid_blocks=1, heads=2, head_dim=8, interval_time=True)
    else:
        est = DiT(D, dim=16, depth=2, heads=2, head_dim=8, conv_kernel=5, interval_time=True)
    torch.manual_seed(1)
    with torch.no_grad():  # leave the zero inits (interval MLP, adaLN) so every input matters
        for p in est.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return est.eval()


def _inputs(lengths=(11, 7, 4)):
    torch.manual_seed(2)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    fm = mask[:, None, :].float()
    z, v = torch.randn(B, D, T) * fm, torch.randn(B, D, T) * fm
    conds = {"mu": torch.randn(B, D, T) * fm, "cond": torch.randn(B, D, T) * fm}
    t = torch.tensor([0.2, 0.45, 0.7])[:B]
    r = torch.tensor([0.9, 0.5, 1.0])[:B]
    return z, v, mask, t, r, conds


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_jvp_target_equals_central_differences(kind):
    est = _estimator(kind)
    z, v, mask, t, r, conds = _inputs()
    target = mean_flow_target(est, z, mask, t, r, v, conds)
    # Reference in float64: central differences of u along the same tangent (dz, dt, dr) = (v, 1, 0).
    est64 = est.double()
    c64 = {k: c.double() for k, c in conds.items()}
    eps = 1e-5

    def u(s: float) -> torch.Tensor:
        with torch.no_grad():
            return est64(z.double() + s * v.double(), mask, t=t.double() + s, r=r.double(), **c64)

    dudt = (u(eps) - u(-eps)) / (2 * eps)
    reference = v.double() - (t - r).double().view(-1, 1, 1) * dudt
    fm = mask[:, None, :]
    assert (target * ~fm == 0).all()
    scale = reference.abs().max()
    assert (target.double() - reference).abs().max() < 3e-4 * scale, (target.double() - reference).abs().max() / scale
    # The derivative term is not negligible: the target differs clearly from v.
    assert (target - v).abs().max() > 0.05 * scale


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_target_with_r_equal_t_is_the_cfm_target(kind):
    est = _estimator(kind)
    z, v, mask, t, _, conds = _inputs()
    assert torch.equal(mean_flow_target(est, z, mask, t, t, v, conds), v * mask[:, None, :])
    # and the loss: everything with r = t, no guidance, no dropout -> the CFM flow_mse on the same draws.
    x1 = torch.randn(3, D, 11) * mask[:, None, :]
    mf = MeanFlow(equal_share=1.0, cfg_w=0.0, cfg_dropout=0.0, time_mean=0.0)
    cfm = FlowMatching(cfg_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    x0 = cfm.assignment(x1, mask, g)
    tt, _ = mf.sample_times(3, x1.device, torch.Generator().manual_seed(1))
    z_t, u_cfm = cfm.path(x0, x1, tt)
    with torch.no_grad():
        out = est(z_t, mask, t=tt, r=tt, **conds)
        cfm_mse = ((out - u_cfm * mask[:, None, :]).square() * mask[:, None, :]).sum() / (mask.sum() * D)

    mf.sample_times = lambda n, device, generator=None: (tt, tt)
    with torch.no_grad():
        loss = mf.loss(est, x1, mask, conds, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss["flow_mse"], cfm_mse)


def test_interval_embedding_starts_from_the_cfm_field():
    torch.manual_seed(0)
    cfm = UNet1D(D, channels=[16], n_blocks=1, num_mid_blocks=1, heads=2, head_dim=8)
    mf = UNet1D(D, channels=[16], n_blocks=1, num_mid_blocks=1, heads=2, head_dim=8, interval_time=True)
    missing, unexpected = mf.load_state_dict(cfm.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("interval_mlp.") for k in missing)
    z, _, mask, t, r, conds = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(mf(z, mask, t=t, r=r, **conds), cfm(z, mask, t=t, **conds))
    with pytest.raises(ValueError, match="interval_time"):
        cfm(z, mask, t=t, r=r, **conds)


def _mf_model(**over) -> FlowModel:
    return load_flow_config("tiny/flow_meanflow.yaml", over)["flow"]


def test_config_builds_trains_and_mismatch_is_refused():
    model = _mf_model().train()
    assert isinstance(model.matching, MeanFlow) and model.estimator.interval_time
    out = model(_batch(model))
    assert set(out) >= {"loss", "flow_mse"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.estimator.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    enc = TokenEncoder(D, 2, dim=16, token_blocks=1, latent_blocks=1, heads=2, ffn_dim=32)
    with pytest.raises(ConfigError, match="interval_time"):
        FlowModel(enc, UNet1D(D, spk_channels=D, channels=[16]), MeanFlow(), D, speaker=TinySpeaker())
    with pytest.raises(ConfigError, match="interval_time"):
        FlowModel(enc, UNet1D(D, spk_channels=D, channels=[16], interval_time=True), FlowMatching(), D, speaker=TinySpeaker())


@pytest.mark.parametrize("name", ["flow_meanflow.yaml", "tiny/flow_meanflow.yaml"])
def test_configs_rank_checkpoints_by_the_unweighted_mse(name):
    """The adaptively weighted loss, err / (err + c), sits near 1 and does not rank checkpoints: keep_best and
    average_checkpoints.py rank by train_conf.best_metric, the unweighted flow_mse the model logs in CV."""
    from speech.trainer.options import read_train_conf
    from tests.flow.stand_in import REPO

    assert read_train_conf((REPO / "configs" / name).read_text()).best_metric == "flow_mse"
    if name.startswith("tiny/"):
        model = _mf_model().eval()
        with torch.no_grad():
            assert "flow_mse" in model(_batch(model))


def test_padding_and_prompt_frames_do_not_change_the_loss():
    model = _mf_model(cfg_w=0.5, cfg_kappa=0.3).eval()  # eval: fixed seed for all draws
    clean = model(_batch(model))
    torch.manual_seed(0)
    dirty = model(_batch(model, garbage=7.0))
    torch.testing.assert_close(clean["loss"], dirty["loss"])


def test_equal_share_and_time_order():
    mf = MeanFlow(equal_share=0.75)
    t, r = mf.sample_times(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert (t <= r).all() and ((t >= 0) & (r <= 1)).all()
    assert abs((r == t).float().mean().item() - 0.75) < 0.03
    with pytest.raises(ConfigError):
        MeanFlow(cfg_w=0.5, cfg_dropout=0.0)


@pytest.mark.parametrize("n_steps", [1, 2])
def test_sampling_shapes_masks_determinism_and_batch_equals_item(n_steps):
    model = _mf_model().eval()
    with torch.no_grad():  # random interval MLP so the steps' r matters
        for p in model.estimator.interval_mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = _batch(model, lengths=(9, 5, 7))
    kw = dict(ref_audio=b["ref_audio"], ref_audio_len=b["ref_audio_len"], n_steps=n_steps, seed=3)
    out, out_len = model.sample(b["speech_token"], b["speech_token_len"], **kw)
    assert out.shape == (3, model.latent_dim, 18) and out_len.tolist() == [18, 10, 14]
    assert (out[1, :, 10:] == 0).all() and (out[2, :, 14:] == 0).all()
    again, _ = model.sample(b["speech_token"], b["speech_token_len"], **kw)
    assert torch.equal(out, again)
    other, _ = model.sample(b["speech_token"], b["speech_token_len"], **{**kw, "seed": 4})
    assert not torch.allclose(out, other)
    for i in range(3):
        n = int(b["speech_token_len"][i])
        alone, _ = model.sample(
            b["speech_token"][i : i + 1, :n], b["speech_token_len"][i : i + 1],
            ref_audio=b["ref_audio"][i : i + 1], ref_audio_len=b["ref_audio_len"][i : i + 1],
            n_steps=n_steps, seed=3,
        )
        torch.testing.assert_close(alone[0], out[i, :, : 2 * n], atol=1e-5, rtol=1e-4)


def test_one_step_is_one_evaluation_and_matches_the_formula():
    calls = []

    def est(x, mask, t, r, **_):
        calls.append((t.clone(), r.clone()))
        return torch.full_like(x, 2.0) * mask[:, None, :]

    mf = MeanFlow()
    noise = torch.randn(2, 3, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    x = mf.sample(est, noise, mask, {"mu": None}, n_steps=1)
    assert len(calls) == 1 and calls[0][0].tolist() == [0, 0] and calls[0][1].tolist() == [1, 1]
    torch.testing.assert_close(x, noise + 2.0)  # x_1 = x_0 + (1 - 0)·u: towards data with a plus sign
    assert mf.nfe(1) == 1 and mf.nfe(4) == 4 and mf.nfe(1, cfg_w=0.5) == 2
    assert FlowMatching().nfe(10, 0.7) == 20 and FlowMatching().nfe(10, 0.0, "midpoint") == 20


def test_fine_tune_from_a_cfm_checkpoint_starts_from_the_cfm_field(tmp_path):
    from speech.trainer.checkpoint import load_pretrained

    torch.manual_seed(0)
    cfm = load_flow_config("tiny/flow.yaml")["flow"].eval()
    torch.save(cfm.state_dict(), tmp_path / "cfm.pt")
    mf = _mf_model(time_scale=1000.0).eval()  # the CFM's time embedding scale
    missing, unexpected = load_pretrained(mf, tmp_path / "cfm.pt")
    assert not unexpected and missing and all(k.startswith("estimator.interval_mlp.") for k in missing)
    b = _batch(mf)
    # Before any MeanFlow step, u(z, r, t) is the CFM velocity at t: N MeanFlow steps == N linear Euler steps.
    mu, mask = cfm.encoder(b["speech_token"], b["speech_token_len"])
    noise = torch.randn_like(mu) * mask[:, None, :]
    spk = cfm.speaker_condition(None, b["ref_audio"], b["ref_audio_len"])
    conds = {"mu": mu, "spk": spk, "cond": torch.zeros_like(mu)}
    with torch.no_grad():
        a = mf.matching.sample(mf.estimator, noise, mask, conds, n_steps=4)
        c = cfm.matching.sample(cfm.estimator, noise, mask, conds, n_steps=4, cfg_w=0.0, schedule="linear")
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
