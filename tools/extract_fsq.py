#!/usr/bin/env python3
"""Extract 25 Hz FSQ speech tokens for every utterance of one or more JSON-lines indexes.

Writes ``name_fsq.pt`` (a 1-D int32 tensor of ids) beside each wav, or ``OUT/<spk>/<utt>_fsq.pt``
with ``--out_dir``. ``--tokenizer s3`` uses the s3tokenizer package (speech_tokenizer_v2_25hz)
with weights from ``--checkpoint`` (CosyVoice2's ``speech_tokenizer_v2.onnx`` or a converted
``.pt``; nothing is downloaded); ``--tokenizer own`` the project's trained FSQ tokenizer.

Utterances are sorted by length and batched by padded seconds of audio; audio is read with
soundfile in ``--num_workers`` loader processes. Under torchrun every process takes its share
(``RANK`` / ``WORLD_SIZE``) and uses GPU ``LOCAL_RANK`` when there is one. Files are written
atomically; ``--skip_existing`` leaves finished ones alone, so a killed run simply resumes.
Nothing is ever deleted. Unreadable audio is skipped and counted.

``--align`` (own tokenizer) also writes ``name_align.pt`` beside each token file: speech tokens per
character of the transcript, from a forced alignment of the tokenizer's CTC head (the aligned LM
layout reads them; :mod:`speech.tokenizer.align`). A text that does not fit its frames gets none.

    python tools/extract_fsq.py --index exp/data/train.jsonl --checkpoint speech_tokenizer_v2.onnx --skip_existing
    torchrun --nproc_per_node 8 tools/extract_fsq.py --index ... --checkpoint ... --skip_existing
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from dac_vae.safe_config import UntrustedConfigError
from tqdm import tqdm

from speech.audio import AudioError, load_audio
from speech.dataset.context import SkipCounter
from speech.dataset.dataset import read_index
from speech.dataset.paths import ALIGN_SUFFIX, TOKEN_SUFFIX, feature_path
from speech.tokenizer import SpeechTokenizerError, tokenizer_class

log = logging.getLogger("extract_fsq")


def make_batches(items: list[dict], batch_seconds: float, max_batch: int) -> list[list[dict]]:
    """Consecutive groups of length-sorted items whose padded length stays within ``batch_seconds``."""
    batches: list[list[dict]] = []
    current: list[dict] = []
    longest = 0.0
    for item in items:
        duration = float(item.get("duration") or 0.0)
        grown = max(longest, duration)
        if current and ((len(current) + 1) * grown > batch_seconds or len(current) >= max_batch):
            batches.append(current)
            current, grown = [], duration
        current.append(item)
        longest = grown
    if current:
        batches.append(current)
    return batches


class AudioBatches(torch.utils.data.Dataset):
    """Batch ``i`` → list of (item, waveform or the reason it could not be read), in loader workers."""

    def __init__(self, batches: list[list[dict]], sample_rate: int):
        self.batches, self.sample_rate = batches, sample_rate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[tuple[dict, torch.Tensor | str]]:
        out = []
        for item in self.batches[i]:
            try:
                wav, _ = load_audio(item["wav"], self.sample_rate)
                out.append((item, wav))
            except AudioError as exc:
                out.append((item, exc.reason))
        return out


def _as_is(batch: list) -> list:
    """Collate nothing: a loader item is already a batch (a module-level function so spawn can pickle it)."""
    return batch


def save_atomic(tensor: torch.Tensor, path: str) -> None:
    """``torch.save`` to a temporary name, then rename: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(tensor, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Tokenize this rank's share of the index; returns the exit status (errors exit with one line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--index", type=Path, nargs="+", required=True, help="JSON-lines index file(s) (tools/prepare_data.py)"
    )
    parser.add_argument("--tokenizer", default="s3", help="backend: s3 | own (or module:Class)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="local weights of the tokenizer")
    parser.add_argument(
        "--config", help="backend config (s3: optional YAML of ModelConfig fields; own: its training config)"
    )
    parser.add_argument("--out_dir", type=Path, help="write OUT/<spk>/<utt>_fsq.pt instead of beside the wav")
    parser.add_argument("--skip_existing", action="store_true", help="leave utterances whose token file exists")
    parser.add_argument("--align", action="store_true",
                        help="also write <utt>_align.pt: tokens per text character (own tokenizer, its CTC head)")
    parser.add_argument("--batch_seconds", type=float, default=300.0, help="padded seconds of audio per batch")
    parser.add_argument("--max_batch", type=int, default=64, help="most utterances per batch")
    parser.add_argument("--num_workers", type=int, default=2, help="audio reading processes")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument(
        "--trust_config", action="store_true",
        help="own: build the checkpoint's config even if it names code outside the allow-list (only one you trust)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    missing = [str(p) for p in args.index if not p.is_file()]
    if missing:
        sys.exit(f"error: index not found: {missing[0]}")
    try:
        backend = tokenizer_class(args.tokenizer)
        trust = {"trust_config": True} if args.trust_config else {}  # a module:Class backend may not know it
        tokenizer = backend.from_checkpoint(args.checkpoint, args.config, device=device, **trust)
    except UntrustedConfigError as exc:  # refused: one line, exit 2 like a usage error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SpeechTokenizerError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    if args.align and getattr(tokenizer, "chars", None) is None:
        sys.exit(f"error: --align needs a tokenizer with a CTC alphabet (--tokenizer own), not {args.tokenizer}")

    skips = SkipCounter(f"extract_fsq rank {rank}/{world}" if world > 1 else "extract_fsq")
    items = [item for path in args.index for item in read_index(path, skips)]
    for item in items:
        item["out"] = feature_path(item, TOKEN_SUFFIX, args.out_dir)
        item["align_out"] = item["out"][: -len(TOKEN_SUFFIX)] + ALIGN_SUFFIX
    # Split the length-sorted list round-robin before looking at the disk: every rank gets the
    # same share whatever the others have already written.
    items.sort(key=lambda x: (-float(x.get("duration") or 0.0), x["out"]))
    mine = items[rank::world]

    def done(item: dict) -> bool:
        return os.path.exists(item["out"]) and (not args.align or os.path.exists(item["align_out"]))

    existing = sum(done(x) for x in mine) if args.skip_existing else 0
    todo = [x for x in mine if not (args.skip_existing and done(x))]
    batches = make_batches(todo, args.batch_seconds, args.max_batch)
    loader = DataLoader(
        AudioBatches(batches, tokenizer.sample_rate),
        batch_size=None,
        num_workers=args.num_workers,
        collate_fn=_as_is,
    )

    written, aligned, seconds, start = 0, 0, 0.0, time.perf_counter()
    progress = tqdm(
        total=sum(float(x.get("duration") or 0.0) for x in todo),
        unit="s",
        desc="tokenizing",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",
        disable=rank != 0,
    )
    for batch in loader:
        good = []
        for item, wav in batch:
            if isinstance(wav, str):
                skips.skip(f"unreadable audio ({wav.split(':')[0]})", item["wav"], wav)
            else:
                good.append((item, wav))
        if args.align:  # one encoder pass gives the ids and the CTC alignment
            texts = [item.get("text") if isinstance(item.get("text"), str) else "" for item, _ in good]
            codes, alignments = tokenizer.tokenize_and_align([wav for _, wav in good], texts)
        else:
            codes = tokenizer.tokenize([wav for _, wav in good]) if good else []
            alignments = [None] * len(good)
        for (item, wav), ids, chars in zip(good, codes, alignments, strict=False):
            if ids.numel() == 0:
                skips.skip("too short to tokenize", item["wav"], f"{wav.shape[0] / tokenizer.sample_rate:.3f} s")
                continue
            if int(ids.min()) < 0 or int(ids.max()) >= tokenizer.codebook_size:
                skips.skip("tokenizer produced out-of-range ids", item["wav"])
                continue
            save_atomic(ids.to(torch.int32), item["out"])
            if args.align:
                if chars is None or int(chars.sum()) != ids.numel():
                    skips.skip("no alignment (text does not fit its frames)", item["wav"])
                else:
                    save_atomic(chars, item["align_out"])
                    aligned += 1
            written += 1
            seconds += wav.shape[0] / tokenizer.sample_rate
        progress.update(sum(float(item.get("duration") or 0.0) for item, _ in batch))
    progress.close()
    elapsed = time.perf_counter() - start
    where = f"rank {rank}/{world}: " if world > 1 else ""
    print(
        f"{where}wrote {written} token files ({seconds / 3600:.3f} h of audio in {elapsed:.1f} s, "
        f"{seconds / max(elapsed, 1e-9):.1f} s of audio per s)" + (f", {aligned} alignments" if args.align else "")
        + f", {existing} already existed, {skips.summary()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
