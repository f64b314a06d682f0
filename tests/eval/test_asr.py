"""ASR backends: the offline default on real corpus speech vs. white noise; clear errors otherwise."""
from __future__ import annotations

import pytest
import torch

from speech.eval.asr import ASR_BACKENDS, PocketSphinxASR, build_asr
from speech.eval.deps import MissingDependency
from speech.eval.wer import error_rates

# Short test-split utterances of three voices (ASR is the slow part: decode a handful only).
UTTS = ("kal16_015", "awb_002", "rms_027")


@pytest.mark.slow
def test_pocketsphinx_recognises_clean_corpus_speech_far_better_than_noise(test_items, load, pocketsphinx_asr) -> None:
    items = [item for item in test_items if item.utt in UTTS]
    assert len(items) == len(UTTS)
    refs, clean, noise = [], [], []
    g = torch.Generator().manual_seed(0)
    for item in items:
        wav = load(item, pocketsphinx_asr.sample_rate)
        refs.append(item.text)
        clean.append(pocketsphinx_asr.transcribe(wav))
        noise.append(pocketsphinx_asr.transcribe(0.1 * torch.randn(wav.shape, generator=g)))
    clean_wer = error_rates(refs, clean).wer_mean
    noise_wer = error_rates(refs, noise).wer_mean
    print(f"pocketsphinx WER on {len(items)} clean corpus utterances: {clean_wer:.1%}; on white noise: {noise_wer:.1%}")
    print("\n".join(f"  {r!r} -> {h!r}" for r, h in zip(refs, clean)))
    assert clean_wer < 0.35
    assert noise_wer > 0.85
    assert noise_wer - clean_wer > 0.5


def test_pocketsphinx_handles_silence_and_rejects_other_languages(pocketsphinx_asr) -> None:
    assert pocketsphinx_asr.transcribe(torch.zeros(8000)) == ""
    with pytest.raises(ValueError, match="English model only"):
        PocketSphinxASR(language="de")


def test_build_asr_errors_are_one_clear_line(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown ASR backend 'kaldi'"):
        build_asr("kaldi")
    with pytest.raises(FileNotFoundError, match="model directory not found: .*nowhere"):
        build_asr(f"hf-whisper:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="no local model path given"):
        build_asr("hf-whisper")
    for name, module in (("faster-whisper", "faster_whisper"), ("whisper", "whisper")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(MissingDependency, match="pip install"):
                build_asr(f"{name}:{tmp_path}")
    assert set(ASR_BACKENDS) == {"pocketsphinx", "hf-whisper", "faster-whisper", "whisper"}
