#!/usr/bin/env python3
"""Join an utterance index with its token and latent files into training shards and a data.list.

For every entry of ``--index`` (tools/prepare_data.py output) it looks for ``<utt>_fsq.pt``
(``--token_dir``, default beside the wav) and ``<utt>_latent2x.pt`` (``--latent_dir``,
``--latent_suffix``), checks them (readable, right shape, ids in range, finite latents, token and
latent lengths within ``--tolerance`` tokens of ``--token_latent_ratio``) and adds ``token_path,
n_tokens, latent_path, n_latent_frames``. Inconsistent items are reported and left out. A feature
not extracted yet is simply absent from the entry (the LM needs no latents), unless ``--require``
names it. Output: ``OUT/shard_00000.jsonl``... (paths relative to OUT) and ``OUT/data.list``.
Entries keep the input order (speaker-grouped). Nothing is deleted or modified outside OUT.

    python tools/generate_json_index.py --index exp/data/train.jsonl --out exp/data/train --num_shards 4
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from speech.dataset.context import SkipCounter
from speech.dataset.dataset import read_index
from speech.dataset.paths import TOKEN_SUFFIX, feature_path

log = logging.getLogger("generate_json_index")

SPEECH_VOCAB = 6561


class Inconsistent(Exception):
    """An item whose features are present but unusable: the reason, the file, a detail."""

    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(reason, path, detail)  # all arguments, so it pickles back from pool workers
        self.reason, self.path, self.detail = reason, path, detail


def count_tokens(path: str, vocab_size: int) -> int:
    """Length of a token file, checking it is a 1-D integer tensor of ids in range."""
    try:
        tokens = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Inconsistent("corrupt token file", path, f"{type(exc).__name__}: {exc}") from None
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.dim() != 1
        or tokens.dtype.is_floating_point
        or tokens.numel() == 0
    ):
        raise Inconsistent("token file is not a non-empty 1-D integer tensor", path)
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise Inconsistent(f"token id outside 0..{vocab_size - 1}", path, f"ids span {low}..{high}")
    return int(tokens.numel())


def count_latent_frames(path: str, key: str, dim: int | None) -> int:
    """Frames of a latent file's ``key`` tensor ``[D, T]``, checking shape and finiteness."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Inconsistent("corrupt latent file", path, f"{type(exc).__name__}: {exc}") from None
    latent = data.get(key) if isinstance(data, dict) else None
    if (
        not isinstance(latent, torch.Tensor)
        or latent.dim() != 2
        or latent.shape[1] == 0
        or (dim is not None and latent.shape[0] != dim)
    ):
        raise Inconsistent(
            "latent has the wrong shape", path, f"found {getattr(latent, 'shape', type(latent).__name__)}"
        )
    if not bool(torch.isfinite(latent).all()):
        raise Inconsistent("non-finite latent values", path)
    return int(latent.shape[1])


