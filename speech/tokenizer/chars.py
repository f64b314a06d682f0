"""Character vocabulary for the FSQ tokenizer's CTC targets (greedy CTC error rate = CER).

Implements the text-tokenizer interface of :mod:`speech.text`, so the data pipeline's
``tokenize_text`` takes it in place of a BPE. Text is normalised before it is spelled: Unicode
NFKC, lower case, characters outside the alphabet dropped, runs of whitespace merged into one
space. The alphabet is a config value, so other scripts only need their own letters.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from speech.text.tokenizer import TextTokenizer

__all__ = ["CharTokenizer", "ENGLISH"]

ENGLISH = " abcdefghijklmnopqrstuvwxyz0123456789'"


class CharTokenizer(TextTokenizer):
    """Normalised text -> one id per character of ``alphabet`` (id = position in the alphabet)."""

    def __init__(self, alphabet: str = ENGLISH, lowercase: bool = True):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty string of distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self.lowercase = lowercase
        self._ids = {c: i for i, c in enumerate(alphabet)}
        self._space = " " in self._ids

    def normalise(self, text: str) -> str:
        """The text as the model is asked to spell it (see the module docstring)."""
        text = unicodedata.normalize("NFKC", text)
        if self.lowercase:
            text = text.lower()
        text = re.sub(r"\s+", " ", text) if self._space else re.sub(r"\s+", "", text)
        kept = "".join(c for c in text if c in self._ids)
        return re.sub(" +", " ", kept).strip() if self._space else kept

    def spell(self, text: str) -> tuple[list[int], list[int]]:
        """:meth:`encode`'s ids and, for each, the index in ``text`` of the character it came from."""
        kept: list[tuple[str, int]] = []
        for i, raw in enumerate(text):
            for c in unicodedata.normalize("NFKC", raw):
                c = c.lower() if self.lowercase else c
                if c.isspace():
                    if self._space and kept and kept[-1][0] != " ":  # runs of (dropped or white) space merge
                        kept.append((" ", i))
                elif c in self._ids:
                    kept.append((c, i))
        if kept and kept[-1][0] == " ":
            kept.pop()
        ids, sources = [self._ids[c] for c, _ in kept], [i for _, i in kept]
        if self.decode(ids) != self.normalise(text):  # NFKC across characters (rare): no per-character map
            raise ValueError(f"cannot map the spelling of {text!r} back to its characters")
        return ids, sources

    def encode(self, text: str) -> list[int]:
        """Ids of the normalised text's characters."""
        return [self._ids[c] for c in self.normalise(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """The characters of ``ids`` (inverse of :meth:`encode` on normalised text)."""
        return "".join(self.alphabet[i] for i in ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids (the CTC blank is an extra id the model adds)."""
        return len(self.alphabet)
