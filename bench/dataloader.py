#!/usr/bin/env python3
"""Throughput of the data pipeline: items/s, padded frames/s, and how much of a batch is padding.

Runs the LM, flow and codec processor chains (as the configs compose them) through a real
DataLoader with 0 and ``--workers`` worker processes and prints one row per run. By default it
indexes the committed corpus in ``data/`` (train split) and writes *synthetic* token and latent
files of the right lengths into a temporary folder (the loader's cost does not depend on their
values); pass ``--data_list`` to measure a prepared corpus instead. ``--repeat`` lists the shards
several times so an epoch is long enough to time.

    python bench/dataloader.py                       # committed corpus, synthetic features
    python bench/dataloader.py --data_list exp/data/train/data.list --workers 4
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from speech.dataset import Dataset, read_data_list, read_index
from speech.dataset import processors as P
from speech.text import load_text_tokenizer, train_bpe

REPO = Path(__file__).resolve().parents[1]
ROW = "{:<14}{:>8}{:>10}{:>11}{:>17}{:>13}{:>9}"


def tool(name: str, *args: str) -> None:
    """Run one of the data tools as its CLI (they live outside the installed package)."""
    subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{name}.py"), *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def synthetic_corpus(folder: Path, corpus: Path, latent_dim: int, ratio: int) -> tuple[Path, list[str]]:
    """Index the corpus train split and write random features of the true lengths; returns (data.list, texts)."""
    split = corpus / "splits" / "train.txt"
    tool("prepare_data", str(corpus), "--out", str(folder / "index"), "--split", str(split), "--num_workers", "2")
    gen = torch.Generator().manual_seed(0)
    texts = []
    for e in read_index(folder / "index" / "train.jsonl"):
        n_tok = math.ceil(e["duration"] * 25)
        out = folder / "feat" / e["spk"]
        out.mkdir(parents=True, exist_ok=True)
        torch.save(torch.randint(0, 6561, (n_tok,), generator=gen, dtype=torch.int32), out / f"{e['utt']}_fsq.pt")
        mu = torch.randn(latent_dim, n_tok * ratio + 1, generator=gen)
        torch.save(
            {
                "mu": mu,
                "logs": torch.zeros_like(mu),
                "sample_rate": 24000,
                "hop": 480,
                "n_samples": 0,
                "checkpoint": "synthetic",
            },
            out / f"{e['utt']}_latent{ratio}x.pt",
        )
        texts.append(e["text"])
    tool(
        "generate_json_index",
        "--index",
        str(folder / "index" / "train.jsonl"),
        "--out",
        str(folder / "train"),
        "--token_dir",
        str(folder / "feat"),
        "--latent_dir",
        str(folder / "feat"),
        "--latent_suffix",
        f"_latent{ratio}x.pt",
        "--token_latent_ratio",
        str(ratio),
        "--num_shards",
        "4",
        "--num_workers",
        "0",
    )
    return folder / "train" / "data.list", texts


def pipelines(tokenizer, ratio: int, budget_tokens: int, budget_latent: int, sort: bool) -> dict[str, tuple[list, str]]:
    """The chains the LM, flow and codec configs use, with the key whose padded frames are counted."""
    sort_stage = lambda key: [partial(P.sort, buffer_size=200, key=key)] if sort else []  # noqa: E731
    ref = partial(P.speaker_reference, sample_rate=24000, min_seconds=2.0, max_seconds=6.0)
    llm = [
        partial(P.tokenize_text, tokenizer=tokenizer),
        P.filter_items,
        P.load_speech_token,
        ref,
        partial(P.shuffle, buffer_size=1000),
        *sort_stage("speech_token"),
        partial(P.batch, max_frames_in_batch=budget_tokens, frame_key="speech_token"),
        P.padding,
    ]
    flow = [
        P.filter_items,
        P.load_speech_token,
        P.load_latent,
        partial(P.align_lengths, token_latent_ratio=ratio),
        ref,
        partial(P.shuffle, buffer_size=1000),
        *sort_stage("latent"),
        partial(P.batch, max_frames_in_batch=budget_latent, frame_key="latent"),
        P.padding,
    ]
    codec = [
        P.filter_items,
        P.load_audio,
        partial(P.random_crop, seconds=1.0, sample_rate=24000),
        partial(P.shuffle, buffer_size=1000),
        partial(P.batch, batch_type="static", batch_size=16),
        P.padding,
    ]
    return {"llm": (llm, "speech_token"), "flow": (flow, "latent"), "codec": (codec, "audio")}


def run(data_list: Path, chain: list, key: str, workers: int) -> dict[str, float]:
    """One epoch through a DataLoader; counts items, batches, real and padded frames of ``key``."""
    loader = DataLoader(
        Dataset(data_list, chain, seed=0), batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    items = batches = real = padded = 0
    start = time.perf_counter()
    for batch in loader:
        b, t = batch[key].shape[0], batch[key].shape[-1]
        items += b
        batches += 1
        real += int(batch[f"{key}_len"].sum())
        padded += b * t
    seconds = time.perf_counter() - start
    return {"items": items, "batches": batches, "seconds": seconds, "real": real, "padded": padded}


def main() -> None:
    """Time every chain with 0 and N workers and print one row per run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data_list", type=Path, help="a prepared data.list with tokens and latents (default: synthetic)"
    )
    parser.add_argument("--corpus", type=Path, default=REPO / "data", help="corpus for the synthetic default")
    parser.add_argument("--repeat", type=int, default=8, help="list every shard this many times (longer epochs)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers of the multi-process runs")
    parser.add_argument("--ratio", type=int, default=2, help="token_latent_ratio")
    parser.add_argument("--latent_dim", type=int, default=80, help="latent dimension of the synthetic features")
    parser.add_argument("--max_tokens", type=int, default=2000, help="LM dynamic batch budget (padded speech tokens)")
    parser.add_argument(
        "--max_latent_frames", type=int, default=4000, help="flow dynamic batch budget (padded latent frames)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the main process (workers always use 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data_list is None:
            data_list, texts = synthetic_corpus(tmp, args.corpus, args.latent_dim, args.ratio)
            source = f"{args.corpus} train split, synthetic features"
        else:
            data_list = args.data_list
            texts = [e["text"] for shard in read_data_list(data_list) for e in read_index(shard)]
            source = str(data_list)
        shards = read_data_list(data_list)
        repeated = tmp / "repeated.list"
        repeated.write_text("".join(f"{s}\n" for s in shards * args.repeat))
        tokenizer_file = tmp / "bpe.json"
        train_bpe(texts, vocab_size=1000).save(str(tokenizer_file))
        tokenizer = load_text_tokenizer(tokenizer_file)
        print(f"data: {source} x{args.repeat}; main-process torch threads {torch.get_num_threads()}")
        print(
            f"budgets: LM {args.max_tokens} tokens, flow {args.max_latent_frames} latent frames, codec 16 x 1 s crops"
        )
        header = ("pipeline", "workers", "items/s", "batches/s", "padded frames/s", "items/batch", "padding")
        print(ROW.format(*header))
        for sort in (True, False):
            chains = pipelines(tokenizer, args.ratio, args.max_tokens, args.max_latent_frames, sort)
            for name, (chain, key) in chains.items():
                if not sort and name == "codec":
                    continue  # fixed crops: nothing to sort
                for workers in (0, args.workers):
                    r = run(repeated, chain, key, workers)
                    print(
                        ROW.format(
                            name if sort else f"{name} (no sort)",
                            workers,
                            f"{r['items'] / r['seconds']:.1f}",
                            f"{r['batches'] / r['seconds']:.2f}",
                            f"{r['padded'] / r['seconds']:,.0f}",
                            f"{r['items'] / r['batches']:.1f}",
                            f"{1 - r['real'] / r['padded']:.1%}",
                        )
                    )
        print("frames: LM speech tokens, flow latent frames, codec samples; padding: share of padded frames that are")
        print("padding (codec: zero-padded clips shorter than the crop); times include dataloader worker start-up")


if __name__ == "__main__":
    main()
