"""The speech-tokenizer interface: 1-D waveforms in, 25 Hz FSQ ids out, batched.

Backends (the ``s3tokenizer`` package, the project's own FSQ tokenizer) implement it so that
``tools/extract_fsq.py`` and inference treat them alike and their ``name_fsq.pt`` files are
interchangeable (1-D int tensors of ids ``0 .. codebook_size - 1``).
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import torch

__all__ = ["SpeechTokenizerError", "SpeechTokenizer"]


class SpeechTokenizerError(RuntimeError):
    """A tokenizer that cannot be built or loaded; the message is one line naming what is wrong."""


class SpeechTokenizer(ABC):
    """Waveforms at :attr:`sample_rate` → ids at :attr:`token_rate` Hz in ``[0, codebook_size)``."""

    sample_rate: int = 16000
    token_rate: int = 25
    codebook_size: int = 6561

    @classmethod
    @abstractmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        config: str | os.PathLike | Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        trust_config: bool = False,
    ) -> "SpeechTokenizer":
        """Load weights from a local path; ``config`` is backend-specific (None = the backend default).

        ``trust_config``: build a config that came with the weights even if it names code outside
        the allow-list of :mod:`dac_vae.safe_config` (backends that build nothing ignore it)."""

    @abstractmethod
    def tokenize(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """1-D float waveforms at :attr:`sample_rate` → 1-D int64 CPU id tensors, one batched pass."""

    def token_length(self, n_samples: int) -> int:
        """About how many tokens ``n_samples`` samples give: ``ceil(seconds · token_rate)``."""
        return math.ceil(n_samples * self.token_rate / self.sample_rate)
