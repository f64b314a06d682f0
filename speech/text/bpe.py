"""Train a byte-level BPE on corpus transcripts (the second source of :mod:`speech.text.tokenizer`)."""
from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["train_bpe"]


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = ("<|endoftext|>",),
) -> Tokenizer:
    """A byte-level BPE over ``texts``: every byte is in the base alphabet, so no text is unknown.

    The vocabulary stops growing when no pair occurs ``min_frequency`` times, so a small corpus
    gives fewer than ``vocab_size`` ids.
    """
    tokenizer = Tokenizer(models.BPE())
    # No normaliser: byte-level encoding then decodes to exactly the input text.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer
