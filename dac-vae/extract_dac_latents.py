"""Extract DAC-VAE posterior latents for a corpus: one ``<name>_latent{r}x.pt`` per utterance.

    python dac-vae/extract_dac_latents.py --config configs/dac_vae.yaml --checkpoint exp/codec/step_100000.pt \\
        --index data/index.jsonl --output_dir data/latents --skip_existing
    torchrun --nproc_per_node 4 -m dac_vae.extract_dac_latents ...    # utterances split over ranks

Inputs: JSON-lines index files (``utt``, ``wav``, optional ``spk``, ``duration``; relative
``wav`` paths resolve against the index file's folder) or folders searched for ``*.wav``.
Outputs: beside each wav (``wavs/spk/utt.wav`` -> ``wavs/spk/utt_latent2x.pt``) or, with
``--output_dir``, ``OUT/<spk>/<utt>_latent2x.pt`` for an index and ``OUT/<subfolders>/<stem>...``
for a folder (the same rule as ``speech.dataset.paths.feature_path``). The suffix follows the
configured ratio (``_latent3x.pt`` for hop 320). File format and the statistics file
(``latent2x_stats.json``, per-dimension mean/std of ``mu`` over every utterance of the set, the
skipped existing ones included) are described in :mod:`dac_vae.latents`.

Utterances are batched by length; each is encoded exactly as it would be alone (padding masked),
so the batch composition and the number of ranks never change a file. ``--skip_existing`` never
rewrites or deletes a readable file; unreadable inputs are skipped, counted and logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from dac_vae.audio import AudioLoadError, audio_duration, load_wav
from dac_vae.checkpoint import CodecLoadError, checkpoint_id, load_codec
from dac_vae.latents import (
    LatentStats,
    codec_tag,
    latent_suffix,
    length_batches,
    load_latent_file,
    save_latent_file,
    stats_filename,
)
from dac_vae.model import DACVAE

log = logging.getLogger("dac_vae.extract")


@dataclass
class Utterance:
    """One input: its name, wav path and where its latent file goes."""

    utt: str
    wav: Path
    out: Path
    seconds: float = 0.0


def _read_index(path: Path, suffix: str, output_dir: Path | None, problems: list[str]) -> Iterator[Utterance]:
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            utt, wav = str(entry["utt"]), Path(entry["wav"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append(f"{path}:{lineno}: bad index line ({type(exc).__name__}: {exc})")
            continue
        if not wav.is_absolute():
            wav = path.parent / wav
        if output_dir is None:
            out = wav.with_name(wav.stem + suffix)
        else:
            spk = str(entry.get("spk") or "_").replace(os.sep, "_")
            out = output_dir / spk / (utt.replace(os.sep, "_") + suffix)
        duration = entry.get("duration")
        yield Utterance(utt, wav, out, float(duration) if isinstance(duration, (int, float)) else -1.0)


def _read_folder(root: Path, suffix: str, output_dir: Path | None) -> Iterator[Utterance]:
    for wav in sorted(root.rglob("*.wav")):
        rel = wav.relative_to(root)
        out = wav.with_name(wav.stem + suffix) if output_dir is None else output_dir / rel.parent / (wav.stem + suffix)
        yield Utterance(wav.stem, wav, out, -1.0)


def list_utterances(
    inputs: Sequence[str], suffix: str, output_dir: Path | None, problems: list[str]
) -> list[Utterance]:
    """Every utterance of the index files and folders in ``inputs`` (duplicates of an output path dropped)."""
    found: list[Utterance] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found.extend(_read_folder(path, suffix, output_dir))
        elif path.is_file():
            found.extend(_read_index(path, suffix, output_dir, problems))
        else:
            raise FileNotFoundError(f"input not found (neither an index file nor a folder): {path}")
    unique: dict[Path, Utterance] = {}
    for u in found:
        if u.out in unique:
            problems.append(f"{u.wav}: same output {u.out} as {unique[u.out].wav}; kept the first")
            continue
        unique[u.out] = u
    return list(unique.values())


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class _BatchLoader(torch.utils.data.Dataset):
    """Loads the wavs of one length bucket (run in DataLoader workers)."""

    def __init__(self, utts: list[Utterance], batches: list[list[int]], sample_rate: int):
        self.utts, self.batches, self.sample_rate = utts, batches, sample_rate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        loaded, failed = [], []
        for j in self.batches[i]:
            try:
                loaded.append((self.utts[j], load_wav(self.utts[j].wav, self.sample_rate)))
            except AudioLoadError as exc:
                failed.append((self.utts[j], exc.reason))
        return loaded, failed


def _identity(x):
    return x


@torch.inference_mode()
def encode_padded(
    model: DACVAE, wavs: list[torch.Tensor], device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Encode a list of ``[N_i]`` waveforms as one padded batch -> per item ``(mu, logs)`` ``[D, T_i]``."""
    lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
    audio = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
    mu, logs, latent_len = model.encode(audio, lengths.to(device))
    mu, logs = mu.float().cpu(), logs.float().cpu()
    return [(mu[i, :, :t], logs[i, :, :t]) for i, t in enumerate(latent_len.cpu().tolist())]


