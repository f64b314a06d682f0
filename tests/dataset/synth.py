"""Tiny synthetic corpora for the data tests: wav trees, indexes, token and latent files.

Every utterance is a constant signal at its own level (``level_of(k)``), so a test can tell from
any crop which file it came from.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from speech.audio import save_audio

SR = 24000


def level_of(k: int) -> float:
    """The constant sample value of the k-th utterance (distinct after 16-bit quantisation)."""
    return 0.02 + 0.01 * k


def write_corpus(
    root: Path, speakers: dict[str, int], seconds: tuple[float, float] = (0.6, 1.4), sample_rate: int = SR
) -> list[dict]:
    """``root/<spk>/<spk>_NNN.wav`` + ``.txt``; returns index entries (absolute wav paths)."""
    entries = []
    k = 0
    for spk, n in speakers.items():
        for i in range(n):
            utt = f"{spk}_{i:03d}"
            duration = seconds[0] + (seconds[1] - seconds[0]) * ((k * 7) % 11) / 10
            n_samples = int(round(duration * sample_rate))
            wav = root / spk / f"{utt}.wav"
            save_audio(wav, torch.full((n_samples,), level_of(k)), sample_rate)
            text = f"utterance {k} of speaker {spk}, café №{i}."
            (root / spk / f"{utt}.txt").write_text(text + "\n", encoding="utf-8")
            entries.append(
                {"utt": utt, "spk": spk, "wav": str(wav), "text": text, "duration": n_samples / sample_rate, "k": k}
            )
            k += 1
    return entries


def n_tokens_for(duration: float) -> int:
    """Tokens at 25 Hz for a duration (the s3tokenizer count, ``ceil``)."""
    return math.ceil(duration * 25)


def write_features(entry: dict, folder: Path, ratio: int = 2, dim: int = 8, extra_frames: int = 1) -> dict:
    """Write ``<utt>_fsq.pt`` and ``<utt>_latent{ratio}x.pt`` for ``entry``; returns it with feature fields.

    Token ``t`` has id ``t % 6561`` and latent frame ``f`` holds the value ``f`` in every channel, so a
    test can check which positions survived trimming.
    """
    n_tok = n_tokens_for(entry["duration"])
    n_lat = n_tok * ratio + extra_frames
    folder.mkdir(parents=True, exist_ok=True)
    token_path = folder / f"{entry['utt']}_fsq.pt"
    latent_path = folder / f"{entry['utt']}_latent{ratio}x.pt"
    torch.save(torch.arange(n_tok, dtype=torch.int32) % 6561, token_path)
    mu = torch.arange(n_lat, dtype=torch.float32).expand(dim, n_lat).clone()
    torch.save(
        {
            "mu": mu,
            "logs": torch.zeros(dim, n_lat),
            "sample_rate": SR,
            "hop": 480,
            "n_samples": 0,
            "checkpoint": "test",
        },
        latent_path,
    )
    return dict(entry, token_path=str(token_path), n_tokens=n_tok, latent_path=str(latent_path), n_latent_frames=n_lat)


def write_index(path: Path, entries: list[dict]) -> Path:
    """Entries as JSON lines (paths as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps({k: v for k, v in e.items() if k != "k"}, ensure_ascii=False) + "\n")
    return path


def write_data_list(folder: Path, entries: list[dict], num_shards: int) -> Path:
    """Split entries into ``num_shards`` shard files (uneven sizes) and a data.list naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    # Uneven cut points: shard sizes 1, 2, 3... then the rest, to exercise odd byte ranges.
    cuts = [0]
    for s in range(1, num_shards):
        cuts.append(min(len(entries), cuts[-1] + s))
    cuts.append(len(entries))
    for s in range(num_shards):
        name = f"shard_{s:03d}.jsonl"
        write_index(folder / name, entries[cuts[s] : cuts[s + 1]])
        names.append(name)
    (folder / "data.list").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return folder / "data.list"


def tree_digest(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root``: equal digests mean nothing was modified."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(root).rglob("*")) if p.is_file()}


def hash_tree(root: Path) -> dict[str, bytes]:
    """File contents under ``root`` (small test trees only)."""
    return {os.fspath(p): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
