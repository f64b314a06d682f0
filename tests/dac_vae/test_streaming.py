"""Chunked decoding (dac_vae.streaming) equals the whole-utterance decode, for every decoder kind."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dac_vae.checkpoint import build_codec
from dac_vae.streaming import ChunkedDecoder, context_frames

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "dac": "configs/tiny/dac_vae.yaml",
    "frame": "configs/tiny/dac_vae_frame.yaml",
    "harmonic": "configs/tiny/dac_vae_harmonic.yaml",  # excitation phase carried across windows
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def codec(request):
    torch.manual_seed(0)
    model = build_codec(REPO / CONFIGS[request.param]).eval()
    if request.param == "frame":
        assert model.decoder.head.phase_advance  # the demo's codec: absolute frame indices matter
    return model


def _latent(codec, frames: int) -> torch.Tensor:
    return torch.randn(1, codec.latent_dim, frames, generator=torch.Generator().manual_seed(1))


@torch.inference_mode()
def test_dac_decoder_reach_is_within_context_frames():
    torch.manual_seed(0)
    codec = build_codec(REPO / CONFIGS["dac"]).eval()
    ctx, hop, t = context_frames(codec), codec.hop, 60
    z = _latent(codec, t)
    base = codec.decode(z)
    z2 = z.clone()
    z2[..., t // 2] += 1.0
    changed = (codec.decode(z2) - base).abs()[0] > 0
    idx = changed.nonzero().squeeze(-1)
    assert idx.min() >= (t // 2 - ctx) * hop and idx.max() < (t // 2 + 1 + ctx) * hop
    assert idx.min() < (t // 2 - ctx + 5) * hop  # an upper bound, not loose by more than a few frames


@pytest.mark.parametrize("chunk", [7, 16, 50])
@torch.inference_mode()
def test_chunked_decode_equals_whole_decode(codec, chunk):
    frames = 95  # 16 and 50 do not divide it
    z = _latent(codec, frames)
    whole = codec.decode(z, torch.tensor([frames]))
    dec = ChunkedDecoder(codec)
    parts = [dec.push(z[..., i : i + chunk]) for i in range(0, frames, chunk)] + [dec.flush()]
    streamed = torch.cat(parts, dim=-1)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=2e-5, rtol=0)
    assert parts[0].shape[-1] > 0 or chunk <= context_frames(codec)  # audio starts before the end


@torch.inference_mode()
def test_frame_offset_matters_with_phase_advance():
    """Without the true frame offset a chunk's phases would be wrong: the test above is not vacuous."""
    torch.manual_seed(0)
    codec = build_codec(REPO / CONFIGS["frame"]).eval()
    z = _latent(codec, 40)
    assert not torch.allclose(codec.decode(z, frame_offset=3), codec.decode(z), atol=1e-3)


@torch.inference_mode()
def test_harmonic_chunks_need_the_carried_phase():
    """A window decoded without its start phase differs: the harmonic case above is not vacuous."""
    torch.manual_seed(0)
    codec = build_codec(REPO / CONFIGS["harmonic"]).eval()
    z = _latent(codec, 40)
    assert not torch.allclose(codec.decode(z, phase0=torch.tensor([1.0])), codec.decode(z), atol=1e-3)


@pytest.mark.parametrize("chunk", [7, 16])
@torch.inference_mode()
def test_chunked_decode_equals_whole_decode_with_subframes(tmp_path, chunk):
    """Two STFT frames per latent frame (FrameDecoder subframes): the phase reference, the comb and the
    receptive field follow the finer framing, and chunks still join exactly."""
    text = (REPO / CONFIGS["harmonic"]).read_text()
    assert "    n_fft: 1440\n" in text
    config = tmp_path / "sub2.yaml"
    config.write_text(text.replace("    n_fft: 1440\n", "    n_fft: 960\n    subframes: 2\n"))
    torch.manual_seed(0)
    codec = build_codec(config).eval()
    assert codec.decoder.head.frame_hop * 2 == codec.hop
    frames = 61
    z = _latent(codec, frames)
    whole = codec.decode(z, torch.tensor([frames]))
    dec = ChunkedDecoder(codec)
    streamed = torch.cat([dec.push(z[..., i : i + chunk]) for i in range(0, frames, chunk)] + [dec.flush()], dim=-1)
    torch.testing.assert_close(streamed, whole, atol=2e-5, rtol=0)
