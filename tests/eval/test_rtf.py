"""RTF: wall time of a command over the audio it wrote."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from speech.eval.rtf import audio_seconds, real_time_factor, time_command


def test_time_command_counts_only_the_audio_it_wrote(tmp_path) -> None:
    sf.write(tmp_path / "old.wav", np.zeros(16000, dtype=np.float32), 16000)  # untouched: not counted
    script = (
        "import sys, time, numpy as np, soundfile as sf; time.sleep(0.3); "
        "[sf.write(f'{sys.argv[1]}/new{i}.wav', np.zeros(24000 * (i + 1), dtype=np.float32), 24000) for i in range(2)]"
    )
    result = time_command([sys.executable, "-c", script, str(tmp_path)], tmp_path)
    assert result.n_files == 2
    assert result.audio_s == pytest.approx(3.0)
    assert result.wall_s >= 0.3
    assert result.rtf == pytest.approx(result.wall_s / 3.0)
    assert result.as_dict()["rtf"] == result.rtf


def test_failing_command_raises(tmp_path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        time_command(f"{sys.executable} -c 'raise SystemExit(3)'", tmp_path)


def test_rtf_helpers(tmp_path) -> None:
    assert real_time_factor(2.0, 4.0) == 0.5
    assert math.isnan(real_time_factor(1.0, 0.0))
    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    assert audio_seconds([tmp_path / "a.wav"]) == pytest.approx(0.5)
