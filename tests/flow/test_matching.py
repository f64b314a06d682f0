"""The flow-matching objective: path, masked loss, CFG dropout, contrastive term, guidance."""

from __future__ import annotations

import math

import pytest
import torch

from speech.config import ConfigError
from speech.flow import matching as matching_mod
from speech.flow.assignment import NoiseAssignment
from speech.flow.estimator import UNet1D
from speech.flow.matching import FlowMatching, derangement, masked_mse
from speech.flow.timesteps import CosineTime, LogitNormalTime, TimeSampler, UniformTime
from speech.utils.mask import lengths_to_mask


class FixedNoise(NoiseAssignment):
    def __init__(self, x0: torch.Tensor):
        self.x0 = x0

    def __call__(self, x1, mask, generator=None):
        return self.x0.clone()


class FixedTime(TimeSampler):
    def __init__(self, t: torch.Tensor):
        self.t = t

    def __call__(self, n, device, generator=None):
        return self.t.clone()


class Recorder:
    """A deterministic stand-in estimator that remembers what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, mask, t, mu=None, spk=None, cond=None):
        self.calls.append(dict(x=x, mask=mask, t=t, mu=mu, spk=spk, cond=cond))
        out = 0.5 * x + torch.sin(x) * t[:, None, None]
        if mu is not None:
            out = out + mu
        return out * mask[:, None, :]


def _batch(B=4, D=5, T=9, lengths=(9, 6, 3, 7)):
    x1 = torch.randn(B, D, T)
    lengths = torch.tensor(lengths)
    mask = lengths_to_mask(lengths, T)
    return x1 * mask[:, None, :], mask, lengths


def test_path_endpoints_and_velocity():
    fm = FlowMatching(sigma_min=1e-4)
    x0, x1 = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    zero, one = torch.zeros(3), torch.ones(3)
    assert torch.allclose(fm.path(x0, x1, zero)[0], x0)
    assert torch.allclose(fm.path(x0, x1, one)[0], x1 + 1e-4 * x0)
    # u is the time derivative of the (linear) path
    t, h = torch.full((3,), 0.3), 1e-2
    x_a, u = fm.path(x0, x1, t)
    x_b, _ = fm.path(x0, x1, t + h)
    assert torch.allclose((x_b - x_a) / h, u, atol=1e-4)


def test_masked_mse_equals_per_item_loop_and_ignores_padding():
    v, u = torch.randn(4, 5, 9), torch.randn(4, 5, 9)
    _, mask, lengths = _batch()
    total, frames = 0.0, 0
    for b in range(4):
        n = int(lengths[b])
        total += ((v[b, :, :n] - u[b, :, :n]) ** 2).sum().item()
        frames += n
    ref = total / (frames * 5)
    assert masked_mse(v, u, mask).item() == pytest.approx(ref, rel=1e-6)
    v2 = v.clone()
    v2[~mask[:, None, :].expand_as(v2)] = 1e6
    assert masked_mse(v2, u, mask).item() == pytest.approx(ref, rel=1e-6)


def test_loss_equals_reference_with_known_noise_and_time():
    x1, mask, lengths = _batch()
    x0 = torch.randn_like(x1)
    t = torch.tensor([0.1, 0.5, 0.9, 0.3])
    loss_mask = mask.clone()
    loss_mask[0, :2] = False  # e.g. prompt frames
    mu = torch.randn_like(x1)
    fm = FlowMatching(sigma_min=1e-3, time_sampler=FixedTime(t), immiscible=FixedNoise(x0), cfg_dropout=0.0)
    est = Recorder()
    out = fm.loss(est, x1, mask, {"mu": mu}, loss_mask=loss_mask)
    total, frames = 0.0, 0
    for b in range(4):
        idx = loss_mask[b].nonzero().flatten()
        xt = (1 - (1 - 1e-3) * t[b]) * x0[b] + t[b] * x1[b]
        v = 0.5 * xt + torch.sin(xt) * t[b] + mu[b]
        u = x1[b] - (1 - 1e-3) * x0[b]
        total += ((v - u)[:, idx] ** 2).sum().item()
        frames += len(idx)
    assert out["loss"].item() == pytest.approx(total / (frames * 5), rel=1e-5)
    assert out["flow_mse"].item() == out["loss"].item()


def test_loss_ignores_padded_frames():
    x1, mask, _ = _batch()
    fm = FlowMatching(cfg_dropout=0.2, contrastive_weight=0.05)
    est = Recorder()
    a = fm.loss(est, x1, mask, {"mu": x1.clone()}, generator=torch.Generator().manual_seed(3))
    garbage = x1 + 100.0 * (~mask)[:, None, :]
    b = fm.loss(est, garbage, mask, {"mu": x1.clone()}, generator=torch.Generator().manual_seed(3))
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6)


def test_derangement_has_no_fixed_points():
    gen = torch.Generator().manual_seed(0)
    for n in range(2, 9):
        for _ in range(30):
            p = derangement(n, generator=gen)
            assert sorted(p.tolist()) == list(range(n))
            assert not (p == torch.arange(n)).any()
    with pytest.raises(ValueError):
        derangement(1)


def test_contrastive_term_equals_reference_and_never_uses_self(monkeypatch):
    x1, mask, lengths = _batch()
    x0 = torch.randn_like(x1)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    seen = []

    def recording_derangement(n, device="cpu", generator=None):
        p = derangement(n, device, generator)
        seen.append(p)
        return p

    monkeypatch.setattr(matching_mod, "derangement", recording_derangement)
    lam = 0.05
    fm = FlowMatching(
        sigma_min=0.0, time_sampler=FixedTime(t), immiscible=FixedNoise(x0), cfg_dropout=0.0, contrastive_weight=lam
    )
    out = fm.loss(Recorder(), x1, mask, {})
    (perm,) = seen
    assert not (perm == torch.arange(4)).any()
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    v = (0.5 * xt + torch.sin(xt) * t[:, None, None]) * mask[:, None, :]
    u = x1 - x0
    pos = neg = 0.0
    n_pos = n_neg = 0
    for b in range(4):
        j = int(perm[b])
        n, m = int(lengths[b]), min(int(lengths[b]), int(lengths[j]))
        pos += ((v[b, :, :n] - u[b, :, :n]) ** 2).sum().item()
        neg += ((v[b, :, :m] - u[j, :, :m]) ** 2).sum().item()
        n_pos, n_neg = n_pos + n, n_neg + m
    pos, neg = pos / (5 * n_pos), neg / (5 * n_neg)
    assert out["flow_mse"].item() == pytest.approx(pos, rel=1e-5)
    assert out["contrastive"].item() == pytest.approx(neg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(pos - lam * neg, rel=1e-5)


def test_cfg_dropout_drops_all_conditions_together_and_rescores_prompt_frames():
    B, D, T = 64, 3, 5
    x1 = torch.randn(B, D, T)
    mask = torch.ones(B, T, dtype=torch.bool)
    conds = {"mu": torch.randn(B, D, T) + 3, "spk": torch.randn(B, 7) + 3, "cond": torch.randn(B, D, T) + 3}
    loss_mask = mask.clone()
    loss_mask[:, :2] = False
    captured = {}

    def fake_mse(v, u, m):
        captured.setdefault("masks", []).append(m)
        return (v - u).square().mean()

    fm = FlowMatching(cfg_dropout=0.5)
    est = Recorder()
    orig = matching_mod.masked_mse
    matching_mod.masked_mse = fake_mse
    try:
        fm.loss(est, x1, mask, conds, loss_mask=loss_mask, generator=torch.Generator().manual_seed(1))
    finally:
        matching_mod.masked_mse = orig
    call = est.calls[0]
    kept = torch.stack([(call[k].flatten(1) == conds[k].flatten(1)).all(1) for k in conds])  # [3, B]
    dropped = torch.stack([(call[k].flatten(1) == 0).all(1) for k in conds])
    assert (kept.all(0) | dropped.all(0)).all(), "conditions must be dropped together"
    assert 10 < int(dropped.all(0).sum()) < 54
    m = captured["masks"][0]
    assert (m[kept.all(0)] == loss_mask[kept.all(0)]).all()
    assert m[dropped.all(0)].all(), "dropped items are scored on every valid frame"


def _tiny_unet(D=4, spk=3):
    return UNet1D(D, spk_channels=spk, channels=[8, 12], n_blocks=1, num_mid_blocks=1, heads=2, head_dim=4).eval()


def _guidance_case():
    """A tiny estimator, its inputs, and its raw outputs with the conditions and with all of them zeroed."""
    torch.manual_seed(0)
    est = _tiny_unet()
    B, D, T = 3, 4, 11
    mask = lengths_to_mask(torch.tensor([11, 7, 4]), T)
    x = torch.randn(B, D, T)
    t = torch.tensor([0.1, 0.5, 0.9])
    conds = {"mu": torch.randn(B, D, T), "spk": torch.randn(B, 3), "cond": torch.randn(B, D, T)}
    with torch.no_grad():
        out_c = est(x, mask, t=t, **conds)
        out_u = est(x, mask, t=t, mu=torch.zeros(B, D, T), spk=torch.zeros(B, 3), cond=torch.zeros(B, D, T))
    return est, mask, x, t, conds, out_c, out_u


def test_cfg_w0_equals_conditional_path_and_guidance_formula():
    est, mask, x, t, conds, v_c, v_u = _guidance_case()
    fm = FlowMatching()
    with torch.no_grad():
        guided0 = fm.guided_velocity(est, x, mask, t, conds, 0.0)  # the batch-of-2 path
        guided = fm.guided_velocity(est, x, mask, t, conds, 0.7)
        direct0 = fm.velocity(est, x, mask, t, conds, 0.0)
    assert torch.allclose(guided0, v_c, atol=1e-5)
    assert torch.equal(direct0, v_c)
    assert torch.allclose(guided, 1.7 * v_c - 0.7 * v_u, atol=1e-5)
    assert not torch.allclose(v_c, v_u, atol=1e-3)


def test_sample_keeps_padding_zero_and_is_seed_free():
    est = _tiny_unet()
    B, D, T = 2, 4, 9
    mask = lengths_to_mask(torch.tensor([9, 5]), T)
    noise = torch.randn(B, D, T)
    conds = {"mu": torch.randn(B, D, T), "spk": torch.randn(B, 3), "cond": None}
    fm = FlowMatching(n_steps=4)
    with torch.no_grad():
        a = fm.sample(est, noise, mask, conds)
        b = fm.sample(est, noise, mask, conds)
    assert torch.equal(a, b)
    assert (a[1, :, 5:] == 0).all()


def test_time_samplers_follow_their_distributions():
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    u = UniformTime()(n, torch.device("cpu"), gen)
    assert 0 <= u.min() and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.005)
    ln = LogitNormalTime(mean=0.5, std=1.0)(n, torch.device("cpu"), gen)
    assert ln.median().item() == pytest.approx(1 / (1 + math.exp(-0.5)), abs=0.005)
    inv = LogitNormalTime(mean=0.5, std=1.0).transform(torch.rand(n, generator=gen))
    assert inv.median().item() == pytest.approx(ln.median().item(), abs=0.005)
    c = CosineTime()(n, torch.device("cpu"), gen)
    assert c.mean().item() == pytest.approx(1 - 2 / math.pi, abs=0.005)  # E[1 - cos(U·π/2)]


def test_data_prediction_is_the_velocity_of_the_predicted_data():
    """prediction=data: the estimator's x̂1 becomes ``(x̂1 - s·x_t) / (1 - s·t)``; the true x1 gives the true u."""
    x1, mask, _ = _batch()
    x0 = torch.randn_like(x1)
    t = torch.tensor([0.0, 0.4, 0.9, 0.99])
    fm = FlowMatching(sigma_min=1e-3, prediction="data", data_clip=0.05)
    x_t, u = fm.path(x0, x1, t)
    oracle = fm.as_velocity(lambda x, m, t: x1)
    v = oracle(x_t, mask, t=t)
    s = 1 - 1e-3
    assert torch.allclose(v[:3], u[:3], atol=1e-5)  # 1 - s·t above the clip: exact
    # at t = 0.99 the denominator is clipped at 0.05: the velocity is damped, not blown up
    assert torch.allclose(v[3], (x1[3] - s * x_t[3]) / 0.05, atol=1e-5)
    # the loss is the same masked v-MSE, of the converted output
    out = FlowMatching(
        sigma_min=1e-3, prediction="data", time_sampler=FixedTime(t), immiscible=FixedNoise(x0), cfg_dropout=0.0
    ).loss(Recorder(), x1, mask, {"mu": x1})
    x1_hat = 0.5 * x_t + torch.sin(x_t) * t[:, None, None] + x1
    v_ref = (x1_hat - s * x_t) / (1 - s * t).clamp_min(0.05)[:, None, None]
    assert out["flow_mse"].item() == pytest.approx(masked_mse(v_ref, u, mask).item(), rel=1e-5)


