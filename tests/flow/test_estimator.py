"""Estimators: shapes, padding-invariance (batched = one by one), conditions, gradients."""

from __future__ import annotations

import pytest
import torch

from speech.flow.estimator import DiT, UNet1D


def _make(kind, D=6, spk=5, cond=None):
    if kind == "unet1":
        return UNet1D(
            D, spk_channels=spk, cond_channels=cond, channels=[12], n_blocks=1, num_mid_blocks=1, heads=2, head_dim=4
        )
    if kind == "unet3":  # three resolutions: odd lengths exercise down/up-sampling crops
        return UNet1D(
            D,
            spk_channels=spk,
            cond_channels=cond,
            channels=[8, 12, 16],
            n_blocks=1,
            num_mid_blocks=1,
            heads=2,
            head_dim=4,
        )
    return DiT(D, spk_channels=spk, cond_channels=cond, dim=16, depth=2, heads=2, head_dim=8, conv_kernel=5)


def _randomise(module):
    # DiT is zero-initialised (adaLN-zero): give it weights so outputs depend on inputs.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


KINDS = ["unet1", "unet3", "dit"]


@pytest.mark.parametrize("kind", KINDS)
def test_padded_batch_equals_items_alone(kind):
    est = _randomise(_make(kind)).eval()
    D, T = 6, 13
    lengths = [13, 7, 4, 10]
    B = len(lengths)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    x, mu, cond = (torch.randn(B, D, T) for _ in range(3))
    spk, t = torch.randn(B, 5), torch.rand(B)
    with torch.no_grad():
        out = est(x, mask, mu=mu, t=t, spk=spk, cond=cond)
        assert out.shape == (B, D, T)
        assert (out[~mask[:, None, :].expand_as(out)] == 0).all()
        for b, n in enumerate(lengths):
            alone = est(
                x[b : b + 1, :, :n],
                mask[b : b + 1, :n],
                mu=mu[b : b + 1, :, :n],
                t=t[b : b + 1],
                spk=spk[b : b + 1],
                cond=cond[b : b + 1, :, :n],
            )
            assert torch.allclose(out[b, :, :n], alone[0], atol=1e-5), (kind, b)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_conditions_read_as_zeros_and_all_inputs_matter(kind):
    est = _randomise(_make(kind)).eval()
    B, D, T = 2, 6, 8
    mask = torch.ones(B, T, dtype=torch.bool)
    x, mu, cond, spk, t = (
        torch.randn(B, D, T),
        torch.randn(B, D, T),
        torch.randn(B, D, T),
        torch.randn(B, 5),
        torch.rand(B),
    )
    with torch.no_grad():
        a = est(x, mask, mu=mu, t=t, spk=None, cond=None)
        b = est(x, mask, mu=mu, t=t, spk=torch.zeros(B, 5), cond=torch.zeros(B, D, T))
        assert torch.equal(a, b)
        base = est(x, mask, mu=mu, t=t, spk=spk, cond=cond)
        for name, changed in (
            ("x", dict(x=x + 1)),
            ("mu", dict(mu=mu + 1)),
            ("t", dict(t=t * 0.5)),
            ("spk", dict(spk=-spk)),
            ("cond", dict(cond=cond + 1)),
        ):
            kw = dict(x=x, mu=mu, t=t, spk=spk, cond=cond)
            kw.update(changed)
            assert not torch.allclose(est(kw.pop("x"), mask, **kw), base, atol=1e-5), name


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    est = _randomise(_make(kind)).train()
    B, D, T = 2, 6, 9
    mask = torch.arange(T)[None] < torch.tensor([9, 5])[:, None]
    out = est(
        torch.randn(B, D, T),
        mask,
        mu=torch.randn(B, D, T),
        t=torch.rand(B),
        spk=torch.randn(B, 5),
        cond=torch.randn(B, D, T),
    )
    out.square().sum().backward()
    missing = [n for n, p in est.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_channel_layout_without_speaker_or_prompt():
    est = UNet1D(
        4,
        mu_channels=3,
        spk_channels=0,
        cond_channels=0,
        channels=[8],
        n_blocks=1,
        num_mid_blocks=0,
        heads=1,
        head_dim=4,
    )
    assert est.total_in == 7
    out = est(torch.randn(1, 4, 5), torch.ones(1, 5, dtype=torch.bool), mu=torch.randn(1, 3, 5), t=torch.rand(1))
    assert out.shape == (1, 4, 5)


def test_dit_starts_at_zero_velocity():
    est = _make("dit")
    out = est(
        torch.randn(2, 6, 7),
        torch.ones(2, 7, dtype=torch.bool),
        mu=torch.randn(2, 6, 7),
        t=torch.rand(2),
        spk=torch.randn(2, 5),
    )
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("kind", ["unet1", "unet3", "dit"])
def test_causal_streaming_never_looks_into_a_later_chunk(kind):
    D, T, chunk = 6, 24, 8
    kw = dict(spk_channels=5, chunk_size=chunk, causal=True)
    if kind == "dit":
        est = DiT(D, dim=16, depth=2, heads=2, head_dim=8, conv_kernel=5, **kw)
    else:
        est = UNet1D(
            D,
            channels=[12] if kind == "unet1" else [8, 12, 16],
            n_blocks=1,
            num_mid_blocks=1,
            heads=2,
            head_dim=4,
            **kw,
        )
    est = _randomise(est).eval()
    mask = torch.ones(2, T, dtype=torch.bool)
    x, mu, cond, spk, t = (
        torch.randn(2, D, T),
        torch.randn(2, D, T),
        torch.randn(2, D, T),
        torch.randn(2, 5),
        torch.rand(2),
    )
    later = lambda a: torch.cat([a[..., : 2 * chunk], a[..., 2 * chunk :] + 1], dim=-1)  # noqa: E731
    with torch.no_grad():
        base = est(x, mask, mu=mu, t=t, spk=spk, cond=cond, streaming=True)
        moved = est(later(x), mask, mu=later(mu), t=t, spk=spk, cond=later(cond), streaming=True)
        full = est(later(x), mask, mu=later(mu), t=t, spk=spk, cond=later(cond))
        base_full = est(x, mask, mu=mu, t=t, spk=spk, cond=cond)
    assert torch.allclose(base[..., : 2 * chunk], moved[..., : 2 * chunk], atol=1e-6)
    assert not torch.allclose(base[..., 2 * chunk :], moved[..., 2 * chunk :], atol=1e-4)
    assert not torch.allclose(base_full[..., : 2 * chunk], full[..., : 2 * chunk], atol=1e-4)  # full attention sees it
    with pytest.raises(ValueError, match="chunk_size"):
        UNet1D(D, channels=[8, 12, 16], chunk_size=10, causal=True)
