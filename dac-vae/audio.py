"""The codec's own small audio I/O (``dac_vae`` stands alone and cannot use ``speech.audio``).

Reading through soundfile (mono float32), resampling through torchaudio, writing 16-bit PCM.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

__all__ = ["AudioLoadError", "load_wav", "save_wav", "audio_duration"]


class AudioLoadError(Exception):
    """A file that cannot be used as audio; CLIs count and skip it with this reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def load_wav(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """Mono float32 ``[N]`` at ``sample_rate`` (channels averaged, resampled when needed)."""
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(path, "file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for undecodable input
        raise AudioLoadError(path, f"cannot decode ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioLoadError(path, "no samples")
    if not np.isfinite(data).all():
        raise AudioLoadError(path, "non-finite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header only (for length bucketing); raises AudioLoadError."""
    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise AudioLoadError(path, f"cannot read header ({exc})") from exc
    return info.frames / info.samplerate


def save_wav(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int) -> None:
    """Write ``[N]`` audio as 16-bit PCM (clipped to [-1, 1]), atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.clip(wav.detach().float().cpu().numpy(), -1.0, 1.0)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    sf.write(str(tmp), data, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