def test_data_prediction_sampling_lands_on_the_prediction():
    """A constant data prediction c is reached exactly, whatever the noise (Euler, any grid); a velocity
    prediction of the same constant only shifts the noise by it (what an estimator that ignores x_t does)."""
    B, D, T = 2, 3, 5
    mask = torch.ones(B, T, dtype=torch.bool)
    c = torch.randn(B, D, T)
    noise = torch.randn(B, D, T)
    const = lambda x, m, t, **kw: c.expand_as(x)  # noqa: E731
    for schedule in ("cosine", "linear"):
        data = FlowMatching(sigma_min=0.0, prediction="data", n_steps=6, cfg_w=0.0, schedule=schedule)
        assert torch.allclose(data.sample(const, noise, mask, {}), c, atol=1e-5)
    vel = FlowMatching(sigma_min=0.0, n_steps=6, cfg_w=0.0).sample(const, noise, mask, {})
    assert torch.allclose(vel, noise + c, atol=1e-5)


def test_data_prediction_guidance_mixes_the_converted_velocities():
    est, mask, x, t, conds, x_c, x_u = _guidance_case()
    fm = FlowMatching(prediction="data")
    s = 1 - fm.sigma_min
    with torch.no_grad():
        guided = fm.velocity(est, x, mask, t, conds, 0.7)
        direct = fm.velocity(est, x, mask, t, conds, 0.0)
    gap = (1 - s * t)[:, None, None]
    v_c, v_u = (x_c - s * x) / gap, (x_u - s * x) / gap
    assert torch.allclose(direct, v_c, atol=1e-5)
    assert torch.allclose(guided, 1.7 * v_c - 0.7 * v_u, atol=1e-4)


def test_bad_options_fail_fast():
    with pytest.raises(ConfigError, match="time_sampler"):
        FlowMatching(time_sampler="gamma")
    with pytest.raises(ConfigError, match="immiscible"):
        FlowMatching(immiscible="hungarian")
    with pytest.raises(ConfigError, match="bad arguments"):
        FlowMatching(time_sampler="uniform", time_sampler_args={"std": 1})
    with pytest.raises(ConfigError):
        FlowMatching(solver="rk45")
    assert FlowMatching(immiscible="knn", immiscible_k=6).assignment.k == 6
    with pytest.raises(ConfigError, match="prediction"):
        FlowMatching(prediction="noise")
    with pytest.raises(ConfigError, match="data_clip"):
        FlowMatching(prediction="data", data_clip=0.0)
