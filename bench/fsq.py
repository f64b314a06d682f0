#!/usr/bin/env python3
"""The FSQ speech tokenizer: training throughput, extraction speed, and what the tiny config learns.

1. Training throughput of the tiny and full-size models (``configs/tiny/fsq.yaml``,
   ``configs/fsq.yaml``) on a synthetic batch: median step time of 10 forward + backward + AdamW
   steps after 3 warm-ups, seconds of audio per second, counted FLOPs and utilisation, peak RSS;
   fp32 and bf16 autocast.
2. The tiny config trained through ``train.py`` on the committed corpus (``data/``, train split,
   CV on dev) for its ``train_conf`` budget, unless ``--checkpoint`` names a trained model.
3. That model on the corpus: extraction speed (x real time, batched ``OwnFSQTokenizer.tokenize``),
   greedy-CTC CER on dev / test / held-out speakers, codebook usage (fraction of the 6561 codes
   used, code perplexity), and a content check: the normalised edit distance between the token
   sequences of the same sentence said by two different voices vs different sentences.

    python bench/fsq.py                                   # everything (trains the tiny config)
    python bench/fsq.py --checkpoint exp/tiny_fsq/step_000000600.pt --skip_throughput
    python bench/fsq.py --skip_train --skip_eval          # throughput only
"""
from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml
from torchaudio.functional import edit_distance
from tqdm import tqdm

from speech.audio import load_audio
from speech.config import resolve_config_text
from speech.tokenizer.fsq import codebook_stats
from speech.tokenizer.model import FSQTokenizerModel
from speech.tokenizer.own import OwnFSQTokenizer, load_checkpoint, model_config_text
from speech.utils.flops import count_flops, matmul_peak_gflops

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny" / "fsq.yaml"
FULL = REPO / "configs" / "fsq.yaml"


def build(config_text: str) -> tuple[FSQTokenizerModel, object]:
    """The model and text tokenizer a config describes (nothing else of it is built)."""
    tree = load_hyperpyyaml(io.StringIO(model_config_text(config_text)))
    return tree["fsq"], tree.get("text_tokenizer")


# ---------------------------------------------------------------------------------------------
# 1. Training throughput
# ---------------------------------------------------------------------------------------------


def synthetic_batch(model: FSQTokenizerModel, batch: int, seconds: float) -> dict[str, torch.Tensor]:
    """Noise audio of ``seconds`` and 12 characters per second of random targets per item."""
    n = int(seconds * model.sample_rate)
    chars = int(seconds * 12)
    return {
        "audio": 0.1 * torch.randn(batch, n),
        "audio_len": torch.full((batch,), n),
        "text_token": torch.randint(0, model.vocab_size, (batch, chars)),
        "text_token_len": torch.full((batch,), chars),
    }


def step_time(model: FSQTokenizerModel, batch: dict, dtype: torch.dtype | None) -> float:
    """Median seconds of forward + backward + AdamW over 10 steps after 3 warm-ups."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(13):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(args: argparse.Namespace) -> None:
    """Print the training-throughput table."""
    peaks = {"fp32": args.peak_fp32, "bf16": args.peak_bf16}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if not peaks[name]:
            peaks[name] = max(matmul_peak_gflops(dtype, (1024, 2048), 1.0).values())
    print(f"\n== training throughput ({torch.get_num_threads()} threads; matmul peak fp32 {peaks['fp32']:.0f}, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s)")
    row = "{:<6}{:>9}{:>7}{:>10}{:>13}{:>13}{:>12}{:>8}{:>10}"
    print(row.format("model", "params", "dtype", "batch", "step (s)", "audio s/s", "GFLOP/step", "util", "RSS MB"))
    for label, config, batch, seconds in (("tiny", TINY, 8, 4.0), ("full", FULL, 4, 4.0)):
        torch.manual_seed(0)
        model, _ = build(resolve_config_text(config))
        model.train()
        data = synthetic_batch(model, batch, seconds)
        params = sum(p.numel() for p in model.parameters())

        def once() -> None:
            model(data)["loss"].backward()

        flops = count_flops(once)
        model.zero_grad(set_to_none=True)
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            t = step_time(model, data, dtype)
            util = flops / t / 1e9 / peaks[name]
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(row.format(label, f"{params / 1e6:.1f}M", name, f"{batch}x{seconds:g}s", f"{t:.3f}",
                             f"{batch * seconds / t:.1f}", f"{flops / 1e9:.1f}", f"{util:.0%}", f"{rss:.0f}"))


# ---------------------------------------------------------------------------------------------
# 2. Training the tiny config on the corpus
# ---------------------------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str], log_path: Path) -> None:
    """Run a repository CLI with its output in ``log_path``; on failure show the end of it and stop."""
    with open(log_path, "w") as log_file:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"{' '.join(cmd[1:3])} failed (exit {code}); end of {log_path}:\n{log_path.read_text()[-3000:]}")


def train_tiny(args: argparse.Namespace, work: Path) -> Path:
    """Index the corpus, train the tiny config with train.py; returns the last checkpoint."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    index = work / "index"
    splits = [str(args.corpus / "splits" / f"{s}.txt") for s in ("train", "dev")]
    index.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "tools/prepare_data.py", str(args.corpus), "--out", str(index), "--split", *splits], env,
        work / "prepare_data.log")
    for split in ("train", "dev"):
        (index / f"{split}.list").write_text(f"{split}.jsonl\n")
    model_dir = work / "tiny_fsq"
    cmd = [sys.executable, "train.py", "--model", "fsq", "--config", str(TINY),
           "--train_data", str(index / "train.list"), "--cv_data", str(index / "dev.list"),
           "--model_dir", str(model_dir), *args.overrides]
    print(f"\n== training {TINY.relative_to(REPO)} on {args.corpus} (train split), {args.threads} thread(s); "
          f"log: {work / 'train.log'}", flush=True)
    start = time.perf_counter()
    run(cmd, env, work / "train.log")
    elapsed = time.perf_counter() - start
    checkpoints = sorted(model_dir.glob("step_*.pt"))
    if not checkpoints:
        sys.exit(f"train.py wrote no checkpoint in {model_dir}")
    last = checkpoints[-1]
    metrics = (last.parent / f"{last.stem}.yaml")
    print(f"trained in {elapsed:.0f} s wall -> {last.name}")
    if metrics.is_file():
        print(metrics.read_text().strip())
    return last


