"""How much do speech tokens depend on the voice? Same sentence, two speakers: how far apart are their ids?

    python -m speech.tokenizer.consistency --index exp/demo/data/train.jsonl --token_dir exp/demo/tokens \
        --levels 3 3 3 3 3 3 3 3 --out exp/demo/eval/token_consistency.json

For every pair of utterances with the same (normalised) transcript and different speakers, the edit
distance between their token sequences divided by the longer length; beside it the same for pairs of
unrelated utterances (different transcripts), the floor of "nothing in common". With ``--levels``
(the FSQ grid) a second distance counts a substitution as the share of FSQ digits that differ, since
neighbouring ids on the grid are near-synonyms to a digit-embedding LM and flow.

An LM predicts speech tokens from text and a voice. If two speakers' tokens for the same sentence are
nearly as far apart as unrelated sentences, the text barely determines them: a small LM can only recite
its training sequences, and one speaker's sequence rendered in another voice is the best it can copy.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from speech.tokenizer.fsq import FSQ

__all__ = ["edit_rate", "digit_matrix", "token_consistency", "main"]


@functools.lru_cache(maxsize=8)
def _grid(levels: tuple[int, ...]) -> FSQ:
    return FSQ(levels)


def digit_matrix(ids: np.ndarray, levels: list[int]) -> np.ndarray:
    """Ids ``[T]`` -> FSQ digits ``[T, len(levels)]``, by the quantiser's own :meth:`FSQ.ids_to_digits`."""
    return _grid(tuple(levels)).ids_to_digits(torch.as_tensor(np.asarray(ids))).numpy()


def edit_rate(a: np.ndarray, b: np.ndarray, levels: list[int] | None = None) -> float:
    """Levenshtein distance between id sequences ``a`` and ``b`` over ``max(len)`` (0 when both are empty).

    Insertions and deletions cost 1; a substitution costs 1 for unequal ids, or with ``levels`` the share
    of FSQ digits that differ. One row of the table at a time, vectorised: a row's insertion chain is a
    running minimum, ``d[j] = j + min_{k <= j} (c[k] - k)`` over the substitution/deletion costs ``c``.
    """
    n, m = len(a), len(b)
    if max(n, m) == 0:
        return 0.0
    if levels:
        da, db = digit_matrix(np.asarray(a), levels), digit_matrix(np.asarray(b), levels)
    cols = np.arange(m + 1, dtype=np.float64)
    row = cols.copy()
    for i in range(1, n + 1):
        sub = (da[i - 1][None] != db).mean(axis=1) if levels else (np.asarray(b) != a[i - 1]).astype(np.float64)
        cost = np.empty(m + 1)
        cost[0] = i
        cost[1:] = np.minimum(row[1:] + 1.0, row[:-1] + sub)  # deletion, substitution
        row = cols + np.minimum.accumulate(cost - cols)  # then any run of insertions
    return float(row[m]) / max(n, m)


def _pairs(items: list[dict], max_pairs: int, rng: random.Random) -> tuple[list, list]:
    """Same-transcript pairs of different speakers, and as many unrelated pairs (different transcripts)."""
    from speech.eval.text import normalize_text

    by_text: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_text[normalize_text(item["text"])].append(item)
    same = [(x, y) for group in by_text.values() for x, y in itertools.combinations(group, 2) if x["spk"] != y["spk"]]
    if len(same) > max_pairs:
        same = rng.sample(same, max_pairs)
    unrelated = []
    texts = list(by_text)
    if same and len(texts) >= 2:
        for _ in range(len(same)):
            t1, t2 = rng.sample(texts, 2)
            unrelated.append((rng.choice(by_text[t1]), rng.choice(by_text[t2])))
    return same, unrelated


def token_consistency(
    items: list[dict], levels: list[int] | None = None, max_pairs: int = 200, seed: int = 0
) -> dict:
    """Mean edit rates (ids; digits with ``levels``) of same-sentence / unrelated pairs of ``items``, each a
    dict with ``text``, ``spk`` and ``tokens`` (a 1-D id array)."""
    rng = random.Random(seed)
    same, unrelated = _pairs(items, max_pairs, rng)
    out: dict = {"utterances": len(items), "same_text_pairs": len(same), "unrelated_pairs": len(unrelated)}
    kinds = [("ids", None)] + ([("digits", levels)] if levels else [])
    for name, pairs in (("same_text", same), ("unrelated", unrelated)):
        for kind, lv in kinds:
            rates = [edit_rate(x["tokens"], y["tokens"], lv) for x, y in pairs]
            out[f"{name}_{kind}"] = float(np.mean(rates)) if rates else None
    return out


def _load(index: Path, token_dir: Path) -> tuple[list[dict], int]:
    """Items of a corpus index with a readable 1-D integer ``<token_dir>/<spk>/<utt>_fsq.pt``, and how many
    had none (no utt/spk/text, a missing or unreadable file, not a 1-D integer tensor: counted, not fatal)."""
    items, skipped = [], 0
    for line in index.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        ids = None
        if all(isinstance(row.get(k), str) for k in ("utt", "spk", "text")):
            try:
                ids = torch.load(token_dir / row["spk"] / f"{row['utt']}_fsq.pt", map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - missing, truncated, pickled code: all one counted reason
                pass
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point:
            skipped += 1
            continue
        items.append({"text": row["text"], "spk": row["spk"], "tokens": ids.long().numpy()})
    return items, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="corpus index (.jsonl: utt, spk, text)")
    parser.add_argument("--token_dir", type=Path, required=True, help="extract_fsq.py output: <spk>/<utt>_fsq.pt")
    parser.add_argument("--levels", type=int, nargs="+", help="FSQ levels: also the digit-level distance")
    parser.add_argument("--max_pairs", type=int, default=200, help="same-sentence pairs scored (a random subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if not args.index.is_file():
        print(f"error: index not found: {args.index}", file=sys.stderr)
        return 2
    if args.levels and any(v < 2 for v in args.levels):
        print(f"error: --levels must be >= 2, got {args.levels}", file=sys.stderr)
        return 2
    items, skipped = _load(args.index, args.token_dir)
    top = max((int(x["tokens"].max()) for x in items if len(x["tokens"])), default=-1)
    if args.levels and top >= int(np.prod(args.levels)):
        print(f"error: token id {top} does not fit --levels {args.levels} ({int(np.prod(args.levels))} ids)",
              file=sys.stderr)
        return 2
    result = token_consistency(items, args.levels, args.max_pairs, args.seed)
    result["unusable_token_files"] = skipped
    if not result["same_text_pairs"]:
        print("no two speakers share a transcript in this index: nothing to compare", file=sys.stderr)
    for kind in ("ids", "digits"):
        if result.get(f"same_text_{kind}") is not None:
            print(f"token edit rate ({kind}): same sentence, two voices {result[f'same_text_{kind}']:.3f} "
                  f"({result['same_text_pairs']} pairs); unrelated sentences {result[f'unrelated_{kind}']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
