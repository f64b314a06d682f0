"""A MeanFlow Stage 2 checkpoint through the real inference CLI: ``--n_steps 1`` (and the config's default)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from speech.inference import main
from speech.text.bpe import train_bpe
from tests.inference.conftest import REPO, save_like_trainer


@pytest.mark.slow  # ~15-30 s: builds and runs a whole tiny system
def test_inference_cli_with_a_meanflow_checkpoint(tmp_path, corpus_dir, capsys):
    texts = [p.read_text(encoding="utf-8").strip() for p in sorted(corpus_dir.glob("wavs/*/*.txt"))]
    bpe = tmp_path / "tokenizer.json"
    train_bpe(texts, vocab_size=512).save(str(bpe))
    stats = tmp_path / "latent_stats.json"
    stats.write_text(json.dumps({"mean": [0.01] * 80, "std": [0.5] * 80}))
    llm = save_like_trainer(tmp_path / "llm", REPO / "configs/tiny/llm.yaml", "llm", {"text_tokenizer_path": str(bpe)})
    flow = save_like_trainer(
        tmp_path / "flow", REPO / "configs/tiny/flow_meanflow.yaml", "flow", {"latent_stats": str(stats)}
    )
    codec = save_like_trainer(tmp_path / "codec", REPO / "configs/tiny/dac_vae.yaml", "dac_vae", {})
    stats.unlink()
    base = ["--llm", str(llm), "--flow", str(flow), "--codec", str(codec), "--device", "cpu", "--quiet",
            "--max_len_ratio", "4", "--text", "A short one.", "--prompt_wav", str(corpus_dir / "wavs/slt/slt_000.wav"),
            "--seed", "7"]
    outs = []
    for extra in (["--n_steps", "1"], [], ["--n_steps", "2"]):
        out = tmp_path / f"out{len(outs)}.wav"
        assert main(base + ["--out", str(out)] + extra) == 0, capsys.readouterr()
        wav, sr = sf.read(str(out), dtype="float32")
        assert sr == 24000 and len(wav) > 0 and (wav == wav).all()
        outs.append(wav)
    assert (outs[0] == outs[1]).all()  # the config's default is one step
    assert len(outs[2]) == len(outs[0]) and not (outs[2] == outs[0]).all()
