"""Real-time factor: wall-clock seconds spent per second of audio produced (RTF < 1 = faster than real time)."""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import soundfile as sf

__all__ = ["RTFResult", "audio_seconds", "real_time_factor", "time_command"]


@dataclass
class RTFResult:
    """What a timed synthesis run produced."""

    wall_s: float
    audio_s: float
    n_files: int

    @property
    def rtf(self) -> float:
        return real_time_factor(self.wall_s, self.audio_s)

    def as_dict(self) -> dict:
        return {**asdict(self), "rtf": self.rtf}


def real_time_factor(wall_s: float, audio_s: float) -> float:
    """``wall_s / audio_s``; NaN when no audio was produced."""
    return wall_s / audio_s if audio_s > 0 else float("nan")


def audio_seconds(paths: Iterable[str | Path]) -> float:
    """Total duration of audio files, read from their headers (no decoding)."""
    return sum(sf.info(str(p)).duration for p in paths)


def _snapshot(out_dir: Path, pattern: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out_dir.rglob(pattern)} if out_dir.is_dir() else {}


def time_command(command: str | Sequence[str], out_dir: str | Path, pattern: str = "*.wav") -> RTFResult:
    """Run a synthesis command and time it; the audio counted is what it wrote or rewrote under ``out_dir``.

    The command runs without a shell (a string is split with ``shlex``); a non-zero exit raises
    ``subprocess.CalledProcessError``. The wall time includes the command's start-up (model loading):
    time a batch, not one sentence, for a fair figure.
    """
    out_dir = Path(out_dir)
    args = shlex.split(command) if isinstance(command, str) else list(command)
    before = _snapshot(out_dir, pattern)
    start = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - start
    after = _snapshot(out_dir, pattern)
    written = [p for p, mtime in after.items() if before.get(p) != mtime]
    return RTFResult(wall_s=wall, audio_s=audio_seconds(written), n_files=len(written))
