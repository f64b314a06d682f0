"""The project's own FSQ tokenizer behind the speech-tokenizer interface (drop-in for S3Tokenizer).

``OwnFSQTokenizer.from_checkpoint(ckpt, config)`` rebuilds :class:`FSQTokenizerModel` from the
config saved beside a ``train.py --model fsq`` checkpoint and loads its weights; ``tokenize`` turns
1-D waveforms at :attr:`sample_rate` into 1-D int64 tensors of ids ``0 .. codebook_size - 1`` at
25 Hz, like the S3Tokenizer path, so ``name_fsq.pt`` files from either are interchangeable.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from speech.config import ConfigError, load_config
from speech.tokenizer.model import FSQTokenizerModel

__all__ = ["OwnFSQTokenizer", "load_state_dict", "find_config"]

log = logging.getLogger(__name__)

# Names the trainer may give the resolved config it writes beside a checkpoint, tried in order.
_CONFIG_NAMES = ("{stem}.yaml", "config.yaml", "train.yaml")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a ``.safetensors`` export or a ``.pt`` checkpoint (raw or under ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FSQ tokenizer checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    # Checkpoints saved from a DDP / compiled wrapper carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def find_config(checkpoint: str | os.PathLike) -> Path:
    """The resolved config saved beside ``checkpoint`` (``<stem>.yaml``, else ``config.yaml``...)."""
    checkpoint = Path(checkpoint)
    for name in _CONFIG_NAMES:
        candidate = checkpoint.parent / name.format(stem=checkpoint.stem)
        if candidate.is_file():
            return candidate
    tried = ", ".join(n.format(stem=checkpoint.stem) for n in _CONFIG_NAMES)
    raise ConfigError(f"no config beside {checkpoint} (tried {tried}); pass the training config explicitly")


class OwnFSQTokenizer:
    """Speech tokenizer backed by a trained :class:`FSQTokenizerModel` (25 Hz, 6561 ids by default)."""

    token_rate: int = 25

    def __init__(self, model: FSQTokenizerModel, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate: int = model.sample_rate
        self.token_rate = model.token_rate
        self.codebook_size: int = model.codebook_size

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        config: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        model_key: str = "fsq",
    ) -> "OwnFSQTokenizer":
        """Rebuild the model from ``config`` (default: the one saved beside ``checkpoint``) and load its weights."""
        config = Path(config) if config is not None else find_config(checkpoint)
        built = load_config(config)
        model = built.get(model_key)
        if not isinstance(model, FSQTokenizerModel):
            raise ConfigError(f"{config}: key {model_key!r} does not build an FSQTokenizerModel")
        missing, unexpected = model.load_state_dict(load_state_dict(checkpoint), strict=False)
        if missing or unexpected:
            # Strict in substance, but one clear line instead of a page of key names.
            raise ValueError(
                f"{checkpoint} does not match {config}: {len(missing)} missing key(s) (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        log.info("loaded FSQ tokenizer %s (%d codes, %d Hz input)", checkpoint, model.codebook_size, model.sample_rate)
        return cls(model, device)

    def token_length(self, n_samples: int) -> int:
        """Number of tokens for ``n_samples`` samples at :attr:`sample_rate`: ``ceil(n * 25 / sr)``."""
        return int(self.model.token_lengths(torch.tensor([n_samples]))[0])

    @torch.inference_mode()
    def tokenize(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """1-D float waveforms at :attr:`sample_rate` -> 1-D int64 CPU tensors of ids, one batched pass."""
        if not wavs:
            return []
        for i, wav in enumerate(wavs):
            if wav.dim() != 1:
                raise ValueError(f"tokenize expects 1-D waveforms, item {i} has shape {tuple(wav.shape)}")
        lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
        audio = torch.nn.utils.rnn.pad_sequence([w.float() for w in wavs], batch_first=True)
        ids, token_len = self.model.tokenize(audio.to(self.device), lengths.to(self.device))
        ids, token_len = ids.cpu(), token_len.cpu().tolist()
        return [row[:n].clone() for row, n in zip(ids, token_len)]
