"""The frame-rate encoder/decoder (ConvNeXt + inverse STFT) against slow references."""

from __future__ import annotations

import pytest
import torch

from dac_vae.frame_rate import FrameDecoder, FrameEncoder, ISTFTHead
from dac_vae.model import DACVAE

from .conftest import speech_like


def _reference_stft(wav: torch.Tensor, hop: int, n_fft: int) -> torch.Tensor:
    """Hann-windowed frames centred on each hop block, by a plain loop: ``[T, n_fft/2 + 1]``."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    pad = (n_fft - hop) // 2
    padded = torch.nn.functional.pad(wav.double(), (pad, pad))
    frames = [torch.fft.rfft(padded[t * hop : t * hop + n_fft] * window) for t in range(wav.numel() // hop)]
    return torch.stack(frames)


@pytest.mark.parametrize("hop,subframes", [(480, 1), (320, 1), (480, 2), (480, 4)])
def test_istft_inverts_the_block_centred_stft(hop, subframes):
    head = ISTFTHead(8, hop, subframes=subframes).double()
    frame_hop = hop // subframes
    wav = speech_like(hop * 12, seed=1).double()
    spec = _reference_stft(wav, frame_hop, head.n_fft).unsqueeze(0)
    assert spec.shape[1] == 12 * subframes
    torch.testing.assert_close(head.analysis(wav.unsqueeze(0)).to(spec.dtype), spec, atol=1e-4, rtol=1e-4)
    out = head.istft(spec)[0]
    assert out.shape == wav.shape
    torch.testing.assert_close(out, wav, atol=1e-6, rtol=0)  # the window buffer is fp32


def test_subframes_split_each_latent_frame_into_consecutive_stft_frames():
    """Row ``t`` of the projection holds STFT frames ``t * r .. t * r + r - 1`` (each: F log-magnitudes
    then F phases), and the phase reference advances by the STFT frame hop."""
    head = ISTFTHead(3, 480, n_fft=960, subframes=2, phase_advance=True)
    x = torch.randn(1, 3, 5)
    log_mag, phase = head.frames(x, frame_offset=2)
    proj = head.proj(x.transpose(1, 2))[0]  # [T, 2 * (2F)]
    f = head.n_freq
    for t in range(5):
        for r in range(2):
            row = proj[t, r * 2 * f : (r + 1) * 2 * f]
            torch.testing.assert_close(log_mag[0, 2 * t + r], row[:f].clamp(max=head.log_max_magnitude))
            k = torch.arange(f)
            ref = 2 * torch.pi * ((k * (2 * (t + 2) + r) * 240) % 960) / 960
            torch.testing.assert_close(phase[0, 2 * t + r], row[f:] + ref)
    with pytest.raises(ValueError, match="divide the hop"):
        ISTFTHead(3, 480, subframes=7)


def test_istft_of_a_padded_item_equals_the_item_alone():
    head = ISTFTHead(8, 480).double()
    spec = torch.randn(2, 10, head.n_freq, dtype=torch.complex128)
    mask = torch.arange(10).unsqueeze(0) < torch.tensor([[10], [6]])
    batched = head.istft(spec * mask.unsqueeze(-1), mask)
    alone = head.istft(spec[1:, :6])
    torch.testing.assert_close(batched[1, : 6 * 480], alone[0])
    assert batched[1, 6 * 480 :].abs().max() == 0


@pytest.mark.parametrize("strides", [(2, 3, 4, 4, 5), (2, 4, 5, 8)])
def test_frame_codec_lengths_and_batch_equals_alone(strides):
    torch.manual_seed(0)
    hop = 1
    for s in strides:
        hop *= s
    codec = DACVAE(
        FrameEncoder(strides, dim=32, intermediate_dim=64, num_layers=2),
        FrameDecoder(strides, latent_dim=16, dim=32, intermediate_dim=64, num_layers=2),
        latent_dim=16,
        token_rate=25,
    ).eval()
    lengths = [hop * 7 + 13, hop * 3 - 1, hop * 5]
    wavs = [speech_like(n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    audio_len = torch.tensor(lengths)
    mu, logs, latent_len = codec.encode(batch, audio_len)
    assert latent_len.tolist() == [-(-n // hop) for n in lengths]
    decoded = codec.decode(mu, latent_len)
    assert decoded.shape[-1] == mu.shape[-1] * hop
    for i, wav in enumerate(wavs):
        mu_i, _, len_i = codec.encode(wav.unsqueeze(0))
        torch.testing.assert_close(mu[i, :, : len_i[0]], mu_i[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(decoded[i, : len_i[0] * hop], codec.decode(mu_i)[0], atol=1e-5, rtol=1e-5)
        assert not decoded[i, len_i[0] * hop :].any()


@pytest.mark.parametrize("subframes,n_fft", [(1, None), (2, 960), (4, 1440)])
def test_decoder_receptive_field_is_bounded_by_context_frames(subframes, n_fft):
    torch.manual_seed(0)
    dec = FrameDecoder(latent_dim=8, dim=16, intermediate_dim=32, num_layers=3, subframes=subframes, n_fft=n_fft).eval()
    z = torch.randn(1, 8, 60)
    k = 30
    z2 = z.clone()
    z2[:, :, k] += 1.0
    diff = (dec(z) - dec(z2))[0].abs()
    ctx, hop = dec.context_frames(), dec.hop
    changed = torch.nonzero(diff > 0).squeeze(1)
    assert changed.numel() > 0
    assert changed.min() >= (k - ctx) * hop and changed.max() < (k + ctx + 1) * hop
    # and the bound is not loose by more than one frame on either side
    assert changed.min() < (k - ctx + 1) * hop + hop and changed.max() >= (k + ctx) * hop - hop


def test_frame_decoder_clamps_only_in_eval():
    dec = FrameDecoder(latent_dim=4, dim=8, intermediate_dim=16, num_layers=1)
    with torch.no_grad():
        dec.head.proj.bias.fill_(3.0)  # magnitudes e^3 per bin: far outside [-1, 1]
    z = torch.zeros(1, 4, 6)
    assert dec.train()(z).abs().max() > 1.0
    assert dec.eval()(z).abs().max() <= 1.0


def test_kl_warmup_ramps_the_kl_weight():
    codec = DACVAE(
        FrameEncoder(dim=16, intermediate_dim=32, num_layers=1),
        FrameDecoder(latent_dim=8, dim=16, intermediate_dim=32, num_layers=1),
        latent_dim=8,
        kl_warmup_steps=100,
        loss_weights={"kl": 0.5, "mel": 0.0},
    )
    assert [codec.kl_scale(s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    batch = {"audio": speech_like(4800).unsqueeze(0)}
    torch.manual_seed(0)
    at_50 = codec(batch, group="generator", step=50)
    assert torch.allclose(at_50["loss"], 0.5 * 0.5 * at_50["kl"])
    assert set(codec.parameter_groups()) == {"generator"}  # no discriminator: GAN-free


@pytest.mark.parametrize("harmonic", [False, True])
def test_tiny_frame_codec_overfits_one_utterance(harmonic):
    """A learning test, with and without the pitch-excited comb: 60 Adam steps on one clip halve the
    multi-scale mel distance."""
    torch.manual_seed(0)
    codec = DACVAE(
        FrameEncoder(dim=64, intermediate_dim=128, num_layers=2, pitch_features=harmonic),
        FrameDecoder(latent_dim=16, dim=64, intermediate_dim=128, num_layers=2, harmonic=harmonic),
        latent_dim=16,
        loss_weights={"kl": 0.0, "magnitude": 1.0 if harmonic else 0.0},
    )
    batch = {"audio": speech_like(24000, seed=3).unsqueeze(0)}
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        out = codec(batch, group="generator", step=step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["mel"].item()
    codec.eval()
    with torch.no_grad():
        final = codec(batch)["mel"].item()
    assert final < 0.5 * first, (first, final)


def test_frame_spectral_losses_match_a_loop_reference():
    import math

    from dac_vae.losses import anti_wrap, frame_spectral_losses

    torch.manual_seed(0)
    b, t, f = 2, 5, 4
    log_mag, phase = torch.randn(b, t, f), 4 * torch.randn(b, t, f)
    target = torch.polar(torch.rand(b, t, f) + 0.1, 4 * torch.randn(b, t, f))
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    got = frame_spectral_losses(log_mag, phase, target, mask)

    def wrap(x: float) -> float:
        return abs(x - 2 * math.pi * round(x / (2 * math.pi)))

    cells = [(i, j, k) for i in range(b) for j in range(t) for k in range(f) if mask[i, j]]
    mag, ang = target.abs(), target.angle()
    mean_mag = sum(float(mag[c]) for c in cells) / len(cells)
    w = {c: float(mag[c]) / mean_mag for c in cells}
    magnitude = sum(abs(float(log_mag[c]) - math.log(float(mag[c]))) for c in cells) / len(cells)
    ip = sum(w[c] * wrap(float(phase[c] - ang[c])) for c in cells) / sum(w.values())
    pairs_f = [(c, (c[0], c[1], c[2] + 1)) for c in cells if c[2] + 1 < f]
    pairs_t = [(c, (c[0], c[1] + 1, c[2])) for c in cells if c[1] + 1 < t]

    def diff_term(pairs):
        num = den = 0.0
        for a, z in pairs:
            wz = w.get(z, 0.0)  # a padded neighbour has no weight
            weight = 0.5 * (w[a] + wz)
            num += weight * wrap(float((phase[z] - phase[a]) - (ang[z] - ang[a])))
            den += weight
        return num / den

    expected_phase = ip + diff_term(pairs_f) + diff_term(pairs_t)
    assert math.isclose(float(got["magnitude"]), magnitude, rel_tol=1e-5)
    assert math.isclose(float(got["phase"]), expected_phase, rel_tol=1e-5)
    assert float(anti_wrap(torch.tensor(2 * math.pi + 0.25))) == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("subframes", [1, 2])
def test_spectral_losses_reach_the_frame_decoder_and_need_one(subframes):
    from dac_vae.losses import frame_spectral_losses
    from dac_vae.model import Decoder, Encoder

    torch.manual_seed(0)
    codec = DACVAE(
        FrameEncoder(dim=16, intermediate_dim=32, num_layers=1),
        FrameDecoder(latent_dim=8, dim=16, intermediate_dim=32, num_layers=1, subframes=subframes, n_fft=960),
        latent_dim=8,
        loss_weights={"magnitude": 1.0, "phase": 1.0},
    ).eval()  # eval: the latent is the posterior mean, so the reference below sees the same frames
    codec._frame_losses_on = lambda: True
    audio = torch.stack([speech_like(4800), torch.cat([speech_like(2400, seed=3), torch.zeros(2400)])])
    audio_len = torch.tensor([4800, 2400])
    out = codec({"audio": audio, "audio_len": audio_len}, group="generator")
    assert {"magnitude", "phase"} <= set(out) and torch.isfinite(out["loss"])
    # the losses cover each item's own STFT frames only: 10 and 5 latent frames, `subframes` STFT frames each
    rec = codec.reconstruct(audio, audio_len)
    assert rec.frames[0].shape[1] == 10 * subframes
    target = codec.decoder.spectral_target(audio)
    mask = (torch.arange(10 * subframes) < torch.tensor([[10 * subframes], [5 * subframes]]))
    expected = frame_spectral_losses(*rec.frames, target, mask)
    torch.testing.assert_close(out["magnitude"], expected["magnitude"])
    torch.testing.assert_close(out["phase"], expected["phase"])
    codec.train()
    del codec._frame_losses_on
    out = codec({"audio": audio, "audio_len": audio_len}, group="generator")
    out["loss"].backward()
    assert codec.decoder.head.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="frame decoder"):
        DACVAE(Encoder(channels=4), Decoder(latent_dim=8, channels=32), latent_dim=8, loss_weights={"phase": 1.0})


def _harmonic_codec(**kw) -> DACVAE:
    return DACVAE(
        FrameEncoder(dim=32, intermediate_dim=64, num_layers=2, pitch_features=True),
        FrameDecoder(latent_dim=16, dim=32, intermediate_dim=64, num_layers=2, harmonic=True),
        latent_dim=16,
        **kw,
    )


def test_harmonic_codec_latent_channel_0_is_the_yin_pitch_and_batch_equals_alone():
    from dac_vae.pitch import fill_unvoiced, pitch_to_latent, yin

    torch.manual_seed(0)
    codec = _harmonic_codec().eval()
    lengths = [480 * 30 + 77, 480 * 18]
    wavs = [speech_like(n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    mu, logs, latent_len = codec.encode(batch, torch.tensor(lengths))
    for i, wav in enumerate(wavs):
        n = int(latent_len[i])
        padded = torch.nn.functional.pad(wav, (0, n * 480 - wav.numel())).unsqueeze(0)
        f0, aperiodicity = yin(padded, 24000, 480)
        want = pitch_to_latent(fill_unvoiced(f0, aperiodicity < codec.periodic_threshold))[0]
        torch.testing.assert_close(mu[i, 0, :n], want)
        assert torch.allclose(logs[i, 0, :n], torch.tensor(0.02).log())
        assert not mu[i, :, n:].any()
        mu_i, _, _ = codec.encode(wav.unsqueeze(0))
        torch.testing.assert_close(mu[i, :, :n], mu_i[0], atol=1e-5, rtol=1e-5)
        # the decoder reads that pitch back
        torch.testing.assert_close(codec.pitch(mu_i)[0], fill_unvoiced(f0, aperiodicity < 0.3)[0], rtol=1e-4, atol=0)
    decoded = codec.decode(mu, latent_len)
    alone = codec.decode(mu[1:, :, : latent_len[1]])
    torch.testing.assert_close(decoded[1, : latent_len[1] * 480], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder_f0_max", [500.0, 400.0])
def test_harmonic_codec_runs_yin_once_when_the_encoder_reads_the_same_range(monkeypatch, encoder_f0_max):
    import dac_vae.frame_rate as frame_rate
    import dac_vae.model as model

    torch.manual_seed(0)
    codec = _harmonic_codec().eval()
    codec.encoder.f0_range = (60.0, encoder_f0_max)
    wav = speech_like(480 * 20, seed=3).unsqueeze(0)
    calls = []

    def counting(original):
        return lambda *a, **k: calls.append(k["f0_max"]) or original(*a, **k)

    monkeypatch.setattr(model, "yin", counting(model.yin))
    monkeypatch.setattr(frame_rate, "yin", counting(frame_rate.yin))
    mu, _, _ = codec.encode(wav, torch.tensor([wav.shape[-1]]))
    assert calls == ([500.0] if encoder_f0_max == 500.0 else [500.0, 400.0])
    if encoder_f0_max == 500.0:  # the shared pitch is what the encoder would have computed itself
        own = codec.encoder(wav, torch.tensor([20]))
        assert torch.equal(own, codec.encoder(wav, torch.tensor([20]), pitch=codec._yin(wav)))


def test_harmonic_decoder_sounds_at_the_latent_pitch():
    """With the comb's gain dominant, the decoded fundamental is the pitch in channel 0."""
    from dac_vae.pitch import pitch_to_latent

    dec = FrameDecoder(latent_dim=8, dim=16, intermediate_dim=32, num_layers=1, harmonic=True).eval()
    with torch.no_grad():
        dec.head.proj.bias[: dec.head.n_freq].fill_(-12.0)  # the free frames: silent
        dec.gain_proj.weight.zero_()
        dec.gain_proj.bias.copy_(-1.0 - 0.05 * torch.arange(dec.head.n_freq))  # a falling envelope
    for f0 in (110.0, 230.0):
        z = torch.zeros(1, 8, 50)
        z[:, 0] = pitch_to_latent(torch.tensor(f0))
        audio = dec(z)[0, 480 * 5 : -480 * 5].double()
        spectrum = torch.fft.rfft(audio * torch.hann_window(audio.numel(), dtype=torch.float64)).abs()
        peak = torch.fft.rfftfreq(audio.numel(), 1 / 24000)[spectrum.argmax()]
        assert abs(float(peak) - f0) < 3.0, (f0, peak)


def test_harmonic_codec_kl_leaves_out_the_pitch_channel_and_refuses_latent_norm():
    torch.manual_seed(0)
    codec = _harmonic_codec(loss_weights={"kl": 1.0, "mel": 0.0})
    batch = {"audio": speech_like(9600).unsqueeze(0)}
    rec = codec.eval().reconstruct(batch["audio"])
    from dac_vae.losses import gaussian_kl

    torch.manual_seed(1)
    out = codec(batch)
    torch.testing.assert_close(out["kl"], gaussian_kl(rec.mu[:, 1:], rec.logs[:, 1:], None))
    with pytest.raises(ValueError, match="latent_norm"):
        _harmonic_codec(latent_norm=True)
