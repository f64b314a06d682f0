"""Rebuild a trained codec from its config file and checkpoint, without the training framework.

The config is the trainer's YAML (the file given to ``train.py`` or the resolved copy saved beside
a checkpoint). Only its ``dac_vae:`` section and the top-level entries that do not name a
``speech`` module are built, so loading never imports the training framework (data pipelines,
schedulers of ``speech`` are skipped). The config is data that travels with the weights: it is
built through :mod:`dac_vae.safe_config` (an allow-list of classes, checked before anything is
imported) unless the caller trusts it (``trust_config=True``, the CLIs' ``--trust_config``).
Checkpoints: a dict with a ``"model"`` state dict (the
trainer's format), a plain state dict, or a ``.safetensors`` file; always ``weights_only``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
import yaml

from dac_vae.model import DACVAE
from dac_vae.safe_config import UntrustedConfigError, build_config, check_config_text

__all__ = ["CodecLoadError", "codec_config_text", "build_codec", "load_state_dict", "checkpoint_id", "load_codec"]

_SPEECH_TAG = re.compile(r"^!(new|name|apply):speech(\.|$)")


class CodecLoadError(ValueError):
    """A missing or inconsistent config/checkpoint, reported in one line."""


def _names_speech(node: yaml.Node) -> bool:
    """Whether a YAML subtree builds anything from the ``speech`` package."""
    if isinstance(node.tag, str) and _SPEECH_TAG.match(node.tag):
        return True
    if isinstance(node, yaml.SequenceNode):
        return any(_names_speech(n) for n in node.value)
    if isinstance(node, yaml.MappingNode):
        return any(_names_speech(k) or _names_speech(v) for k, v in node.value)
    return False


def codec_config_text(text: str, key: str = "dac_vae") -> str:
    """The YAML text reduced to the ``key`` section plus every top-level entry it may reference
    that does not name a ``speech`` module (sample rate, strides, ...)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise CodecLoadError(f"config is not valid YAML: {exc}") from None
    if not isinstance(root, yaml.MappingNode):
        raise CodecLoadError("config is not a YAML mapping")
    names = [k.value for k, _ in root.value]
    if key not in names:
        raise CodecLoadError(f"config has no '{key}:' section (top-level keys: {', '.join(names)})")
    # Re-serialised from the node graph (not cut from the text), so an anchor first defined in a
    # dropped entry and aliased in the kept ones is written out where it is still used.
    kept = [(k, v) for k, v in root.value if k.value == key or not _names_speech(v)]
    return yaml.serialize(yaml.MappingNode(root.tag, kept))


def build_codec(
    config: str | os.PathLike, key: str = "dac_vae", trust_config: bool = False, kind: type = DACVAE
) -> DACVAE:
    """Build the (untrained) codec described by the ``key`` section of a config file.

    The whole file is checked against the allow-list first (``trust_config=True`` skips that).
    ``kind`` is the class the section must build (another codec with the same interface: flowae).
    """
    path = Path(config)
    if not path.is_file():
        raise CodecLoadError(f"codec config not found: {path}")
    full = path.read_text(encoding="utf-8")
    try:
        if not trust_config:
            check_config_text(full, str(path))
        text = codec_config_text(full, key)
        model = build_config(text, trust=trust_config, source=str(path))[key]
    except (UntrustedConfigError, CodecLoadError) as exc:
        raise CodecLoadError(str(exc)) from None
    except Exception as exc:
        raise CodecLoadError(f"{path}: cannot build '{key}': {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, kind):
        raise CodecLoadError(f"{path}: '{key}' builds {type(model).__name__}, not {kind.__module__}.{kind.__name__}")
    return model


def load_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a trainer checkpoint (``{"model": ...}``), a state dict or safetensors."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CodecLoadError(f"codec checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CodecLoadError(f"{path}: not a state dict nor a checkpoint with a 'model' state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def checkpoint_id(checkpoint: str | os.PathLike) -> str:
    """``name@sha256[:12]``: names the weights a latent file came from, whatever its path."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{Path(checkpoint).name}@{digest.hexdigest()[:12]}"


def load_codec(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    key: str = "dac_vae",
    fold_weight_norm: bool = True,
    trust_config: bool = False,
    kind: type = DACVAE,
) -> DACVAE:
    """The trained codec for inference (eval mode, no discriminator; weight norm folded).

    Generator weights must match exactly (strict): a missing or unexpected key is an error.
    ``trust_config`` builds a config outside the allow-list (see :mod:`dac_vae.safe_config`).
    """
    model = build_codec(config, key, trust_config, kind)
    model.discriminator = None
    state = {k: v for k, v in load_state_dict(checkpoint).items() if not k.startswith("discriminator.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CodecLoadError(f"{checkpoint} does not match {config}: {first}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CodecLoadError(
            f"{checkpoint} does not match {config}: missing {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
    if fold_weight_norm:
        model.remove_weight_norm()
    return model.to(device).eval()
