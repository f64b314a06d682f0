"""Tiny LM, flow, codec (2x and 3x) and FSQ-tokenizer checkpoints for the inference tests.

Built from the shipped tiny configs and saved exactly as the trainer saves them (``config.yaml`` and
``config.unresolved.yaml`` beside a ``{"model": ..., "config": ..., "config_unresolved": ...}`` file),
so loading goes through the real code path.
Weights are random but fixed: the tests check shapes, lengths, determinism and error handling, not
quality (the demo recipe test trains them).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speech.audio import load_audio, save_audio
from speech.config import load_config, resolve_config_text, unresolved_config_text
from speech.text.bpe import train_bpe
from speech.trainer.checkpoint import atomic_torch_save

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models decode token by token with small matmuls: one intra-op thread is faster, and on a
    busy 2-core machine a second spinning thread slows them down tenfold (measured); restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def save_like_trainer(model_dir: Path, config: Path, key: str, overrides: dict, unresolved: bool = True) -> Path:
    """Build ``key`` from ``config`` (+ overrides) and save it as a trainer checkpoint with its config
    (``unresolved=False``: as older trainers did, the resolved text only)."""
    text = resolve_config_text(config, overrides)
    raw = unresolved_config_text(config, overrides) if unresolved else None
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(text, encoding="utf-8")
    if raw is not None:
        (model_dir / "config.unresolved.yaml").write_text(raw, encoding="utf-8")
    torch.manual_seed(0)
    model = load_config(model_dir / "config.yaml")[key]
    path = model_dir / "step_1.pt"
    atomic_torch_save({"model": model.state_dict(), "config": text, "config_unresolved": raw, "step": 1}, path)
    return path


@pytest.fixture(scope="session")
def tiny_system(tmp_path_factory, corpus_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_system")
    texts = [p.read_text(encoding="utf-8").strip() for p in sorted(corpus_dir.glob("wavs/*/*.txt"))]
    bpe = root / "bpe" / "tokenizer.json"
    bpe.parent.mkdir()
    train_bpe(texts, vocab_size=512).save(str(bpe))
    # The flow trains with latent statistics from a file that is gone by inference time: the checkpoint has them.
    stats = root / "latent_stats.json"
    stats.write_text(json.dumps({"mean": [0.01] * 80, "std": [0.5] * 80}))
    unistream = root / "llm_unistream.yaml"  # the tiny LM decoding its text as a whole (it continues one-shot prompts)
    tiny_llm = (REPO / "configs/tiny/llm.yaml").read_text(encoding="utf-8")
    assert "decode_layout: aligned" in tiny_llm
    unistream.write_text(tiny_llm.replace("decode_layout: aligned", "decode_layout: unistream"), encoding="utf-8")
    paths = {
        "bpe": bpe,
        "llm": save_like_trainer(root / "llm", REPO / "configs/tiny/llm.yaml", "llm", {"text_tokenizer_path": str(bpe)}),
        "llm_unistream": save_like_trainer(root / "llm_unistream", unistream, "llm", {"text_tokenizer_path": str(bpe)}),
        "flow": save_like_trainer(root / "flow", REPO / "configs/tiny/flow.yaml", "flow", {"latent_stats": str(stats)}),
        "codec": save_like_trainer(root / "codec", REPO / "configs/tiny/dac_vae.yaml", "dac_vae", {}),
        "codec3x": save_like_trainer(root / "codec3x", REPO / "configs/tiny/dac_vae_3x.yaml", "dac_vae", {}),
        "fsq": save_like_trainer(root / "fsq", REPO / "configs/tiny/fsq.yaml", "fsq", {}),
    }
    stats.unlink()
    # Prompts: real corpus clips (24 kHz), plus edge cases made from them.
    wav, sr = load_audio(corpus_dir / "wavs/slt/slt_000.wav")
    paths["prompt"] = corpus_dir / "wavs/slt/slt_000.wav"
    paths["prompt2"] = corpus_dir / "wavs/rms/rms_001.wav"
    paths["prompt_short"] = root / "short.wav"
    save_audio(paths["prompt_short"], wav[: int(0.1 * sr)], sr)
    paths["prompt_long"] = root / "long.wav"
    save_audio(paths["prompt_long"], wav.repeat(int(60 * sr / wav.numel()) + 1)[: 60 * sr], sr)
    paths["root"] = root
    return paths


def model_args(system: dict[str, Path], codec: str = "codec") -> list[str]:
    return ["--llm", str(system["llm"]), "--flow", str(system["flow"]), "--codec", str(system[codec]),
            "--device", "cpu", "--quiet", "--max_len_ratio", "4"]


def write_list(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def synthesizer(tiny_system):
    """The tiny system loaded once through the real loader, with the FSQ tokenizer for one-shot prompts."""
    from speech.inference import Synthesizer

    s = tiny_system
    return Synthesizer.from_checkpoints(s["llm"], s["flow"], s["codec"], speech_tokenizer=s["fsq"], device="cpu")
