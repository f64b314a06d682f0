"""inference.py --sled CKPT --codec CKPT: single, --list (batch == alone), one-shot, compatibility check."""

from __future__ import annotations

import json

import pytest
import torch

from speech.audio import load_audio
from speech.inference import main
from speech.text.bpe import train_bpe
from tests.inference.conftest import save_like_trainer, write_list


@pytest.fixture(scope="module")
def system(tmp_path_factory, corpus_dir, repo_root):
    root = tmp_path_factory.mktemp("sled_system")
    texts = [p.read_text(encoding="utf-8").strip() for p in sorted(corpus_dir.glob("wavs/*/*.txt"))]
    bpe = root / "tokenizer.json"
    train_bpe(texts, vocab_size=512).save(str(bpe))
    stats = root / "stats.json"
    stats.write_text(json.dumps({"mean": [0.01] * 80, "std": [0.5] * 80}))
    over = {"text_tokenizer_path": str(bpe), "latent_stats": str(stats), "qwen": {"num_hidden_layers": 2}}
    paths = {
        "sled": save_like_trainer(root / "sled", repo_root / "configs/tiny/sled.yaml", "sled", over),
        "codec": save_like_trainer(root / "codec", repo_root / "configs/tiny/dac_vae.yaml", "dac_vae", {}),
        "codec25": save_like_trainer(root / "codec25", repo_root / "configs/tiny/dac_vae_25hz.yaml", "dac_vae", {}),
    }
    stats.unlink()  # the checkpoint carries the statistics
    paths["root"] = root
    return paths


def _args(system, codec="codec"):
    return ["--sled", str(system["sled"]), "--codec", str(system[codec]), "--device", "cpu", "--quiet",
            "--max_len_ratio", "2", "--min_len_ratio", "1"]


def test_single_list_batch_equals_alone_and_one_shot(system, corpus_dir, capsys):
    root, prompt = system["root"], str(corpus_dir / "wavs/slt/slt_000.wav")
    prompt2 = str(corpus_dir / "wavs/rms/rms_001.wav")
    assert main(_args(system) + ["--text", "Hello there.", "--prompt_wav", prompt, "--out", str(root / "a.wav"),
                                 "--seed", "3"]) == 0
    single, sr = load_audio(root / "a.wav")
    assert sr == 24000 and single.numel() % 480 == 0 and single.numel() > 0
    rows = [{"utt": "x", "text": "A much longer sentence than the other one.", "prompt_wav": prompt2},
            {"utt": "a", "text": "Hello there.", "prompt_wav": prompt},
            {"utt": "c", "text": "Go on.", "prompt_wav": prompt, "prompt_text": "Author of the danger trail."}]
    lst = write_list(root / "list.jsonl", rows)
    assert main(_args(system) + ["--list", str(lst), "--out_dir", str(root / "out"), "--seed", "3",
                                 "--batch_size", "3"]) == 0
    listed, _ = load_audio(root / "out/a.wav")
    assert listed.shape == single.shape and torch.allclose(listed, single, atol=1e-3)
    rtf = json.loads((root / "out/rtf.json").read_text())
    assert rtf["utterances"] == 3 and "sled_seconds" in rtf and "prompt_seconds" in rtf
    assert len((root / "out/synthesis.jsonl").read_text().splitlines()) == 3


def test_codec_of_another_latent_rate_is_refused_in_one_line(system, corpus_dir, capsys):
    code = main(_args(system, "codec25") + ["--text", "Hi.", "--prompt_wav", str(corpus_dir / "wavs/slt/slt_000.wav"),
                                            "--out", str(system["root"] / "b.wav")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "50 Hz" in err and "25 Hz" in err, err


def test_sled_and_two_stage_flags_exclude_each_other(system):
    with pytest.raises(SystemExit):
        main(_args(system) + ["--llm", "x.pt", "--text", "a", "--prompt_wav", "p.wav", "--out", "o.wav"])
    with pytest.raises(SystemExit):
        main(["--codec", "c.pt", "--text", "a", "--prompt_wav", "p.wav", "--out", "o.wav"])


def test_the_flow_path_still_refuses_a_codec_below_the_token_rate(repo_root):
    from types import SimpleNamespace

    from speech.config import load_config
    from speech.inference import InferenceError, check_compatible

    codec = load_config(repo_root / "configs/tiny/dac_vae_12hz.yaml")["dac_vae"]
    assert codec.latent_ratio == 0.5
    flow = SimpleNamespace(latent_dim=80, ratio=2)
    with pytest.raises(InferenceError, match="use a flow trained on this codec's latents"):
        check_compatible(None, flow, codec)
