"""tools/extract_fsq.py end to end with a small s3tokenizer model built from a ModelConfig, saved to
a local file and loaded back through the real loading path."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import s3tokenizer
import torch
from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

from speech.audio import load_audio
from speech.dataset import read_index
from speech.tokenizer import SpeechTokenizerError, tokenizer_class
from speech.tokenizer.s3 import S3Tokenizer
from tests.dataset.synth import write_corpus, write_index
from tools.extract_fsq import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_s3(tmp_path_factory):
    """A 2-layer, 128-wide speech_tokenizer_v2 with random weights, saved as a state dict."""
    torch.manual_seed(0)
    model = S3TokenizerV2(
        "speech_tokenizer_v2_25hz", ModelConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=2)
    ).eval()
    path = tmp_path_factory.mktemp("s3") / "tiny_s3.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture
def index(tmp_path):
    entries = write_corpus(tmp_path / "wavs", {"a": 4, "b": 3}, seconds=(0.3, 2.6))
    entries = [dict(e, text=e["text"]) for e in entries]
    broken = tmp_path / "wavs" / "b" / "broken.wav"
    broken.write_bytes(b"")
    entries.append({"utt": "broken", "spk": "b", "wav": str(broken), "text": "x", "duration": 1.0})
    return write_index(tmp_path / "index.jsonl", entries), entries[:-1]


def test_tokens_at_25_hz_in_range_equal_to_the_model_and_resumable(tiny_s3, index, tmp_path, capsys):
    model, weights = tiny_s3
    index_path, entries = index
    out_dir = tmp_path / "fsq"
    argv = [
        "--index",
        str(index_path),
        "--checkpoint",
        str(weights),
        "--out_dir",
        str(out_dir),
        "--batch_seconds",
        "4",
        "--num_workers",
        "1",
    ]
    assert main(argv) == 0
    assert "wrote 7 token files" in capsys.readouterr().out
    for e in entries:
        path = out_dir / e["spk"] / f"{e['utt']}_fsq.pt"
        tokens = torch.load(path, weights_only=True)
        assert tokens.dim() == 1 and tokens.dtype in (torch.int32, torch.int64)
        assert abs(len(tokens) - math.ceil(e["duration"] * 25)) <= 1, (e["utt"], len(tokens), e["duration"])
        assert 0 <= int(tokens.min()) and int(tokens.max()) <= 6560
        # The file holds what the original in-memory model computes for this utterance alone.
        wav, _ = load_audio(e["wav"], 16000)
        mel = s3tokenizer.log_mel_spectrogram(wav)
        codes, n = model.quantize(mel[None], torch.tensor([mel.shape[1]]))
        assert torch.equal(tokens.long(), codes[0, : int(n[0])].long())

    stamps = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*.pt")}
    assert main(argv[:-2] + ["--num_workers", "0", "--skip_existing"]) == 0
    out = capsys.readouterr().out
    assert "wrote 0 token files" in out and "7 already existed" in out
    assert {p: p.stat().st_mtime_ns for p in out_dir.rglob("*.pt")} == stamps
    assert "unreadable audio (empty file (0 bytes)): 1" in out


def test_writes_beside_the_wav_and_shards_across_ranks(tiny_s3, index, monkeypatch, capsys):
    _, weights = tiny_s3
    index_path, entries = index
    done = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        main(["--index", str(index_path), "--checkpoint", str(weights), "--num_workers", "0"])
        now = {e["utt"] for e in entries if os.path.exists(e["wav"][:-4] + "_fsq.pt")}
        done.append(now - set().union(*done) if done else now)
    assert done[0] and done[1] and not done[0] & done[1]
    assert done[0] | done[1] == {e["utt"] for e in entries}
    assert "rank 1/2: wrote" in capsys.readouterr().out


def test_batched_tokenize_equals_one_by_one(tiny_s3):
    _, weights = tiny_s3
    tok = tokenizer_class("s3").from_checkpoint(weights)
    assert isinstance(tok, S3Tokenizer) and tok.sample_rate == 16000 and tok.token_rate == 25
    wavs = [torch.randn(n) * 0.1 for n in (16000, 5000, 40000, 100, 12345)]
    batched = tok.tokenize(wavs)
    for wav, ids in zip(wavs, batched, strict=False):
        assert torch.equal(ids, tok.tokenize([wav])[0])
        assert ids.dtype == torch.int64
    assert batched[3].numel() == 0  # 100 samples: shorter than one token


def test_config_is_read_from_the_weights_and_overrides_are_checked(tiny_s3):
    model, weights = tiny_s3
    tok = S3Tokenizer.from_checkpoint(weights)
    cfg = tok.model.config
    assert (cfg.n_mels, cfg.n_audio_state, cfg.n_audio_head, cfg.n_audio_layer) == (128, 128, 2, 2)
    with pytest.raises(SpeechTokenizerError, match="unknown s3tokenizer ModelConfig field"):
        S3Tokenizer.from_checkpoint(weights, {"n_layers": 3})
    with pytest.raises(SpeechTokenizerError, match="does not match"):
        S3Tokenizer.from_checkpoint(weights, {"n_audio_layer": 3})


def test_missing_weights_is_one_error_line(index, tmp_path):
    index_path, _ = index
    missing = tmp_path / "speech_tokenizer_v2.onnx"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "extract_fsq.py"),
            "--index",
            str(index_path),
            "--checkpoint",
            str(missing),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith(f"error: s3tokenizer weights not found: {missing}")


def test_unavailable_backend_is_one_error_line(index, tiny_s3):
    index_path, weights = index[0], tiny_s3[1]
    with pytest.raises(SystemExit) as exc:
        main(["--index", str(index_path), "--checkpoint", str(weights), "--tokenizer", "speech.no_such_module:Tok"])
    assert str(exc.value.code).startswith("error: speech tokenizer 'speech.no_such_module:Tok'") and "\n" not in str(
        exc.value.code
    )
    if importlib.util.find_spec("speech.tokenizer.own") is None:  # until the own FSQ tokenizer lands
        with pytest.raises(SystemExit, match="^error: speech tokenizer 'own' .* is not available"):
            main(["--index", str(index_path), "--checkpoint", str(weights), "--tokenizer", "own"])


def test_index_entries_resolve_relative_wavs(tmp_path):
    (e,) = write_corpus(tmp_path / "c", {"z": 1})
    write_index(tmp_path / "idx" / "i.jsonl", [dict(e, wav="../c/z/z_000.wav")])
    assert next(read_index(tmp_path / "idx" / "i.jsonl"))["wav"] == e["wav"]
