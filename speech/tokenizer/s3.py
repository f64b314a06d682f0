"""The ``s3tokenizer`` package's ``speech_tokenizer_v2_25hz`` (CosyVoice2's FSQ tokenizer) as a backend.

Weights come from a local file only: the official ``speech_tokenizer_v2.onnx`` (converted on
load; needs the ``onnx`` package that s3tokenizer installs) or a PyTorch state dict ``.pt``
(e.g. written by ``s3tokenizer.onnx2torch``). The model's size is read from the weights
themselves, so a small model built from a ``ModelConfig`` and saved loads through the same path.
Input: 16 kHz; 128-bin log-mel at 100 Hz, two stride-2 convolutions → 25 Hz; ids 0..6560 (3^8).
"""
from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .base import SpeechTokenizer, SpeechTokenizerError

__all__ = ["S3Tokenizer", "config_from_state_dict"]

MODEL_NAME = "speech_tokenizer_v2_25hz"
# speech_tokenizer_v2 applies rotary embeddings of a fixed size 64 per head, so heads = width / 64.
HEAD_DIM = 64
_MIN_SAMPLES = 160 * 4  # one 25 Hz token = 4 mel frames of 160 samples


def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``ModelConfig`` fields implied by the weights' shapes (mels, width, layers, heads)."""
    try:
        width, n_mels = state["encoder.conv1.weight"].shape[:2]
    except KeyError:
        raise SpeechTokenizerError("weights lack encoder.conv1.weight: not an s3tokenizer v2 state dict") from None
    blocks = {int(m.group(1)) for k in state for m in [re.match(r"encoder\.blocks\.(\d+)\.", k)] if m}
    return {
        "n_mels": int(n_mels),
        "n_audio_state": int(width),
        "n_audio_layer": len(blocks),
        "n_audio_head": max(1, int(width) // HEAD_DIM),
    }


def _read_config(config: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    path = Path(config)
    if not path.is_file():
        raise SpeechTokenizerError(f"s3tokenizer config not found: {path}")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise SpeechTokenizerError(f"{path}: expected a mapping of ModelConfig fields")
    return loaded


class S3Tokenizer(SpeechTokenizer):
    """Batched s3tokenizer v2 inference: per-utterance log-mel, padded batch, masked encoder."""

    sample_rate = 16000
    token_rate = 25
    codebook_size = 3**8

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.n_mels = model.config.n_mels

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        config: str | os.PathLike | Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        trust_config: bool = False,
    ) -> "S3Tokenizer":
        """Load ``.onnx`` or ``.pt`` weights; ``config`` optionally overrides ``ModelConfig`` fields
        (plain YAML values, read with ``yaml.safe_load``: nothing to trust, ``trust_config`` is unused)."""
        path = Path(checkpoint)
        if not path.is_file():
            raise SpeechTokenizerError(
                f"s3tokenizer weights not found: {path} (pass the local path of CosyVoice2's speech_tokenizer_v2.onnx "
                "or a converted .pt; nothing is downloaded)"
            )
        import s3tokenizer
        from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

        try:
            if path.suffix == ".onnx":
                state = s3tokenizer.onnx2torch(str(path), None, False)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # onnx / pickle errors have many types
            raise SpeechTokenizerError(f"cannot read s3tokenizer weights {path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(state, Mapping):
            raise SpeechTokenizerError(f"{path}: expected a state dict, found {type(state).__name__}")
        settings = {**config_from_state_dict(state), **_read_config(config)}
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SpeechTokenizerError(f"unknown s3tokenizer ModelConfig field(s) {unknown}; known: {sorted(known)}")
        # A fresh ModelConfig each time: S3TokenizerV2 mutates the one it is given.
        model = S3TokenizerV2(MODEL_NAME, ModelConfig(**settings))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise SpeechTokenizerError(f"{path} does not match the s3tokenizer v2 model: {first}") from None
        return cls(model, device)

    @torch.inference_mode()
    def tokenize(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """16 kHz 1-D waveforms → 1-D int64 ids; clips under 40 ms (no full token) give empty tensors."""
        import s3tokenizer

        out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long) for _ in wavs]
        keep = [i for i, w in enumerate(wavs) if w.dim() == 1 and w.shape[0] >= _MIN_SAMPLES]
        if not keep:
            return out
        # Log-mel per utterance: its dynamic-range floor (max - 8) must not depend on the batch.
        mels = [s3tokenizer.log_mel_spectrogram(wavs[i].float().to(self.device), n_mels=self.n_mels) for i in keep]
        mel, mel_len = s3tokenizer.padding(mels)
        codes, code_len = self.model.quantize(mel.to(self.device), mel_len.to(self.device))
        codes, code_len = codes.cpu().long(), code_len.cpu().tolist()
        for row, i in enumerate(keep):
            out[i] = codes[row, : code_len[row]].clone()
        return out