def extract(args: argparse.Namespace, loader: Callable[..., DACVAE] = load_codec) -> dict:
    """Run the extraction for this rank; returns the summary counts.

    ``loader(config, checkpoint, device, trust_config=)`` builds the codec (flowae passes its own)."""
    rank, world, local_rank = _dist_env()
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    model = loader(args.config, args.checkpoint, device, trust_config=args.trust_config)
    ckpt = checkpoint_id(args.checkpoint)
    suffix = latent_suffix(codec_tag(model))
    output_dir = Path(args.output_dir) if args.output_dir else None
    problems: list[str] = []
    utts = list_utterances(args.inputs, suffix, output_dir, problems)
    for u in utts:  # durations from headers when the index has none, for bucketing
        if u.seconds < 0:
            try:
                u.seconds = audio_duration(u.wav)
            except AudioLoadError:
                u.seconds = 0.0  # unreadable: fails (and is counted) when loaded
    utts.sort(key=lambda u: (-u.seconds, str(u.out)))
    bad_entries = len(problems)
    mine = utts[rank::world]

    stats = LatentStats(model.latent_dim)
    counts = {"extracted": 0, "skipped_existing": 0, "failed": 0, "other_checkpoint": 0, "audio_seconds": 0.0}
    todo: list[Utterance] = []
    for u in mine:
        if args.skip_existing and u.out.is_file():
            try:
                record = load_latent_file(u.out)
                if record["mu"].shape[0] != model.latent_dim:
                    raise ValueError(f"latent dim {record['mu'].shape[0]} != {model.latent_dim}")
            except Exception as exc:  # unreadable or foreign: extract again (atomically replaced)
                log.warning("%s: existing file unusable (%s); extracting again", u.out, exc)
                todo.append(u)
                continue
            stats.add(record["mu"])
            counts["skipped_existing"] += 1
            if record["checkpoint"] != ckpt:  # kept as asked, but the set now mixes two codecs
                counts["other_checkpoint"] += 1
                log.warning("%s was written by %s, not %s (kept: --skip_existing)", u.out, record["checkpoint"], ckpt)
        else:
            todo.append(u)

    sr = model.sample_rate
    lengths = [max(1, int(u.seconds * sr)) for u in todo]
    batches = length_batches(lengths, int(args.batch_seconds * sr), args.max_batch)
    loader = torch.utils.data.DataLoader(
        _BatchLoader(todo, batches, sr), batch_size=None, num_workers=args.num_workers, collate_fn=_identity
    )
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"extract[{rank}]", unit="utt", disable=rank != 0 or args.quiet, file=sys.stderr)
    for loaded, failed in loader:
        for u, reason in failed:
            problems.append(f"{u.wav}: {reason}")
            counts["failed"] += 1
        if loaded:
            results = encode_padded(model, [w for _, w in loaded], device)
            for (u, wav), (mu, logs) in zip(loaded, results):
                save_latent_file(u.out, mu, logs, sr, model.hop, wav.shape[0], ckpt)
                stats.add(mu)
                counts["extracted"] += 1
                counts["audio_seconds"] += wav.shape[0] / sr
        bar.update(len(loaded) + len(failed))
    bar.close()
    counts["wall_seconds"] = time.perf_counter() - start
    for p in problems:
        log.warning("skipped %s", p)

    if world > 1:
        stats.all_reduce()  # every rank's utterances count in the one statistics file
    stats_path = Path(args.stats) if args.stats else _default_stats_path(args, output_dir, codec_tag(model))
    if rank == 0:
        if stats.n_utts:
            stats.write(stats_path, sr, model.hop, ckpt)
        else:
            log.warning("no latents: statistics not written")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    counts["stats"] = str(stats_path)
    counts["bad_entries"] = bad_entries
    return counts


def _default_stats_path(args: argparse.Namespace, output_dir: Path | None, ratio: int | str) -> Path:
    if output_dir is not None:
        return output_dir / stats_filename(ratio)
    first = Path(args.inputs[0])
    return (first if first.is_dir() else first.parent) / stats_filename(ratio)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Extract DAC-VAE latents (mu, logs) per utterance, plus mean/std statistics of mu.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="codec config (YAML with a dac_vae: section)")
    parser.add_argument(
        "--checkpoint", required=True, help="trained weights: trainer checkpoint, state dict or .safetensors"
    )
    parser.add_argument(
        "--index",
        "--input",
        dest="inputs",
        nargs="+",
        required=True,
        metavar="INDEX_OR_DIR",
        help="JSON-lines index file(s) (utt, wav) and/or folders of .wav files",
    )
    parser.add_argument("--output_dir", help="where to write (default: beside each wav)")
    parser.add_argument("--stats", help="statistics file (default: OUTPUT_DIR/latent{r}x_stats.json)")
    parser.add_argument("--skip_existing", action="store_true", help="keep readable existing latent files as they are")
    parser.add_argument("--batch_seconds", type=float, default=240.0, help="padded audio seconds per batch")
    parser.add_argument("--max_batch", type=int, default=64, help="most utterances per batch")
    parser.add_argument("--num_workers", type=int, default=2, help="audio loading workers")
    parser.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda:0...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--trust_config", action="store_true",
        help="build the config even if it names code outside the allow-list (only for a config you trust)",
    )
    return parser


def main(argv: Sequence[str] | None = None, loader: Callable[..., DACVAE] = load_codec) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = extract(args, loader)
    except (CodecLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rate = counts["audio_seconds"] / max(counts["wall_seconds"], 1e-9)
    other = f" ({counts['other_checkpoint']} from another checkpoint!)" if counts["other_checkpoint"] else ""
    rank, world, _ = _dist_env()
    print(
        f"rank {rank}/{world}: extracted {counts['extracted']}, kept existing {counts['skipped_existing']}{other}, "
        f"failed {counts['failed']}, bad index entries {counts['bad_entries']}; "
        f"{counts['audio_seconds']:.1f} s of audio in {counts['wall_seconds']:.1f} s ({rate:.1f}x real time); "
        f"statistics: {counts['stats']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
