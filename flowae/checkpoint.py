"""Rebuild a trained flowae from its config and checkpoint, and load either codec kind by its config.

The DAC-VAE's loader (:mod:`dac_vae.checkpoint`) does the work: the config is data checked against
the allow-list, only the ``flowae:`` section (plus the top-level values it references) is built,
weights load strictly. :func:`load_any_codec` picks the codec by the config's top-level model key
(``dac_vae:`` or ``flowae:``), so the TTS takes either as its renderer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from dac_vae.checkpoint import CodecLoadError, build_codec, load_codec
from flowae.model import FlowAE

__all__ = ["CODEC_KEYS", "codec_key", "build_flowae", "load_flowae", "load_any_codec"]

CODEC_KEYS = ("dac_vae", "flowae")


def codec_key(config: str | os.PathLike) -> str:
    """``dac_vae`` or ``flowae``: the codec section a config file holds (read as plain YAML, nothing built)."""
    path = Path(config)
    if not path.is_file():
        raise CodecLoadError(f"codec config not found: {path}")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CodecLoadError(f"{path}: not valid YAML: {exc}") from None
    keys = [k.value for k, _ in root.value] if isinstance(root, yaml.MappingNode) else []
    found = [k for k in CODEC_KEYS if k in keys]
    if len(found) != 1:
        raise CodecLoadError(
            f"{path}: needs exactly one of {', '.join(CODEC_KEYS)} (top-level keys: {', '.join(keys)})"
        )
    return found[0]


def build_flowae(config: str | os.PathLike, trust_config: bool = False) -> FlowAE:
    """The (untrained) flowae of a config's ``flowae:`` section."""
    return build_codec(config, "flowae", trust_config, kind=FlowAE)


def load_flowae(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    fold_weight_norm: bool = True,
    trust_config: bool = False,
) -> FlowAE:
    """The trained flowae for inference (eval mode, weight norm folded, strict weights)."""
    return load_codec(config, checkpoint, device, "flowae", fold_weight_norm, trust_config, kind=FlowAE)


def load_any_codec(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    fold_weight_norm: bool = True,
    trust_config: bool = False,
):
    """A DAC-VAE or a flowae, whichever the config describes (same codec interface)."""
    if codec_key(config) == "flowae":
        return load_flowae(config, checkpoint, device, fold_weight_norm, trust_config)
    return load_codec(config, checkpoint, device, "dac_vae", fold_weight_norm, trust_config)
