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


@pytest.mark.slow
def test_pocketsphinx_transcripts_do_not_depend_on_decoding_order(test_items, load, pocketsphinx_asr) -> None:
    # These two utterances came out differently after other utterances before the front end was reset.
    items = [item for item in test_items if item.utt in ("enus_f3_005", "enrp_m4_012")]
    wavs = [load(item, pocketsphinx_asr.sample_rate) for item in items]
    forward = [pocketsphinx_asr.transcribe(w) for w in wavs]
    backward = [pocketsphinx_asr.transcribe(w) for w in reversed(wavs)][::-1]
    fresh = [PocketSphinxASR().transcribe(w) for w in wavs]
    assert forward == backward == fresh
    assert isinstance(pocketsphinx_asr.transcribe(torch.zeros(8000)), str)  # silence: no crash


def test_pocketsphinx_rejects_other_languages_without_a_model() -> None:
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


def _byte_chars() -> list[str]:
    """The byte-level BPE alphabet (one printable character per byte value, GPT-2 convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _tiny_whisper(path) -> None:
    """A randomly initialised two-layer Whisper with a byte-level tokenizer, saved as a HF folder."""
    transformers = pytest.importorskip("transformers")
    import json

    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    vocab = {c: i for i, c in enumerate(_byte_chars() + specials)}
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = transformers.WhisperTokenizer(
        str(path / "vocab.json"), str(path / "merges.txt"), additional_special_tokens=specials[1:]
    )
    transformers.WhisperProcessor(transformers.WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(path)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    ids = dict(pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot)
    config = transformers.WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=80,
        encoder_layers=1,
        decoder_layers=1,
        d_model=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        **ids,
    )
    model = transformers.WhisperForConditionalGeneration(config)
    model.generation_config = transformers.GenerationConfig(
        **ids,
        lang_to_id={"<|en|>": vocab["<|en|>"]},
        is_multilingual=True,
        max_length=16,
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        begin_suppress_tokens=[],
        suppress_tokens=[vocab[s] for s in specials],  # never stop early: always decode some text
    )
    model.save_pretrained(path)


@pytest.mark.slow
def test_hf_whisper_backend_runs_a_local_model_folder(tmp_path) -> None:
    _tiny_whisper(tmp_path)
    asr = build_asr(f"hf-whisper:{tmp_path}")
    text = asr.transcribe(torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1)
    assert isinstance(text, str) and len(text) > 0  # random weights: some text, decoded without special tokens
    assert "<|" not in text
