"""Text → BPE ids, one interface over two sources.

* :class:`HFTextTokenizer`: a Qwen2 / CosyVoice tokenizer directory, read by
  ``transformers.AutoTokenizer`` from the local path only (no hub access is ever attempted).
* :class:`BPETextTokenizer`: a byte-level BPE trained on the corpus transcripts with
  ``tokenizers`` (``tools/train_bpe.py``), stored as one ``tokenizer.json``.

Both are byte-level, so ``decode(encode(text)) == text`` for any Unicode text.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

__all__ = ["TextTokenizerError", "TextTokenizer", "HFTextTokenizer", "BPETextTokenizer", "load_text_tokenizer"]


class TextTokenizerError(ValueError):
    """A text tokenizer that cannot be loaded (missing path, unreadable files)."""


class TextTokenizer(ABC):
    """What the data pipeline and the LM need from a text tokenizer."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special tokens added."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (exact inverse of :meth:`encode`)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included: the LM's text embedding size."""

    def char_starts(self, text: str, ids: Sequence[int] | None = None) -> list[int]:
        """For each id of ``encode(text)`` (or ``ids``), the index in ``text`` of its first character: the
        length of the decoded ids before it (a token that starts inside a multi-byte character counts
        from the next one)."""
        ids = self.encode(text) if ids is None else list(ids)
        return [len(self.decode(ids[:k]).rstrip("\ufffd")) for k in range(len(ids))]


class HFTextTokenizer(TextTokenizer):
    """A pretrained tokenizer directory (e.g. Qwen2-0.5B's or CosyVoice2's), loaded locally."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_dir():
            raise TextTokenizerError(f"text tokenizer directory not found: {path}")
        from transformers import AutoTokenizer  # heavy import, only for this source

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TextTokenizerError(f"cannot load a tokenizer from {path}: {first}") from None
        self.path = str(path)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


class BPETextTokenizer(TextTokenizer):
    """A ``tokenizers`` BPE saved as ``tokenizer.json`` (see :func:`speech.text.train_bpe`)."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TextTokenizerError(f"text tokenizer file not found: {path}")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses for bad JSON
            raise TextTokenizerError(f"cannot read tokenizer {path}: {exc}") from None
        self.path = str(path)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def load_text_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """A ``tokenizer.json`` file → :class:`BPETextTokenizer`; a pretrained directory → :class:`HFTextTokenizer`.

    A directory holding only our ``tokenizer.json`` (no ``tokenizer_config.json``) is read as a BPE.
    """
    path = Path(path)
    if path.is_file():
        return BPETextTokenizer(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            return BPETextTokenizer(path / "tokenizer.json")
        return HFTextTokenizer(path)
    raise TextTokenizerError(f"text tokenizer not found: {path}")
