#!/usr/bin/env python3
"""Train a byte-level BPE text tokenizer on corpus transcripts and save it as ``tokenizer.json``.

Inputs are JSON-lines indexes (their ``text`` field) or folders (every ``.txt`` under them, UTF-8).
Train on the training split only, so dev/test text stays unseen. Load the result with
``speech.text.load_text_tokenizer(path)`` (or point a config's text tokenizer at it).

    python tools/train_bpe.py exp/data/train.jsonl --vocab_size 4096 --out exp/bpe/tokenizer.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from speech.dataset.context import SkipCounter
from speech.dataset.dataset import read_index
from speech.text import BPETextTokenizer, train_bpe

log = logging.getLogger("train_bpe")


def read_texts(inputs: list[Path], skips: SkipCounter) -> Iterator[str]:
    """Transcripts of indexes and ``.txt`` trees; unreadable or empty ones are skipped and counted."""
    for path in inputs:
        if path.is_dir():
            for txt in sorted(path.rglob("*.txt")):
                try:
                    text = " ".join(txt.read_bytes().decode("utf-8-sig").split())
                except UnicodeDecodeError:
                    skips.skip("non-UTF-8 transcript", str(txt))
                    continue
                if text:
                    yield text
                else:
                    skips.skip("empty transcript", str(txt))
        else:
            for item in read_index(path, skips):
                text = item.get("text")
                if isinstance(text, str) and text.strip():
                    yield text
                else:
                    skips.skip("entry without text", f"{path}@{item['offset']}")


def main(argv: list[str] | None = None) -> int:
    """Train, save, reload and round-trip check; returns 1 if any transcript does not round-trip."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", type=Path, nargs="+", help="index .jsonl files or folders of .txt transcripts")
    parser.add_argument("--out", type=Path, required=True, help="output tokenizer.json")
    parser.add_argument("--vocab_size", type=int, default=4096, help="largest vocabulary (bytes and merges)")
    parser.add_argument("--min_frequency", type=int, default=2, help="merge only pairs seen this often")
    parser.add_argument("--special_tokens", nargs="*", default=["<|endoftext|>"], help="tokens added to the vocabulary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        sys.exit(f"error: input not found: {missing[0]}")

    skips = SkipCounter("train_bpe")
    texts = list(read_texts(args.inputs, skips))
    if not texts:
        sys.exit(f"error: no transcripts in {', '.join(map(str, args.inputs))} ({skips.summary()})")
    tokenizer = train_bpe(texts, args.vocab_size, args.min_frequency, args.special_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, args.out)

    # Read it back through the loader the pipeline uses and check every transcript round-trips.
    loaded = BPETextTokenizer(args.out)
    lengths = [len(loaded.encode(t)) for t in texts]
    exact = sum(loaded.decode(loaded.encode(t)) == t for t in texts)
    per_text, per_token = sum(lengths) / len(lengths), sum(map(len, texts)) / sum(lengths)
    print(
        f"{args.out}: {loaded.vocab_size} ids from {len(texts)} transcripts; {per_text:.1f} tokens per transcript "
        f"({per_token:.2f} chars per token); round-trip exact for {exact}/{len(texts)}; {skips.summary()}"
    )
    return 0 if exact == len(texts) else 1


if __name__ == "__main__":
    sys.exit(main())
