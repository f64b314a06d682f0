#!/usr/bin/env python3
"""Does a cloned voice sound like its speaker, more than like the other held-out speakers?

    python recipes/demo/voice_match.py --real exp/demo/data/heldout.jsonl \
        --synth exp/demo/synth/list.jsonl exp/demo/synth_known/list.jsonl --out exp/demo/eval/voice_match.json

For every synthesized utterance (a synthesis list row with ``spk``; its wav is ``<list dir>/<utt>.wav``)
the speaker similarity (``speech.eval.speaker``, cosine of embeddings) to the mean embedding of each
held-out speaker's real recordings. Writes, per list and per asked-for speaker, the mean similarity to
every real speaker, and how many utterances are closest to their own speaker. A zero-shot system
that ignores the reference scores the same against every column.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from speech.audio import load_audio
from speech.eval.speaker import build_speaker_encoder, cosine_similarity


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def speaker_centroids(encoder, real_index: Path) -> dict[str, torch.Tensor]:
    """Mean (then re-normalised) embedding of each speaker's real recordings in a prepare_data index."""
    sums: dict[str, torch.Tensor] = {}
    for item in _rows(real_index):
        wav = (real_index.parent / item["wav"]).resolve()
        emb = encoder.embed(load_audio(wav, encoder.sample_rate)[0])
        sums[item["spk"]] = sums.get(item["spk"], 0) + emb.double()
    return {spk: s / s.norm() for spk, s in sums.items()}


def match(encoder, centroids: dict[str, torch.Tensor], synth_list: Path) -> dict:
    """Per asked-for speaker: mean SIM to each real speaker, utterances closest to their own."""
    table: dict[str, dict] = {}
    for row in _rows(synth_list):
        wav = synth_list.parent / f"{row['utt']}.wav"
        spk = row.get("spk")
        if spk not in centroids or not wav.is_file():
            continue
        emb = encoder.embed(load_audio(wav, encoder.sample_rate)[0])
        sims = {other: cosine_similarity(emb, c) for other, c in centroids.items()}
        entry = table.setdefault(spk, {"utterances": 0, "closest_own": 0, "sim": {o: 0.0 for o in centroids}})
        entry["utterances"] += 1
        entry["closest_own"] += int(max(sims, key=sims.get) == spk)
        for other, value in sims.items():
            entry["sim"][other] += value
    for entry in table.values():
        entry["sim"] = {o: v / entry["utterances"] for o, v in entry["sim"].items()}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True, help="index of the real recordings (held-out speakers)")
    parser.add_argument("--synth", type=Path, nargs="+", required=True, help="synthesis lists (wavs beside them)")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--spk", default="resemblyzer", help="speaker encoder (speech.eval.speaker backends)")
    args = parser.parse_args()
    for path in [args.real, *args.synth]:
        if not path.is_file():
            print(f"error: not found: {path}", file=sys.stderr)
            return 2
    encoder = build_speaker_encoder(args.spk)
    centroids = speaker_centroids(encoder, args.real)
    result = {"speaker_encoder": args.spk, "lists": {str(p): match(encoder, centroids, p) for p in args.synth}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, table in result["lists"].items():
        for spk, entry in table.items():
            sims = ", ".join(f"{o} {v:.3f}" for o, v in entry["sim"].items())
            print(f"{name}: {spk} ({entry['utterances']} utts, {entry['closest_own']} closest to own): {sims}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
