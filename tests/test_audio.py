"""speech.audio: loading any rate/channels/format, typed errors for bad files, mel shapes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speech.audio import AudioError, MelSpectrogram, load_audio, log_mel, resample, save_audio


def _tone(sr: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100])
@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_load_resamples_to_target(tmp_path: Path, sr: int, subtype: str):
    path = tmp_path / "x.wav"
    sf.write(str(path), _tone(sr), sr, subtype=subtype)
    wav, out_sr = load_audio(path, 24000)
    assert out_sr == 24000 and wav.dtype == torch.float32 and wav.ndim == 1
    assert abs(wav.numel() - 12000) <= 1
    # a 440 Hz tone stays a 440 Hz tone of the same amplitude
    spectrum = torch.fft.rfft(wav).abs()
    assert abs(int(spectrum.argmax()) * 24000 / wav.numel() - 440) < 5
    assert wav.abs().max() == pytest.approx(0.5, abs=0.02)


def test_load_keeps_native_rate_without_target(tmp_path: Path):
    path = tmp_path / "x.flac"
    sf.write(str(path), _tone(16000), 16000)
    wav, sr = load_audio(path)
    assert sr == 16000 and wav.numel() == 8000


def test_stereo_is_averaged_to_mono(tmp_path: Path):
    left, right = _tone(16000), np.zeros(8000, np.float32)
    path = tmp_path / "st.wav"
    sf.write(str(path), np.stack([left, right], 1), 16000, subtype="FLOAT")
    wav, _ = load_audio(path)
    np.testing.assert_allclose(wav.numpy(), left / 2, atol=1e-6)


def test_bad_files_raise_typed_error(tmp_path: Path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    good = tmp_path / "good.wav"
    sf.write(str(good), _tone(16000), 16000)
    truncated = tmp_path / "trunc.wav"
    truncated.write_bytes(good.read_bytes()[:30])  # header cut mid-way
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    for path, reason in [(empty, "empty"), (truncated, ""), (garbage, "decode"), (tmp_path / "none.wav", "not found")]:
        with pytest.raises(AudioError) as err:
            load_audio(path)
        assert err.value.path == str(path) and reason in err.value.reason


def test_save_roundtrip_and_clipping(tmp_path: Path):
    wav = torch.linspace(-1.5, 1.5, 2400)
    save_audio(tmp_path / "a" / "b.wav", wav, 24000)
    back, sr = load_audio(tmp_path / "a" / "b.wav")
    assert sr == 24000 and back.numel() == 2400
    assert back.max() <= 1.0 and back.min() >= -1.0
    np.testing.assert_allclose(back.numpy(), wav.clamp(-1, 1).numpy(), atol=1 / 32767 + 1e-6)


@pytest.mark.parametrize("n", [1, 255, 256, 24000, 24001])
def test_mel_shape(n: int):
    mel = MelSpectrogram(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=80)
    out = mel(torch.randn(2, n) * 0.1)
    assert out.shape == (2, 80, n // 256 + 1)  # centred STFT: one frame per hop, plus one
    assert torch.isfinite(out).all()


def test_log_mel_matches_module_and_fmax():
    wav = torch.randn(4800) * 0.1
    a = log_mel(wav, sample_rate=16000, n_fft=400, hop_length=160, n_mels=128, f_max=8000)
    b = MelSpectrogram(16000, 400, 160, 128, f_max=8000)(wav)
    assert a.shape == (128, 31)
    torch.testing.assert_close(a, b)
    assert a.min() >= math.log(1e-5) - 1e-6


def test_resample_identity():
    wav = torch.randn(100)
    assert resample(wav, 24000, 24000) is wav
