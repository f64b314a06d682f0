"""Rebuilding the codec from config + checkpoint, standing alone (no ``speech`` import)."""

from __future__ import annotations

import ast
import io

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from dac_vae.checkpoint import CodecLoadError, build_codec, codec_config_text, load_codec, load_state_dict

from .conftest import REPO, TINY_CONFIGS


def test_config_reduction_keeps_the_codec_and_drops_speech_entries():
    text = (REPO / "configs" / "dac_vae.yaml").read_text()
    reduced = codec_config_text(text)
    assert "dac_vae: !new:dac_vae.model.DACVAE" in reduced and "strides: [2, 3, 4, 4, 5]" in reduced
    assert build_codec_from_text(reduced).hop == 480
    assert "speech." not in reduced and "data_pipeline" not in reduced
    assert "optim:" in reduced  # entries that do not name speech are kept (harmless partials)
    with pytest.raises(CodecLoadError, match="no 'flow:' section"):
        codec_config_text(text, key="flow")


def test_config_reduction_keeps_anchors_defined_in_dropped_entries():
    """A saved (resolved) config may anchor a list inside a speech entry and alias it in dac_vae."""
    text = (
        "data_pipeline:\n"
        "  - !name:speech.dataset.processors.padding\n"
        "    strides: &s [2, 4]\n"
        "dac_vae: !new:dac_vae.model.DACVAE\n"
        "  token_rate: 3000\n"
        "  latent_dim: 8\n"
        "  encoder: !new:dac_vae.model.Encoder {strides: *s, channels: 2}\n"
        "  decoder: !new:dac_vae.model.Decoder {strides: *s, latent_dim: 8, channels: 16}\n"
    )
    reduced = codec_config_text(text)
    assert "speech" not in reduced
    assert build_codec_from_text(reduced).encoder.strides == [2, 4]


def build_codec_from_text(text: str):
    return load_hyperpyyaml(io.StringIO(text))["dac_vae"]


def test_the_codec_package_never_imports_speech():
    """dac_vae stands alone: no module of it imports ``speech`` (checked on the source)."""
    offenders = []
    for path in sorted((REPO / "dac-vae").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n == "speech" or n.startswith("speech.")]
    assert not offenders


def test_load_codec_accepts_trainer_plain_and_ddp_checkpoints(tmp_path):
    torch.manual_seed(0)
    codec = build_codec(TINY_CONFIGS["3x"])
    state = codec.state_dict()
    torch.save({"model": state, "optimizer": {}}, tmp_path / "trainer.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    gen_only = {k: v for k, v in state.items() if not k.startswith("discriminator.")}
    from safetensors.torch import save_file

    save_file(gen_only, str(tmp_path / "gen.safetensors"))
    audio = 0.1 * torch.randn(1, 3000)
    with torch.no_grad():
        codec.eval()
        ref_mu = codec.encode(audio)[0]
    for name in ("trainer.pt", "ddp.pt", "gen.safetensors"):
        loaded = load_codec(TINY_CONFIGS["3x"], tmp_path / name)
        assert loaded.discriminator is None and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode(audio)[0], ref_mu, atol=1e-5, rtol=1e-4)  # weight norm folded
    assert set(load_state_dict(tmp_path / "ddp.pt")) == set(state)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"model": build_codec(TINY_CONFIGS["2x"]).state_dict()}, tmp_path / "two.pt")
    with pytest.raises(CodecLoadError, match="does not match"):
        load_codec(TINY_CONFIGS["3x"], tmp_path / "two.pt")
    with pytest.raises(CodecLoadError, match="codec config not found"):
        load_codec(tmp_path / "none.yaml", tmp_path / "two.pt")
    torch.save([1, 2], tmp_path / "junk.pt")
    with pytest.raises(CodecLoadError, match="not a state dict"):
        load_codec(TINY_CONFIGS["2x"], tmp_path / "junk.pt")
