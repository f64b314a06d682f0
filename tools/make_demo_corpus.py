#!/usr/bin/env python3
"""Speak the embedded demo corpus in data/ with Debian's flite and espeak-ng voices.

Writes the seed layout ``wavs/<spk>/<utt>.wav`` + ``<utt>.txt`` (24 kHz mono 16-bit), ``utt2spk``,
fixed utterance splits in ``splits/`` (train/dev/test for the seen speakers, heldout for the
held-out speakers) and ``MANIFEST.sha256``. The same flite/espeak-ng versions give the same files,
byte for byte. Users never need this script: its output is committed.

    apt-get install -y flite espeak-ng
    python tools/make_demo_corpus.py --out data
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from speech.audio import load_audio, save_audio

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: data)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences per voice (for tests)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seconds = build(args.out, args.limit)
    size = sum(p.stat().st_size for p in (args.out / "wavs").rglob("*.wav"))
    summary = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    print(f"wrote {args.out}: {summary}; {size / 2**20:.1f} MiB of wav")


if __name__ == "__main__":
    main()
