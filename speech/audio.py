"""Audio I/O and features shared by every stage.

File I/O goes through soundfile (fast start, no FFmpeg); resampling and mel through torchaudio.
Shapes: a waveform is a 1-D float32 tensor in [-1, 1]; a mel is ``[n_mels, T]``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

__all__ = ["AudioError", "load_audio", "save_audio", "resample", "MelSpectrogram", "log_mel"]


class AudioError(Exception):
    """An audio file that cannot be used; the data pipeline turns it into a counted skip."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def resample(wav: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (a no-op when the rates match)."""
    if orig_sr == target_sr:
        return wav
    return torchaudio.functional.resample(wav, orig_sr, target_sr)


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read any soundfile-readable file as mono float32, resampled to ``sample_rate`` if given.

    Returns ``(wav [N], sample_rate)``. Raises :class:`AudioError` for a missing, empty, truncated
    or undecodable file, or one whose samples are not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, ValueError...
        raise AudioError(path, f"cannot decode: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sample_rate is not None and sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, sr


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write mono (``[N]``) or multi-channel (``[C, N]``) audio as 16-bit PCM, clipping to [-1, 1]."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    if wav.ndim == 2:
        wav = wav.T
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sample_rate, subtype="PCM_16")


class MelSpectrogram(torch.nn.Module):
    """Log-mel front end: ``[..., N] -> [..., n_mels, ceil(N / hop)]`` (natural log, floored)."""

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        win_length: int | None = None,
        power: float = 1.0,
        center: bool = True,
        floor: float = 1e-5,
    ):
        super().__init__()
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.center = center
        self.floor = floor
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length or n_fft,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            power=power,
            center=center,
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # STFT in fp32 even under autocast: bf16 FFTs lose the quiet bins.
        n = wav.shape[-1]
        wav = wav.float()
        if self.center and n <= self.n_fft // 2:
            # Reflect padding needs more samples than half a window: zero-pad very short clips and
            # keep the frame count of the unpadded signal.
            wav = torch.nn.functional.pad(wav, (0, self.n_fft // 2 + 1 - n))
        with torch.autocast(device_type=wav.device.type, enabled=False):
            mel = self.mel(wav)
        if self.center:
            mel = mel[..., : n // self.hop_length + 1]
        return torch.log(torch.clamp(mel, min=self.floor))


@functools.lru_cache(maxsize=8)
def _cached_mel(sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_max: float | None) -> MelSpectrogram:
    return MelSpectrogram(sample_rate, n_fft, hop_length, n_mels, f_max=f_max)


def log_mel(
    wav: torch.Tensor,
    sample_rate: int = 24000,
    n_fft: int = 1024,
    hop_length: int = 256,
    n_mels: int = 80,
    f_max: float | None = None,
) -> torch.Tensor:
    """Functional form of :class:`MelSpectrogram` for one-off use (the module is cached per setting)."""
    mel = _cached_mel(sample_rate, n_fft, hop_length, n_mels, f_max).to(wav.device)
    return mel(wav)
