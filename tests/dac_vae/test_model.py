"""Encoder/decoder geometry, posterior parameterisation and the latent options of dac_vae.model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx

from dac_vae.layers import SNAKE_EPS, Snake1d, _SnakeFunction
from dac_vae.model import DACVAE, Decoder, Encoder, GaussianPosterior


def test_snake_backward_matches_autograd_of_the_formula():
    x = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    alpha = (torch.rand(1, 3, 1, dtype=torch.float64) + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(_SnakeFunction.apply, (x, alpha))
    reference = x + (alpha + SNAKE_EPS).reciprocal() * torch.sin(alpha * x).pow(2)
    torch.testing.assert_close(_SnakeFunction.apply(x, alpha), reference)
    assert not Snake1d(4)(torch.zeros(1, 4, 5)).any()  # snake(0) = 0 keeps padding at zero


def test_strides_give_the_documented_hops(tiny_codec):
    assert tiny_codec.hop in (480, 320)
    expected = {480: (80, 2, [2, 3, 4, 4, 5]), 320: (64, 3, [2, 4, 5, 8])}[tiny_codec.hop]
    assert (tiny_codec.latent_dim, tiny_codec.latent_ratio, tiny_codec.encoder.strides) == expected
    assert tiny_codec.decoder.strides == list(reversed(expected[2]))


@pytest.mark.parametrize("training", [False, True])
def test_latent_and_decoded_lengths_for_random_n(tiny_codec, training):
    tiny_codec.train(training)
    hop = tiny_codec.hop
    gen = torch.Generator().manual_seed(1)
    sizes = [1, hop - 1, hop, hop + 1] + torch.randint(2, 8 * hop, (4,), generator=gen).tolist()
    for n in sizes:
        audio = 0.1 * torch.randn(1, n)
        with torch.no_grad():
            mu, logs, latent_len = tiny_codec.encode(audio)
            out = tiny_codec.decode(mu, latent_len, length=n)
        t = math.ceil(n / hop)
        assert mu.shape == logs.shape == (1, tiny_codec.latent_dim, t), n
        assert latent_len.tolist() == [t]
        assert out.shape == (1, n), n
        assert tiny_codec.decode(mu).shape == (1, t * hop)


def test_batched_encode_decode_equals_one_by_one(tiny_codec):
    tiny_codec.eval()
    hop = tiny_codec.hop
    lengths = torch.tensor([7 * hop + 13, 3 * hop, 5 * hop - 1, 1])
    audio = 0.1 * torch.randn(4, int(lengths.max()))
    audio[1, 3 * hop :] = 5.0  # garbage in the padding must not leak into item 1
    with torch.no_grad():
        mu, logs, latent_len = tiny_codec.encode(audio, lengths)
        batched = tiny_codec.decode(mu, latent_len)
        for i, n in enumerate(lengths.tolist()):
            mu1, logs1, len1 = tiny_codec.encode(audio[i : i + 1, :n])
            t = int(len1)
            assert int(latent_len[i]) == t == math.ceil(n / hop)
            torch.testing.assert_close(mu[i, :, :t], mu1[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(logs[i, :, :t], logs1[0], atol=1e-5, rtol=1e-4)
            assert not mu[i, :, t:].any()  # padded frames are zero
            single = tiny_codec.decode(mu1, len1)
            torch.testing.assert_close(batched[i, : t * hop], single[0], atol=1e-5, rtol=1e-4)
            assert not batched[i, t * hop :].any()


def test_decoder_ignores_frames_past_latent_len(tiny_codec_2x):
    codec = tiny_codec_2x.eval()
    z = torch.randn(1, 80, 6)
    z_garbage = z.clone()
    z_garbage[..., 4:] = 100.0
    with torch.no_grad():
        a = codec.decode(z, torch.tensor([4]))
        b = codec.decode(z_garbage, torch.tensor([4]))
        c = codec.decode(z[..., :4])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:, : 4 * 480], c, atol=1e-5, rtol=1e-4)


def test_no_activation_after_the_latent_heads():
    """The module graph from each head to the outputs holds only the log-std clamp and the mask."""
    posterior = GaussianPosterior(16, 8)
    graph = torch.fx.symbolic_trace(posterior).graph
    allowed = {("call_method", "clamp"), ("call_function", "mul"), ("output", "output")}
    heads = [n for n in graph.nodes if n.op == "call_module"]
    assert sorted(n.target for n in heads) == ["logs_head", "mu_head"]
    for head in heads:
        assert type(posterior.get_submodule(head.target)).__name__ == "ParametrizedConv1d"
        frontier, seen = list(head.users), set()
        while frontier:
            node = frontier.pop()
            if node in seen:
                continue
            seen.add(node)
            name = getattr(node.target, "__name__", node.target)
            assert (node.op, name) in allowed, f"{node.op} {name} after {head.target}"
            if node.op == "call_method":
                assert head.target == "logs_head"  # the clamp is on logs only
            frontier.extend(node.users)
    # The heads are bare convolutions: nothing inside them but the weight-normed conv.
    assert not [
        m
        for m in posterior.mu_head.modules()
        if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.Tanh, Snake1d))
    ]


def test_encode_returns_the_raw_head_output(tiny_codec_2x):
    """Numerically: mu is exactly the mu head's output (unbounded), logs its clamp."""
    codec = tiny_codec_2x.eval()
    captured = {}
    codec.posterior.mu_head.register_forward_hook(lambda m, i, o: captured.__setitem__("mu", o))
    codec.posterior.logs_head.register_forward_hook(lambda m, i, o: captured.__setitem__("logs", o))
    with torch.no_grad():
        codec.posterior.mu_head.bias.fill_(7.5)  # far outside any squashing range
        mu, logs, _ = codec.encode(0.1 * torch.randn(1, 4800))
    assert torch.equal(mu, captured["mu"])
    assert torch.equal(logs, captured["logs"].clamp(codec.posterior.logs_min, codec.posterior.logs_max))
    assert mu.max() > 5.0


