#!/usr/bin/env python3
"""Build the JSON-lines utterance index (utt, spk, wav, text, duration) of a corpus.

Two layouts:
  * tree (the seed layout): ``name.wav`` (or .flac) + ``name.txt`` anywhere under the root;
  * Kaldi: ``wav.scp``, ``text`` (and usually ``utt2spk``) in the root; relative wav paths resolve
    against that folder; piped entries (``cmd |``) and ``segments`` are not supported.

The speaker comes from ``utt2spk`` (``--utt2spk``, or ``<root>/utt2spk`` when present), else from
a rule: the folder holding the audio (``--speaker_rule parent``) or the first group of
``--speaker_regex`` matched against the path relative to the root. Bad entries (unreadable,
truncated or empty audio, missing, empty or non-UTF-8 text, duplicate ids) are skipped and counted.
Nothing in the corpus is modified. Each ``--split`` file (utterance ids, one per line) gives
``OUT/<its name>.jsonl``; without splits everything goes to ``OUT/all.jsonl``. Entries are sorted
by speaker then utterance (the speaker-reference processor relies on neighbours sharing a voice)
and paths are written relative to OUT, so the index moves with the corpus.

    python tools/prepare_data.py data --out exp/data --split data/splits/train.txt data/splits/dev.txt
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import soundfile as sf
from tqdm import tqdm

from speech.dataset.context import SkipCounter

log = logging.getLogger("prepare_data")

AUDIO_EXTENSIONS = (".wav", ".flac")


class EntryError(Exception):
    """An utterance that cannot be indexed; ``reason`` is the short category counted in the summary."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def probe_audio(path: str) -> float:
    """Duration in seconds from the header, checking the file is readable and not truncated."""
    if not os.path.isfile(path):
        raise EntryError("audio file not found")
    if os.path.getsize(path) == 0:
        raise EntryError("empty audio file (0 bytes)")
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile raises several error types
        raise EntryError("undecodable audio", str(exc)) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise EntryError("audio without samples")
    if path.endswith(".wav"):
        # libsndfile silently reads a cut-off WAV as a shorter one; the header still declares the
        # original size, which the stdlib reader reports (for PCM WAVs, the only ones it opens).
        try:
            with wave.open(path, "rb") as w:
                declared = w.getnframes()
        except (wave.Error, EOFError):
            declared = None
        if declared is not None and declared > info.frames:
            raise EntryError("truncated audio", f"header declares {declared} frames, file holds {info.frames}")
    return info.frames / info.samplerate


def read_transcript(path: str) -> str:
    """The transcript of a ``.txt`` file: strict UTF-8 (BOM allowed), whitespace collapsed."""
    if not os.path.isfile(path):
        raise EntryError("no transcript file")
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EntryError("non-UTF-8 transcript", str(exc)) from None
    return normalize_text(text)


def normalize_text(text: str) -> str:
    """Whitespace runs (newlines included) become single spaces; an empty result is an error."""
    text = " ".join(text.split())
    if not text:
        raise EntryError("empty transcript")
    return text


