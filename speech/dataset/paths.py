"""Where per-utterance feature files live, one rule shared by every tool that writes or finds them.

Beside the audio: ``wavs/spk/utt.wav`` → ``wavs/spk/utt_fsq.pt``. In an output folder instead:
``OUT/<spk>/<utt>_fsq.pt`` (one folder per speaker keeps folders small at Emilia scale; utterance
ids are unique within an index, so names never collide).
"""
from __future__ import annotations

import os

__all__ = ["feature_path", "TOKEN_SUFFIX", "ALIGN_SUFFIX", "LATENT_SUFFIX"]

TOKEN_SUFFIX = "_fsq.pt"
ALIGN_SUFFIX = "_align.pt"  # beside the token file: speech tokens per text character (speech.tokenizer.align)
LATENT_SUFFIX = "_latent2x.pt"


def feature_path(item: dict, suffix: str, out_dir: str | os.PathLike | None = None) -> str:
    """Path of ``item``'s feature file with ``suffix`` (e.g. ``_fsq.pt``), beside its wav or under ``out_dir``."""
    if out_dir is None:
        return os.path.splitext(item["wav"])[0] + suffix
    spk = str(item.get("spk") or "_").replace(os.sep, "_")
    return os.path.join(os.fspath(out_dir), spk, str(item["utt"]).replace(os.sep, "_") + suffix)