def test_training_latent_uses_logs_as_log_std(tiny_codec_2x):
    codec = tiny_codec_2x.train()
    mu = torch.full((1, 4, 200_000), 1.5)
    logs = torch.full_like(mu, math.log(0.25))
    z = codec.sample_latent(mu, logs)
    assert abs(float(z.mean()) - 1.5) < 0.01
    assert abs(float(z.std()) - 0.25) < 0.005  # exp(logs) is the std, not the variance


def test_sigma_vae_noise_is_uniform_per_item(tiny_codec_2x):
    codec = tiny_codec_2x
    codec.sigma_max = 0.5
    mu = torch.zeros(4000, 2, 500)
    logs = torch.full_like(mu, -30.0)  # no posterior noise: what is left is the sigma-VAE noise
    z = codec.sample_latent(mu, logs)
    sigma = z.std(dim=(1, 2))  # one sigma per item, ~U(0, 0.5)
    assert float(sigma.max()) < 0.55
    assert abs(float(sigma.mean()) - 0.25) < 0.01  # mean of U(0, 0.5)
    assert abs(float(sigma.std()) - 0.5 / math.sqrt(12)) < 0.01  # its std
    codec.sigma_max = 0.0
    z0 = codec.sample_latent(mu, logs)
    assert float(z0.abs().max()) < 1e-10


def test_latent_norm_makes_decode_invariant_to_frame_affine_maps():
    torch.manual_seed(0)
    codec = DACVAE(Encoder([2, 4], 4), Decoder([2, 4], 6, 16), latent_dim=6, token_rate=3000, latent_norm=True).eval()
    z = torch.randn(2, 6, 5)
    scale = torch.rand(2, 1, 5) + 0.5
    shift = torch.randn(2, 1, 5)
    with torch.no_grad():
        torch.testing.assert_close(codec.decode(z), codec.decode(z * scale + shift), atol=2e-5, rtol=1e-4)
    codec.latent_norm = False
    with torch.no_grad():
        assert not torch.allclose(codec.decode(z), codec.decode(z * scale + shift), atol=1e-3)


def test_config_mistakes_fail_fast():
    with pytest.raises(ValueError, match="hop"):
        DACVAE(Encoder([2, 3]), Decoder([2, 4], 8, 16), latent_dim=8, token_rate=25)
    with pytest.raises(ValueError, match="latent_dim"):
        DACVAE(Encoder([2, 4]), Decoder([2, 4], 8, 16), latent_dim=16, token_rate=3000)
    with pytest.raises(ValueError, match="token_rate"):
        DACVAE(Encoder([2, 3, 4, 4, 5], 2), Decoder([2, 3, 4, 4, 5], 8, 32), latent_dim=8, token_rate=30)
    with pytest.raises(ValueError, match="loss_weights"):
        DACVAE(Encoder([2, 4], 2), Decoder([2, 4], 8, 16), latent_dim=8, token_rate=3000, loss_weights={"mle": 1.0})
    with pytest.raises(ValueError, match="halved"):
        Decoder([2, 3, 4, 4, 5], 8, 100)


def test_latent_rates_below_the_token_rate_are_fractions_and_name_their_files():
    from dac_vae.latents import latent_suffix, stats_filename
    from dac_vae.model import latent_token_ratio

    assert [latent_token_ratio(r, 25) for r in (50, 75, 25, 12.5, 6.25)] == [2, 3, 1, 0.5, 0.25]
    assert latent_token_ratio(30, 25) is None and latent_token_ratio(10, 25) is None
    codec = DACVAE(Encoder([2, 4], 2), Decoder([2, 4], 8, 16), latent_dim=8, sample_rate=100, token_rate=25)
    assert (codec.latent_rate, codec.latent_ratio) == (12.5, 0.5)
    assert [latent_suffix(r) for r in (2, 1, 0.5)] == ["_latent2x.pt", "_latent1x.pt", "_latent0.5x.pt"]
    assert stats_filename(0.5) == "latent0.5x_stats.json"