def read_table(path: Path) -> dict[str, str]:
    """A Kaldi-style ``key value...`` file as a dict (value = rest of the line)."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                table[key] = value.strip()
    return table


def tree_entries(root: Path) -> Iterator[dict]:
    """Seed layout: every audio file under ``root`` with its sibling ``.txt``."""
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        yield {"utt": path.stem, "wav": str(path), "txt": str(path.with_suffix(".txt"))}


def kaldi_entries(root: Path, skips: SkipCounter) -> Iterator[dict]:
    """Kaldi layout: ``wav.scp`` + ``text``; the text is carried inline."""
    texts = read_table(root / "text") if (root / "text").is_file() else {}
    for utt, wav in sorted(read_table(root / "wav.scp").items()):
        if wav.endswith("|"):
            skips.skip("piped wav.scp entry (unsupported)", utt)
            continue
        path = Path(wav)
        yield {"utt": utt, "wav": str(path if path.is_absolute() else root / path), "text": texts.get(utt)}


class SpeakerRule:
    """Speaker of an utterance: ``utt2spk`` when given, else the parent folder or a regex group."""

    def __init__(self, root: Path, utt2spk: dict[str, str] | None, rule: str, regex: str | None):
        self.root, self.utt2spk, self.rule = root, utt2spk, rule
        self.regex = re.compile(regex) if regex else None
        if rule == "regex" and (self.regex is None or self.regex.groups < 1):
            raise ValueError("--speaker_rule regex needs --speaker_regex with one capturing group")

    def __call__(self, entry: dict) -> str:
        if self.utt2spk is not None:
            if entry["utt"] not in self.utt2spk:
                raise EntryError("utterance missing from utt2spk")
            return self.utt2spk[entry["utt"]]
        if self.rule == "parent":
            return Path(entry["wav"]).parent.name
        rel = os.path.relpath(entry["wav"], self.root)
        match = self.regex.search(rel)
        if not match:
            raise EntryError("speaker regex does not match the path")
        return match.group(1)


def build_entry(raw: dict, speaker: SpeakerRule) -> dict:
    """Probe one raw entry into an index entry; raises :class:`EntryError` when it is unusable."""
    text = (
        normalize_text(raw["text"])
        if raw.get("text") is not None
        else (read_transcript(raw["txt"]) if "txt" in raw else None)
    )
    if text is None:
        raise EntryError("no transcript")
    spk = speaker(raw)
    duration = probe_audio(raw["wav"])
    return {"utt": raw["utt"], "spk": spk, "wav": raw["wav"], "text": text, "duration": round(duration, 4)}


def collect(root: Path, layout: str, speaker: SpeakerRule, skips: SkipCounter, num_workers: int) -> dict[str, dict]:
    """All usable entries of the corpus by utterance id."""
    raws = list(kaldi_entries(root, skips) if layout == "kaldi" else tree_entries(root))
    entries: dict[str, dict] = {}

    def probe(raw: dict) -> dict | EntryError:
        try:
            return build_entry(raw, speaker)
        except EntryError as exc:
            return exc

    with ThreadPoolExecutor(max(1, num_workers)) as pool:  # header reads are I/O bound
        results = pool.map(probe, raws)
        for raw, result in tqdm(zip(raws, results, strict=False), total=len(raws), desc="probing", unit="utt"):
            if isinstance(result, EntryError):
                skips.skip(result.reason, raw["wav"], result.detail)
            elif result["utt"] in entries:
                skips.skip(
                    "duplicate utterance id", raw["wav"], f"{result['utt']} also at {entries[result['utt']]['wav']}"
                )
            else:
                entries[result["utt"]] = result
    return entries


def write_index(path: Path, entries: list[dict]) -> None:
    """JSON lines sorted by (spk, utt), paths relative to the index folder; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = os.path.abspath(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for entry in sorted(entries, key=lambda e: (e["spk"], e["utt"])):
            row = dict(entry, wav=os.path.relpath(os.path.abspath(entry["wav"]), base))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_split(path: Path) -> list[str]:
    """Utterance ids of a split file (first column; blank lines and ``#`` comments ignored)."""
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line.split()[0])
    return ids


def main(argv: list[str] | None = None) -> int:
    """Index the corpus (one file per split); returns the exit status (errors exit with one line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="corpus root (tree of wav+txt, or a Kaldi data dir)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the .jsonl indexes")
    parser.add_argument("--split", type=Path, nargs="*", default=[], help="utterance-id lists; one index per file")
    parser.add_argument(
        "--layout", choices=["auto", "tree", "kaldi"], default="auto", help="auto: kaldi if wav.scp exists"
    )
    parser.add_argument("--utt2spk", type=Path, help="utt2spk file (default: <corpus>/utt2spk when present)")
    parser.add_argument(
        "--speaker_rule", choices=["parent", "regex"], default="parent", help="speaker when there is no utt2spk"
    )
    parser.add_argument("--speaker_regex", help="with --speaker_rule regex: group 1 of this regex on the relative path")
    parser.add_argument("--num_workers", type=int, default=4, help="threads reading audio headers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    root = args.corpus
    if not root.is_dir():
        sys.exit(f"error: corpus folder not found: {root}")
    layout = args.layout if args.layout != "auto" else ("kaldi" if (root / "wav.scp").is_file() else "tree")
    utt2spk_path = args.utt2spk or (root / "utt2spk" if (root / "utt2spk").is_file() else None)
    if utt2spk_path is not None and not utt2spk_path.is_file():
        sys.exit(f"error: utt2spk not found: {utt2spk_path}")
    missing = [str(s) for s in args.split if not s.is_file()]
    if missing:
        sys.exit(f"error: split file not found: {missing[0]}")
    try:
        speaker = SpeakerRule(
            root, read_table(utt2spk_path) if utt2spk_path else None, args.speaker_rule, args.speaker_regex
        )
    except (ValueError, re.error) as exc:
        sys.exit(f"error: {exc}")

    skips = SkipCounter("prepare_data")
    entries = collect(root, layout, speaker, skips, args.num_workers)
    if not entries:
        sys.exit(f"error: no usable utterances under {root} ({skips.summary()})")
    splits = {s.stem: read_split(s) for s in args.split} or {"all": sorted(entries)}
    for name, ids in splits.items():
        chosen = [entries[u] for u in ids if u in entries]
        if len(chosen) < len(ids):
            log.warning("%s: %d listed utterance(s) are not in the usable corpus", name, len(ids) - len(chosen))
        out = args.out / f"{name}.jsonl"
        write_index(out, chosen)
        hours = sum(e["duration"] for e in chosen) / 3600
        speakers = len({e["spk"] for e in chosen})
        print(f"{name}: {len(chosen)} utterances, {hours:.3f} h, {speakers} speakers -> {out}")
    print(f"{layout} corpus {root}: {len(entries)} usable utterances; {skips.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
