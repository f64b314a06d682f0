"""Speech tokenizers (waveform → 25 Hz FSQ ids) behind one interface, chosen by a short name.

Backends are named by dotted path and imported only when asked for, so a heavy or not yet
available backend costs nothing to the others.
"""
from __future__ import annotations

import importlib

from .base import SpeechTokenizer, SpeechTokenizerError

__all__ = ["SpeechTokenizer", "SpeechTokenizerError", "BACKENDS", "tokenizer_class"]

BACKENDS: dict[str, str] = {
    "s3": "speech.tokenizer.s3:S3Tokenizer",  # the s3tokenizer package (speech_tokenizer_v2_25hz)
    "own": "speech.tokenizer.own:OwnFSQTokenizer",  # the project's own trained FSQ tokenizer
}


def tokenizer_class(name: str) -> type:
    """The class behind backend ``name`` (a key of :data:`BACKENDS` or a ``module:Class`` path)."""
    target = BACKENDS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise SpeechTokenizerError(
            f"unknown speech tokenizer {name!r}; choose one of {sorted(BACKENDS)} or module:Class"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpeechTokenizerError(f"speech tokenizer {name!r} ({target}) is not available: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpeechTokenizerError(f"speech tokenizer {name!r}: {module_name} defines no {attr}") from None
