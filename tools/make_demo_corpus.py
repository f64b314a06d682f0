#!/usr/bin/env python3
"""Speak the embedded demo corpus in data/, or a larger one (--hours), with Debian's flite and espeak-ng voices.

Writes the seed layout ``wavs/<spk>/<utt>.wav`` + ``<utt>.txt`` (24 kHz mono 16-bit, silence
trimmed, peak-normalised), ``utt2spk``, utterance splits in ``splits/`` (train/dev/test for the seen
speakers, heldout for the held-out speakers, ``heldout_speakers.txt``) and ``MANIFEST.sha256``. The
same flite/espeak-ng versions give the same files, byte for byte. Users never need the first form:
its output is committed.

    apt-get install -y flite espeak-ng
    python tools/make_demo_corpus.py --out data                               # the committed demo corpus
    python tools/make_demo_corpus.py --hours 1.5 --output_dir exp/corpus_1h5 [--seed 0] [--nj 2]

``--hours H``: about H hours of sentences from ``tools/sentences.py`` (a seeded grammar, CC0), spoken
by 5 flite voices and 11 espeak-ng variants (seen) and 3 more espeak-ng variants (held out). Every
sentence belongs to one split: a training sentence is spoken by two seen speakers, a dev, test or
held-out sentence by one speaker, and no sentence of one split is inside (as a word sequence) a
sentence of another, so test and held-out WER is on text no model trained on. The plan depends on
--hours and --seed only; synthesis runs on --nj processes, skips utterances already written (an
interrupted run resumes) and skips, counts and logs (``failed.tsv``) empty or failed syntheses.
``corpus.json`` records the request and the per-split counts and seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech.audio import load_audio, save_audio  # noqa: E402
from tools.sentences import iter_sentences, sentence_key  # noqa: E402

log = logging.getLogger("make_demo_corpus")

SAMPLE_RATE = 24000

# Original sentences written for this corpus (dedicated to the public domain, CC0): short and long,
# with numbers and punctuation, so text normalisation and length handling get exercised.
SENTENCES = [
    "Good morning, everyone.",
    "Thank you, Anna!",
    "Where is my coat?",
    "The rain stopped.",
    "Close the window.",
    "We counted 12 boats.",
    "Is the shop open?",
    "She bought three apples.",
    "The train leaves at 7:45.",
    "Can you hear the birds?",
    "My sister plays the violin.",
    "He wrote 2024 on the board.",
    "Turn left, then walk straight ahead.",
    "The river runs through the old town.",
    "Add 250 grams of flour and two eggs.",
    "Nobody expected it to sell out so quickly!",
    "Our neighbours painted their door bright yellow.",
    "The library is closed until the 3rd of May.",
    "It took us 45 minutes to climb the hill.",
    "Do you think it will snow this week?",
    "The lamp flickered twice, and then went dark.",
    "Every summer, the village holds a fair with music.",
    "The old clock in the hall strikes nine each evening.",
    "He folded the map carefully and put it in his pocket.",
    "The bridge was finished in 1889, after six years of work.",
    "Blue and yellow make green.",
    "Sound is slower than light.",
    "The baker wakes at four o'clock.",
    "On a clear night you can see many stars.",
    "When the wind finally changed in the afternoon, the sailors raised the second sail, "
    "and the little boat moved quickly towards the harbour.",
]
# Sentences only the held-out speakers say: synthesis tests use text no model trained on.
HELDOUT_SENTENCES = [
    "The kettle is boiling.",
    "Three cats slept on the porch.",
    "Please send the letter by Friday.",
    "The garden gate squeaks.",
    "We walked 8 kilometres along the beach.",
    "A small boat drifted towards the island.",
    "Read chapter 6 aloud, please.",
    "After the storm, the streets were covered in leaves.",
    "Fresh paint, wet floors, open windows: it smelled like spring.",
    "The orchestra tuned up while the audience found their seats.",
]


# More training sentences, from the seeded grammar of tools/sentences.py (CC0), each spoken by two
# seen voices (utterances <speaker>_x<k>): with 30 sentences only, the tiny LM and flow learn the
# sentences rather than the mapping (dev flow STOI 0.48 -> 0.51 with 150 such sentences, same models).
EXTRA_TRAIN_SENTENCES = 150
EXTRA_SEED = 1
EXTRA_MAX_WORDS = 14
EXTRA_SPEAKERS_PER_SENTENCE = 2


def extra_sentences(n: int = EXTRA_TRAIN_SENTENCES) -> list[str]:
    """The first ``n`` grammar sentences (seed ``EXTRA_SEED``) that are neither a listed sentence nor
    contain or sit inside a held-out one (as word sequences)."""
    held = [sentence_key(t) for t in HELDOUT_SENTENCES]
    listed = {sentence_key(t) for t in SENTENCES}
    out: list[str] = []
    for text in iter_sentences(EXTRA_SEED, EXTRA_MAX_WORDS, exclude=listed):
        if len(out) == n:
            break
        key = sentence_key(text)
        if not any(_contains(h, key) or _contains(key, h) for h in held):
            out.append(text)
    return out


@dataclass(frozen=True)
class Voice:
    speaker: str
    engine: str  # "flite" or "espeak-ng"
    voice: str
    speed: int = 165  # espeak-ng words per minute
    pitch: int = 50  # espeak-ng pitch 0..99

    def command(self, text: str, out: Path) -> list[str]:
        if self.engine == "flite":
            return ["flite", "-voice", self.voice, "-t", text, "-o", str(out)]
        return ["espeak-ng", "-v", self.voice, "-s", str(self.speed), "-p", str(self.pitch), "-w", str(out), text]


SEEN_VOICES = [
    Voice("kal16", "flite", "kal16"),
    Voice("slt", "flite", "slt"),
    Voice("rms", "flite", "rms"),
    Voice("awb", "flite", "awb"),
    Voice("enus_f3", "espeak-ng", "en-us+f3", speed=170, pitch=55),
    Voice("enrp_m4", "espeak-ng", "en-gb-x-rp+m4", speed=170, pitch=40),
]
HELDOUT_VOICES = [
    Voice("ensc_m7", "espeak-ng", "en-gb-scotland+m7", speed=155, pitch=45),
    Voice("en029_f2", "espeak-ng", "en-029+f2", speed=165, pitch=60),
]


def trim_and_normalise(wav: torch.Tensor, sample_rate: int, pad_s: float = 0.05, peak: float = 0.9) -> torch.Tensor:
    """Cut leading/trailing silence (40 dB under the peak, keeping ``pad_s``) and scale to ``peak``."""
    level = wav.abs().max().clamp_min(1e-8)
    loud = torch.nonzero(wav.abs() > level * 0.01).squeeze(1)
    pad = int(pad_s * sample_rate)
    start = max(int(loud[0]) - pad, 0) if loud.numel() else 0
    end = min(int(loud[-1]) + pad + 1, wav.numel()) if loud.numel() else wav.numel()
    wav = wav[start:end]
    return wav * (peak / level)


def speak(voice: Voice, text: str, out_wav: Path, tmp: Path) -> float:
    """Synthesize ``text`` to a 24 kHz mono 16-bit wav; returns its duration in seconds."""
    raw = tmp / "raw.wav"
    subprocess.run(voice.command(text, raw), check=True, capture_output=True)
    wav, _ = load_audio(raw, SAMPLE_RATE)
    wav = trim_and_normalise(wav, SAMPLE_RATE)
    save_audio(out_wav, wav, SAMPLE_RATE)
    return wav.numel() / SAMPLE_RATE


def plan(limit: int | None = None) -> list[tuple[str, Voice, str, str]]:
    """Every utterance as ``(utt, voice, text, split)``; the split of each is fixed forever."""
    items = []
    for k, voice in enumerate(SEEN_VOICES):
        # Each speaker holds out different sentences, so every sentence is still trained on.
        dev = {(5 * k + j) % len(SENTENCES) for j in range(3)}
        test = {(5 * k + 15 + j) % len(SENTENCES) for j in range(3)}
        for i, text in enumerate(SENTENCES[:limit]):
            split = "dev" if i in dev else "test" if i in test else "train"
            items.append((f"{voice.speaker}_{i:03d}", voice, text, split))
    for k, text in enumerate(extra_sentences()[:limit]):
        for r in range(EXTRA_SPEAKERS_PER_SENTENCE):  # consecutive voices: two different speakers
            voice = SEEN_VOICES[(EXTRA_SPEAKERS_PER_SENTENCE * k + r) % len(SEEN_VOICES)]
            items.append((f"{voice.speaker}_x{k:03d}", voice, text, "train"))
    for voice in HELDOUT_VOICES:
        for i, text in enumerate(HELDOUT_SENTENCES[:limit]):
            items.append((f"{voice.speaker}_h{i:02d}", voice, text, "heldout"))
    return items


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, limit: int | None = None) -> dict[str, float]:
    """Write the corpus under ``out``; returns per-split total seconds."""
    for tool in ("flite", "espeak-ng"):
        if shutil.which(tool) is None:
            raise SystemExit(f"error: {tool} not found (apt-get install -y flite espeak-ng)")
    items = plan(limit)
    seconds: dict[str, float] = {}
    splits: dict[str, list[str]] = {"train": [], "dev": [], "test": [], "heldout": []}
    with tempfile.TemporaryDirectory() as tmp:
        for utt, voice, text, split in tqdm(items, desc="speaking", unit="utt"):
            wav_path = out / "wavs" / voice.speaker / f"{utt}.wav"
            seconds[split] = seconds.get(split, 0.0) + speak(voice, text, wav_path, Path(tmp))
            wav_path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
            splits[split].append(utt)
    (out / "utt2spk").write_text("".join(f"{u} {v.speaker}\n" for u, v, _, _ in items), encoding="utf-8")
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for split, utts in splits.items():
        (out / "splits" / f"{split}.txt").write_text("".join(u + "\n" for u in utts), encoding="utf-8")
    (out / "splits" / "heldout_speakers.txt").write_text(
        "".join(v.speaker + "\n" for v in HELDOUT_VOICES), encoding="utf-8"
    )
    files = sorted(p for p in (out / "wavs").rglob("*") if p.is_file())
    manifest = "".join(f"{sha256(p)}  {p.relative_to(out).as_posix()}\n" for p in files)
    (out / "MANIFEST.sha256").write_text(manifest, encoding="utf-8")
    return seconds


# ---------------------------------------------------------------------------------------------
# --hours: a larger corpus from the sentence generator
HOURS_SEEN_VOICES = [
    Voice("kal", "flite", "kal"),
    Voice("kal16", "flite", "kal16"),
    Voice("slt", "flite", "slt"),
    Voice("rms", "flite", "rms"),
    Voice("awb", "flite", "awb"),
    Voice("enus_f3", "espeak-ng", "en-us+f3", speed=170, pitch=55),
    Voice("enrp_m4", "espeak-ng", "en-gb-x-rp+m4", speed=170, pitch=40),
    Voice("enus_m1", "espeak-ng", "en-us+m1", speed=160, pitch=45),
    Voice("enus_f4", "espeak-ng", "en-us+f4", speed=175, pitch=65),
    Voice("engb_m3", "espeak-ng", "en-gb+m3", speed=160, pitch=35),
    Voice("engb_f1", "espeak-ng", "en-gb+f1", speed=165, pitch=60),
    Voice("enlan_m2", "espeak-ng", "en-gb-x-gbclan+m2", speed=155, pitch=50),
    Voice("enwm_f5", "espeak-ng", "en-gb-x-gbcwmd+f5", speed=160, pitch=58),
    Voice("en029_m5", "espeak-ng", "en-029+m5", speed=165, pitch=42),
    Voice("ensc_f2", "espeak-ng", "en-gb-scotland+f2", speed=160, pitch=62),
    Voice("enus_klatt", "espeak-ng", "en-us+klatt2", speed=165, pitch=50),
]
HOURS_HELDOUT_VOICES = [
    Voice("ensc_m7", "espeak-ng", "en-gb-scotland+m7", speed=155, pitch=45),
    Voice("en029_f2", "espeak-ng", "en-029+f2", speed=165, pitch=60),
    Voice("enus_m6", "espeak-ng", "en-us+m6", speed=150, pitch=38),
]
# Share of the corpus's seconds per split, and the fewest utterances each needs (held out: two per
# speaker, one to speak and one to prompt with).
SPLIT_SHARE = {"train": 0.86, "dev": 0.03, "test": 0.05, "heldout": 0.06}
SPLIT_MIN = {"train": 4, "dev": 2, "test": 2, "heldout": 2 * len(HOURS_HELDOUT_VOICES)}
TRAIN_SPEAKERS_PER_SENTENCE = 2
# Seconds per utterance from its word count (19 voices: 0.32-0.40 s/word each): the plan never synthesizes,
# so it can be made (and checked) without flite or espeak-ng; corpus.json has the real seconds.
SECONDS_PER_WORD, SECONDS_BASE = 0.35, 0.0  # fit: 0.348 s/word, intercept -0.01 s (428 utterances)


def estimate_seconds(text: str) -> float:
    return SECONDS_BASE + SECONDS_PER_WORD * len(sentence_key(text).split())


def _contains(outer: str, inner: str) -> bool:
    return f" {inner} " in f" {outer} "


def plan_hours(hours: float, seed: int = 0) -> list[tuple[str, Voice, str, str]]:
    """``(utt, voice, text, split)`` for about ``hours`` of speech; fixed by (hours, seed).

    Sentences are taken in order from ``iter_sentences(seed)``; each goes to the split furthest below
    its share of the seconds so far (the minimum counts first). A sentence that contains, or is
    contained in, a sentence of another split (as a word sequence) is dropped, so no test or
    held-out sentence is inside a training utterance. Training sentences are spoken by
    ``TRAIN_SPEAKERS_PER_SENTENCE`` different seen speakers, the others by one; speakers take turns
    (seen ones in an order shuffled by the seed), so dev and test speakers are always training
    speakers too.
    """
    if hours <= 0:
        raise ValueError("--hours must be positive")
    rng = random.Random(seed)
    seen = list(HOURS_SEEN_VOICES)
    rng.shuffle(seen)
    target = hours * 3600.0
    keys: dict[str, list[str]] = {s: [] for s in SPLIT_SHARE}
    seconds = dict.fromkeys(SPLIT_SHARE, 0.0)
    count = dict.fromkeys(SPLIT_SHARE, 0)
    turn = dict.fromkeys(SPLIT_SHARE, 0)
    items = []
    stream = iter_sentences(seed)  # the same sentences `tools/sentences.py --seed S` prints
    while sum(seconds.values()) < target or any(count[s] < SPLIT_MIN[s] for s in SPLIT_SHARE):
        text = next(stream)
        key = sentence_key(text)
        short = [s for s in SPLIT_SHARE if count[s] < SPLIT_MIN[s]]
        total = max(sum(seconds.values()), 1.0)
        split = short[0] if short else max(SPLIT_SHARE, key=lambda s: SPLIT_SHARE[s] * total - seconds[s])
        others = [k for s, ks in keys.items() if s != split for k in ks]
        if any(_contains(k, key) or _contains(key, k) for k in others):
            continue
        keys[split].append(key)
        repeats = TRAIN_SPEAKERS_PER_SENTENCE if split == "train" else 1
        for _ in range(repeats):
            voices = HOURS_HELDOUT_VOICES if split == "heldout" else seen
            voice = voices[turn[split] % len(voices)]
            turn[split] += 1
            items.append((f"{voice.speaker}_{len(items):06d}", voice, text, split))
            seconds[split] += estimate_seconds(text)
            count[split] += 1
    return items


def _speak_job(job: tuple[str, Voice, str, str]) -> tuple[str, float | None, str]:
    """Worker: synthesize one utterance to its wav + txt; returns (utt, seconds or None, why not)."""
    utt, voice, text, wav_path = job
    torch.set_num_threads(1)
    wav_path = Path(wav_path)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        try:
            subprocess.run(voice.command(text, raw), check=True, capture_output=True, timeout=120)
            wav, _ = load_audio(raw, SAMPLE_RATE)
        except subprocess.TimeoutExpired:
            return utt, None, "synthesizer timed out"
        except subprocess.CalledProcessError as exc:
            return utt, None, f"synthesizer failed (exit {exc.returncode}): {exc.stderr.decode(errors='replace')[:200]}"
        except Exception as exc:  # an unreadable or empty output file
            return utt, None, f"no audio: {exc}"
        if wav.numel() == 0 or float(wav.abs().max()) < 1e-3:
            return utt, None, "silent output"
        wav = trim_and_normalise(wav, SAMPLE_RATE)
        if wav.numel() < 0.3 * SAMPLE_RATE:
            return utt, None, f"too short ({wav.numel() / SAMPLE_RATE:.2f} s)"
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        part = wav_path.with_name(f".{wav_path.stem}.part.wav")  # soundfile wants the extension
        save_audio(part, wav, SAMPLE_RATE)
        os.replace(part, wav_path)  # the .txt is written last: a wav without it is redone on resume
        txt_part = wav_path.with_name(f".{wav_path.stem}.part.txt")
        txt_part.write_text(text + "\n", encoding="utf-8")
        os.replace(txt_part, wav_path.with_suffix(".txt"))
    return utt, wav.numel() / SAMPLE_RATE, ""


def build_hours(out: Path, hours: float, seed: int = 0, nj: int = 2, progress: bool = True) -> dict:
    """Write about ``hours`` of speech under ``out`` (see the module docstring); returns corpus.json's dict."""
    for tool in ("flite", "espeak-ng"):
        if shutil.which(tool) is None:
            raise SystemExit(f"error: {tool} not found (apt-get install -y flite espeak-ng)")
    items = plan_hours(hours, seed)
    out.mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}
    todo = []
    for utt, voice, text, _ in items:
        wav_path = out / "wavs" / voice.speaker / f"{utt}.wav"
        txt_path = wav_path.with_suffix(".txt")
        if wav_path.is_file() and txt_path.is_file() and txt_path.read_text(encoding="utf-8").strip() == text:
            durations[utt] = sf.info(str(wav_path)).duration
        else:
            todo.append((utt, voice, text, str(wav_path)))
    resumed = len(durations)
    failed: dict[str, str] = {}
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, nj)) as pool:
            futures = [pool.submit(_speak_job, job) for job in todo]
            bar = tqdm(as_completed(futures), total=len(futures), desc="speaking", unit="utt", disable=not progress)
            for future in bar:
                utt, secs, why = future.result()
                if secs is None:
                    failed[utt] = why
                    log.warning("skipped %s: %s", utt, why)
                else:
                    durations[utt] = secs
    kept = [it for it in items if it[0] in durations]
    (out / "utt2spk").write_text("".join(f"{u} {v.speaker}\n" for u, v, _, _ in kept), encoding="utf-8")
    (out / "splits").mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in SPLIT_SHARE:
        utts = [u for u, _, _, s in kept if s == split]
        (out / "splits" / f"{split}.txt").write_text("".join(u + "\n" for u in utts), encoding="utf-8")
        stats[split] = {"utterances": len(utts), "sentences": len({t for u, _, t, s in kept if s == split}),
                        "speakers": len({v.speaker for u, v, _, s in kept if s == split}),
                        "seconds": round(sum(durations[u] for u in utts), 1)}
    (out / "splits" / "heldout_speakers.txt").write_text(
        "".join(v.speaker + "\n" for v in HOURS_HELDOUT_VOICES), encoding="utf-8")
    by_utt = {u: (v, t) for u, v, t, _ in items}
    rows = "".join(f"{u}\t{by_utt[u][0].speaker}\t{why}\t{by_utt[u][1]}\n" for u, why in sorted(failed.items()))
    (out / "failed.tsv").write_text(rows, encoding="utf-8")
    files = sorted(p for p in (out / "wavs").rglob("*") if p.is_file())
    wanted = {f"{u}{ext}" for u, *_ in kept for ext in (".wav", ".txt")}
    files = [p for p in files if p.name in wanted]  # leftovers of another plan in the same folder are not listed
    manifest = "".join(f"{sha256(p)}  {p.relative_to(out).as_posix()}\n" for p in files)
    (out / "MANIFEST.sha256").write_text(manifest, encoding="utf-8")
    info = {"hours_requested": hours, "seed": seed, "hours": round(sum(durations.values()) / 3600, 3),
            "utterances": len(kept), "planned": len(items), "failed": len(failed), "resumed": resumed,
            "seen_speakers": [v.speaker for v in HOURS_SEEN_VOICES],
            "heldout_speakers": [v.speaker for v in HOURS_HELDOUT_VOICES], "splits": stats,
            "flite": _version(["flite", "--version"]), "espeak-ng": _version(["espeak-ng", "--version"])}
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "version" in line.lower() or "eSpeak" in line), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", "--output_dir", dest="out", type=Path, default=Path("data"),
                        help="output folder (default: data)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences per voice (for tests; "
                        "demo corpus only)")
    parser.add_argument("--hours", type=float, default=None,
                        help="write a larger corpus of about this many hours from the sentence generator "
                        "instead of the demo corpus")
    parser.add_argument("--seed", type=int, default=0, help="with --hours: sentence and speaker-order seed (default 0)")
    parser.add_argument("--nj", type=int, default=2, help="with --hours: parallel synthesis processes (default 2)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.hours is not None:
        if args.limit is not None:
            parser.error("--limit is for the demo corpus, not --hours")
        if args.out == Path("data"):
            parser.error("--hours would overwrite the committed corpus in data/: give --output_dir")
        info = build_hours(args.out, args.hours, args.seed, args.nj, progress=not args.no_progress)
        summary = ", ".join(f"{k} {v['utterances']} utt / {v['seconds']:.0f} s" for k, v in info["splits"].items())
        print(f"wrote {args.out}: {info['hours']:.3f} h, {info['utterances']} utterances ({summary}); "
              f"{info['resumed']} already there, {info['failed']} failed (failed.tsv)")
        return
    seconds = build(args.out, args.limit)
    size = sum(p.stat().st_size for p in (args.out / "wavs").rglob("*.wav"))
    summary = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    print(f"wrote {args.out}: {summary}; {size / 2**20:.1f} MiB of wav")


if __name__ == "__main__":
    main()
