#!/usr/bin/env python3
"""Lists for the demo's synthesis and evaluation stages, from a prepare_data index.

    python recipes/demo/make_synth_list.py exp/demo/data/heldout.jsonl --out exp/demo/synth/list.jsonl
    python recipes/demo/make_synth_list.py exp/demo/data/heldout.jsonl --texts_from exp/demo/data/train.jsonl \
        --per_speaker 10 --out exp/demo/synth_trained/list.jsonl   # held-out voices, trained sentences
    python recipes/demo/make_synth_list.py exp/demo/data/test.jsonl --wav_paths   # one absolute wav path a line
    python recipes/demo/make_synth_list.py exp/demo/data/test.jsonl --prompts_from exp/demo/data/train.jsonl \
        --out exp/demo/synth_test/list.jsonl   # seen voices, test sentences, prompted by training clips

The synthesis list has one line per utterance: ``utt, text, wav`` (the ground truth, for evaluation)
and ``prompt_wav``: another utterance of the same speaker (the next one in the index, cyclically), so
the voice is cloned from a clip that does not contain the target sentence. With ``--prompts_from``
the prompts are that other index's clips of the same speaker, in turn (a speaker with one utterance
in the index is then fine; one with none in the other index is an error).

With ``--texts_from`` each speaker of the index instead speaks ``--per_speaker`` sentences of that
other index (e.g. the LM's training sentences: a new voice saying known text); ``wav`` is then the
other index's recording of the sentence (another voice: the real recording an ASR is compared on),
``spk`` the speaker whose voice is asked for, and every prompt is one of that speaker's own clips.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_index(path: Path) -> list[dict]:
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for item in items:  # prepare_data writes paths relative to the index file
        item["wav"] = str((path.parent / item["wav"]).resolve())
    return items


def synth_list(items: list[dict], prompts: list[dict] | None = None) -> list[dict]:
    by_spk: dict[str, list[dict]] = {}
    for item in items:
        by_spk.setdefault(item["spk"], []).append(item)
    rows = []
    if prompts is not None:
        clips: dict[str, list[dict]] = {}
        for item in prompts:
            clips.setdefault(item["spk"], []).append(item)
        for spk, utts in by_spk.items():
            if spk not in clips:
                raise SystemExit(f"error: speaker {spk} has no utterance in the prompt index")
            for i, item in enumerate(utts):
                rows.append({"utt": item["utt"], "spk": spk, "text": item["text"], "wav": item["wav"],
                             "prompt_wav": clips[spk][i % len(clips[spk])]["wav"]})
        return rows
    for utts in by_spk.values():
        if len(utts) < 2:
            raise SystemExit(f"error: speaker {utts[0]['spk']} has one utterance; a prompt needs another")
        for i, item in enumerate(utts):
            prompt = utts[(i + 1) % len(utts)]
            rows.append({"utt": item["utt"], "spk": item["spk"], "text": item["text"], "wav": item["wav"],
                         "prompt_wav": prompt["wav"]})
    return rows


def known_text_list(items: list[dict], texts: list[dict], per_speaker: int) -> list[dict]:
    """Each speaker of ``items`` speaks ``per_speaker`` distinct sentences of ``texts`` (spread evenly
    over them, a different slice for each speaker), prompted by its own clips in turn."""
    by_spk: dict[str, list[dict]] = {}
    for item in items:
        by_spk.setdefault(item["spk"], []).append(item)
    unique: dict[str, dict] = {}
    for item in sorted(texts, key=lambda x: x["utt"]):
        unique.setdefault(item["text"], item)
    sentences = list(unique.values())
    need = per_speaker * len(by_spk)
    if need > len(sentences):
        raise SystemExit(f"error: {need} sentences asked for, the text index has {len(sentences)} distinct ones")
    stride = len(sentences) / need
    picks = [sentences[int(i * stride)] for i in range(need)]
    rows = []
    for s, (spk, clips) in enumerate(by_spk.items()):
        for k in range(per_speaker):
            source = picks[s * per_speaker + k]
            rows.append({"utt": f"{spk}_known{k:02d}", "spk": spk, "text": source["text"], "wav": source["wav"],
                         "prompt_wav": clips[k % len(clips)]["wav"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path, help="JSON-lines index from tools/prepare_data.py")
    parser.add_argument("--out", type=Path, help="synthesis list to write (JSON lines)")
    parser.add_argument("--wav_paths", action="store_true", help="print the index's wav paths instead")
    parser.add_argument("--texts_from", type=Path, help="index whose sentences the speakers speak instead of their own")
    parser.add_argument("--per_speaker", type=int, default=10, help="sentences per speaker with --texts_from")
    parser.add_argument("--prompts_from", type=Path, help="index whose clips of the same speaker are the prompts")
    args = parser.parse_args()
    items = read_index(args.index)
    if args.wav_paths:
        print("\n".join(item["wav"] for item in items))
        return
    if args.out is None:
        parser.error("--out is required unless --wav_paths is given")
    if args.texts_from:
        rows = known_text_list(items, read_index(args.texts_from), args.per_speaker)
    else:
        rows = synth_list(items, read_index(args.prompts_from) if args.prompts_from else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} utterances to {args.out}")


if __name__ == "__main__":
    main()