def join_item(item: dict, opts: dict[str, Any]) -> dict | Inconsistent:
    """``item`` with its feature fields, or the reason it is inconsistent (runs in pool workers)."""
    entry = {k: v for k, v in item.items() if k not in ("shard", "offset")}
    try:
        token_path = feature_path(item, TOKEN_SUFFIX, opts["token_dir"])
        if os.path.isfile(token_path):
            entry["token_path"], entry["n_tokens"] = token_path, count_tokens(token_path, opts["vocab_size"])
        latent_path = feature_path(item, opts["latent_suffix"], opts["latent_dir"])
        if os.path.isfile(latent_path):
            entry["latent_path"] = latent_path
            entry["n_latent_frames"] = count_latent_frames(latent_path, opts["latent_key"], opts["latent_dim"])
        if "n_tokens" in entry and "n_latent_frames" in entry:
            ratio, n_tok, n_lat = opts["ratio"], entry["n_tokens"], entry["n_latent_frames"]
            if abs(n_lat // ratio - n_tok) > opts["tolerance"]:
                raise Inconsistent(
                    "token/latent lengths disagree", latent_path, f"{n_tok} tokens vs {n_lat} frames at ratio {ratio}"
                )
    except Inconsistent as exc:
        return exc
    return entry


def write_jsonl(path: Path, entries: list[dict]) -> None:
    """Entries as JSON lines with paths relative to the file's folder, written atomically."""
    base = os.path.abspath(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for entry in entries:
            row = dict(entry)
            for key in ("wav", "token_path", "latent_path"):
                if key in row:
                    row[key] = os.path.relpath(os.path.abspath(row[key]), base)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Join, check and shard; returns the exit status (errors exit with one line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, nargs="+", required=True, help="JSON-lines index file(s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for shards and data.list")
    parser.add_argument("--token_dir", help="where the _fsq.pt files are (default: beside each wav)")
    parser.add_argument("--latent_dir", help="where the latent files are (default: beside each wav)")
    parser.add_argument("--latent_suffix", default="_latent2x.pt", help="_latent2x.pt or _latent3x.pt")
    parser.add_argument("--latent_key", default="mu", help="tensor of the latent dict to check")
    parser.add_argument("--latent_dim", type=int, help="expected latent dimension D (checked when given)")
    parser.add_argument("--token_latent_ratio", type=float, default=2,
                        help="latent frames per token: 2, 3, 1 (25 Hz), 0.5 (12.5 Hz latents, SLED path only)")
    parser.add_argument("--tolerance", type=int, default=4, help="largest |T_lat // ratio - n_tokens| accepted")
    parser.add_argument("--vocab_size", type=int, default=SPEECH_VOCAB, help="speech token ids must be below this")
    parser.add_argument(
        "--require", nargs="*", choices=["tokens", "latents"], default=[], help="drop items lacking these"
    )
    parser.add_argument("--num_shards", type=int, help="number of shard files (default: ceil(items / shard_size))")
    parser.add_argument("--shard_size", type=int, default=1000, help="items per shard when --num_shards is not given")
    parser.add_argument("--num_workers", type=int, default=4, help="processes reading feature files (0: inline)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.token_latent_ratio > 0:
        sys.exit(f"error: --token_latent_ratio must be > 0, got {args.token_latent_ratio:g}")
    if args.token_latent_ratio == int(args.token_latent_ratio):
        args.token_latent_ratio = int(args.token_latent_ratio)
    missing = [str(p) for p in args.index if not p.is_file()]
    if missing:
        sys.exit(f"error: index not found: {missing[0]}")

    skips = SkipCounter("generate_json_index")
    items = [item for path in args.index for item in read_index(path, skips)]
    opts = {
        "token_dir": args.token_dir,
        "latent_dir": args.latent_dir,
        "latent_suffix": args.latent_suffix,
        "latent_key": args.latent_key,
        "latent_dim": args.latent_dim,
        "ratio": args.token_latent_ratio,
        "tolerance": args.tolerance,
        "vocab_size": args.vocab_size,
    }
    if args.num_workers > 0:
        with ProcessPoolExecutor(args.num_workers) as pool:
            results = list(
                tqdm(
                    pool.map(join_item, items, [opts] * len(items), chunksize=64),
                    total=len(items),
                    desc="checking",
                    unit="utt",
                )
            )
    else:
        results = [join_item(item, opts) for item in tqdm(items, desc="checking", unit="utt")]

    entries, seen = [], set()
    for result in results:
        if isinstance(result, Inconsistent):
            skips.skip(result.reason, result.path, result.detail)
        elif result["utt"] in seen:
            skips.skip("duplicate utterance id", result.get("wav"))
        elif "tokens" in args.require and "token_path" not in result:
            skips.skip("no token file", feature_path(result, TOKEN_SUFFIX, args.token_dir))
        elif "latents" in args.require and "latent_path" not in result:
            skips.skip("no latent file", feature_path(result, args.latent_suffix, args.latent_dir))
        else:
            seen.add(result["utt"])
            entries.append(result)
    if not entries:
        sys.exit(f"error: no usable items ({skips.summary()})")

    num_shards = max(1, min(len(entries), args.num_shards or math.ceil(len(entries) / args.shard_size)))
    args.out.mkdir(parents=True, exist_ok=True)
    names = []
    for s in range(num_shards):
        chunk = entries[len(entries) * s // num_shards : len(entries) * (s + 1) // num_shards]
        name = f"shard_{s:05d}.jsonl"
        write_jsonl(args.out / name, chunk)
        names.append(name)
    data_list = args.out / "data.list"
    tmp = data_list.with_name("data.list.tmp")
    tmp.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    os.replace(tmp, data_list)

    have = Counter()
    for e in entries:
        have["tokens"] += "token_path" in e
        have["latents"] += "latent_path" in e
    print(
        f"{len(entries)} items ({have['tokens']} with tokens, {have['latents']} with latents) in {num_shards} shard(s) "
        f"-> {data_list}; {skips.summary()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