# ---------------------------------------------------------------------------------------------
# 3. What the model learned
# ---------------------------------------------------------------------------------------------


def corpus_split(corpus: Path, split: str) -> list[dict]:
    """Utterances of a split: utt, spk, wav path, text."""
    utt2spk = dict(line.split() for line in (corpus / "utt2spk").read_text().splitlines() if line.strip())
    items = []
    for utt in (corpus / "splits" / f"{split}.txt").read_text().split():
        spk = utt2spk[utt]
        wav = corpus / "wavs" / spk / f"{utt}.wav"
        items.append({"utt": utt, "spk": spk, "wav": wav, "text": wav.with_suffix(".txt").read_text().strip()})
    return items


def normalised_distance(a: list[int], b: list[int]) -> float:
    """Levenshtein distance over the longer length: 0 identical, 1 nothing in common."""
    return edit_distance(a, b) / max(len(a), len(b), 1)


def evaluate(args: argparse.Namespace, checkpoint: Path) -> None:
    """Extraction speed, CER, code usage and the content check of a trained checkpoint."""
    from dac_vae.safe_config import build_config, resolve_config

    _, config = load_checkpoint(checkpoint)
    config = config if config is not None else (checkpoint.parent / "config.yaml").read_text(encoding="utf-8")
    # A checkpoint's config is data: built with the allow-list unless --trust_config (dac_vae.safe_config).
    trust = args.trust_config
    resolved = resolve_config(config, trust=trust, source=str(checkpoint))
    built = build_config(model_config_text(resolved), trust=trust, source=str(checkpoint))
    text_tokenizer = built.get("text_tokenizer")
    tokenizer = OwnFSQTokenizer.from_checkpoint(checkpoint, trust_config=trust)
    model, sr = tokenizer.model, tokenizer.sample_rate
    splits = {s: corpus_split(args.corpus, s) for s in ("dev", "test", "heldout")}
    for item in itertools.chain(*splits.values()):
        item["audio"] = load_audio(item["wav"], sr)[0]

    # Extraction speed: batched tokenize over every evaluated utterance, length-sorted batches.
    items = sorted(itertools.chain(*splits.values()), key=lambda x: x["audio"].numel())
    batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
    tokenizer.tokenize([x["audio"] for x in batches[0]])  # warm-up
    start = time.perf_counter()
    for group in tqdm(batches, desc="tokenizing", unit="batch", leave=False):
        for item, ids in zip(group, tokenizer.tokenize([x["audio"] for x in group])):
            item["tokens"] = ids.tolist()
    elapsed = time.perf_counter() - start
    audio_seconds = sum(x["audio"].numel() for x in items) / sr
    print(f"\n== {checkpoint}")
    print(f"extraction: {audio_seconds:.1f} s of audio in {elapsed:.2f} s = {audio_seconds / elapsed:.0f}x real time "
          f"(batches of {args.batch}, {torch.get_num_threads()} threads)")

    print("{:<9}{:>6}{:>8}{:>12}{:>13}".format("split", "utts", "CER", "code usage", "perplexity"))
    for split, group in splits.items():
        errors = total = 0
        for i in range(0, len(group), args.batch):
            chunk = group[i : i + args.batch]
            audio = torch.nn.utils.rnn.pad_sequence([x["audio"] for x in chunk], batch_first=True)
            hyps, _ = model.transcribe(audio, torch.tensor([x["audio"].numel() for x in chunk]))
            for item, hyp in zip(chunk, hyps):
                ref = text_tokenizer.encode(item["text"])
                errors += edit_distance(ref, hyp)
                total += len(ref)
                item["hyp"] = text_tokenizer.decode(hyp)
        ids = torch.tensor(list(itertools.chain(*(x["tokens"] for x in group))))
        stats = codebook_stats(ids, torch.ones_like(ids, dtype=torch.bool), tokenizer.codebook_size)
        print("{:<9}{:>6}{:>8.3f}{:>12.4f}{:>13.1f}".format(
            split, len(group), errors / max(total, 1), stats["code_usage"].item(), stats["code_perplexity"].item()))
    for item in splits["dev"][:3]:
        pad = " " * len(item["utt"])
        print(f"  {item['utt']}: ref {text_tokenizer.normalise(item['text'])!r}\n  {pad}  hyp {item['hyp']!r}")

    # Content check: token sequences of one sentence in two voices vs two different sentences,
    # for the trained model and, as the reference point, the same architecture untrained.
    torch.manual_seed(0)
    untrained, _ = build(config)
    untrained.eval()
    for item in items:
        ids, _ = untrained.tokenize(item["audio"][None], torch.tensor([item["audio"].numel()]))
        item["untrained"] = ids[0].tolist()
    print("content check: mean normalised edit distance between the token sequences of utterances by different")
    print("speakers, same sentence vs different sentences (runs: repeated ids merged first); lower = closer")
    row = "{:<18}{:<10}{:>8}{:>8}{:>11}{:>8}{:>8}"
    print(row.format("utterances", "model", "same", "diff", "same runs", "diff", "pairs"))
    groups = (("dev+test+heldout", list(itertools.chain(*splits.values()))), ("heldout voices", splits["heldout"]))
    for label, group in groups:
        for key, name in (("tokens", "trained"), ("untrained", "untrained")):
            same, diff = ([], []), ([], [])
            for a, b in itertools.combinations(group, 2):
                if a["spk"] == b["spk"]:
                    continue
                bucket = same if a["text"] == b["text"] else diff
                bucket[0].append(normalised_distance(a[key], b[key]))
                bucket[1].append(normalised_distance(runs(a[key]), runs(b[key])))
            print(row.format(label, name, f"{mean(same[0]):.3f}", f"{mean(diff[0]):.3f}", f"{mean(same[1]):.3f}",
                             f"{mean(diff[1]):.3f}", f"{len(same[0])}/{len(diff[0])}"))
    # Retrieval: is an utterance's nearest utterance by another voice (merged runs) the same sentence?
    group = list(itertools.chain(*splits.values()))
    print("nearest other-voice utterance says the same sentence:", end="")
    for key in ("tokens", "untrained"):
        hits, chance, queries = 0, 0.0, 0
        for a in group:
            others = [b for b in group if b["spk"] != a["spk"]]
            matches = sum(b["text"] == a["text"] for b in others)
            if not matches:
                continue
            nearest = min(others, key=lambda b: normalised_distance(runs(a[key]), runs(b[key])))
            hits += nearest["text"] == a["text"]
            chance += matches / len(others)
            queries += 1
        print(f" {'trained' if key == 'tokens' else 'untrained'} {hits}/{queries}", end="")
    print(f" (chance {chance:.1f}/{queries})")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def runs(ids: list[int]) -> list[int]:
    """Merge repeated neighbours (``a a b b b a`` -> ``a b a``): speaking rate then matters less."""
    return [k for k, _ in itertools.groupby(ids)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (BENCH.md: 2)")
    parser.add_argument("--corpus", type=Path, default=REPO / "data", help="corpus with splits/ and utt2spk")
    parser.add_argument("--checkpoint", type=Path, help="evaluate this trained model instead of training one")
    parser.add_argument("--work_dir", type=Path, help="keep the index and training run here (default: a temp dir)")
    parser.add_argument("--batch", type=int, default=8, help="utterances per extraction batch")
    parser.add_argument("--peak_fp32", type=float, help="GFLOP/s (default: measured, bench/machine.py)")
    parser.add_argument("--peak_bf16", type=float, help="GFLOP/s (default: measured)")
    parser.add_argument("--skip_throughput", action="store_true")
    parser.add_argument("--skip_train", action="store_true", help="with --checkpoint unset: no evaluation either")
    parser.add_argument("--skip_eval", action="store_true")
    parser.add_argument("--trust_config", action="store_true",
                        help="build --checkpoint's config even if it names code outside the allow-list")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train.py overrides of the tiny config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.checkpoint is not None and not args.checkpoint.exists():
        sys.exit(f"error: --checkpoint not found: {args.checkpoint}")

    if not args.skip_throughput:
        throughput(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None and not args.skip_train:
            checkpoint = train_tiny(args, work)
        if checkpoint is not None and not args.skip_eval:
            evaluate(args, checkpoint)


if __name__ == "__main__":
    main()
