"""The inference CLI end to end on tiny checkpoints: files written, lengths, list == single, skips,
and one-line errors (exit 2, no traceback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

from speech.inference import main

from .conftest import REPO, model_args, write_list

TEXTS = ["Hello there, how are you today?", "A short one."]
FAST = ["--n_steps", "4", "--seed", "7"]


def run(capsys, args) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def read(path):
    return sf.read(str(path), dtype="float32")


def test_list_and_single_mode(tiny_system, tmp_path, capsys):
    """List mode writes every good line (bad ones counted), and its wavs equal single-mode ones."""
    rows = [
        {"utt": "u0", "text": TEXTS[0], "prompt_wav": str(tiny_system["prompt"])},
        {"utt": "u1", "text": TEXTS[1], "prompt_wav": str(tiny_system["prompt2"])},
        {"utt": "empty", "text": "", "prompt_wav": str(tiny_system["prompt"])},
        {"utt": "short", "text": TEXTS[1], "prompt_wav": str(tiny_system["prompt_short"])},
        {"utt": "u0", "text": TEXTS[1], "prompt_wav": str(tiny_system["prompt"])},
        {"utt": "../escape", "text": TEXTS[0], "prompt_wav": str(tiny_system["prompt"])},
    ]
    lst = write_list(tmp_path / "list.jsonl", rows)
    with lst.open("a") as f:
        f.write("{not json\n")
    out_dir = tmp_path / "batch"
    code, stdout, _ = run(capsys, model_args(tiny_system) + ["--list", str(lst), "--out_dir", str(out_dir)] + FAST)
    assert code == 0, stdout
    assert sorted(p.name for p in out_dir.glob("*.wav")) == ["u0.wav", "u1.wav"]
    manifest = [json.loads(line) for line in (out_dir / "synthesis.jsonl").read_text().splitlines()]
    assert [m["utt"] for m in manifest] == ["u0", "u1"]
    rtf = json.loads((out_dir / "rtf.json").read_text())
    assert rtf["utterances"] == 2 and rtf["skipped"] == 5 and rtf["rtf"] > 0 and rtf["lm_seconds"] > 0
    assert "skipped 1: empty text" in stdout and "duplicate utt" in stdout and "cannot be a file name" in stdout
    for m in manifest:
        wav, sr = read(out_dir / f"{m['utt']}.wav")
        assert sr == 24000 and len(wav) == m["n_tokens"] * 960  # n_tokens / 25 s at 24 kHz
        assert np.isfinite(wav).all() and np.sqrt(np.mean(wav**2)) > 1e-4

    single = tmp_path / "single.wav"
    code, stdout, _ = run(capsys, model_args(tiny_system) + [
        "--text", TEXTS[1], "--prompt_wav", str(tiny_system["prompt2"]), "--out", str(single)] + FAST)
    assert code == 0 and f"({manifest[1]['n_tokens']} tokens)" in stdout
    np.testing.assert_allclose(read(single)[0], read(out_dir / "u1.wav")[0], atol=3 / 32768)  # 16-bit files


def test_tsv_list_with_relative_prompt(tiny_system, tmp_path, capsys):
    (tmp_path / "p.wav").write_bytes(tiny_system["prompt"].read_bytes())
    lst = tmp_path / "list.tsv"
    lst.write_text(f"a\t{TEXTS[1]}\tp.wav\nbad line\n", encoding="utf-8")
    code, stdout, _ = run(capsys, model_args(tiny_system) + ["--list", str(lst), "--out_dir", str(tmp_path / "o"),
                                                             "--n_steps", "2"])
    assert code == 0 and (tmp_path / "o/a.wav").is_file() and "1 skipped" in stdout


def test_errors_before_loading(tiny_system, tmp_path, capsys):
    """Empty text, a missing prompt, a missing checkpoint, a list of only bad lines: one line each."""
    out = str(tmp_path / "x.wav")
    cases = [
        (model_args(tiny_system) + ["--text", " ", "--prompt_wav", str(tiny_system["prompt"]), "--out", out], 2,
         "error: empty text"),
        (model_args(tiny_system) + ["--text", "hi", "--prompt_wav", str(tmp_path / "no.wav"), "--out", out], 2,
         "file not found"),
        (["--llm", str(tmp_path / "no.pt")] + model_args(tiny_system)[2:]
         + ["--text", "hi", "--prompt_wav", str(tiny_system["prompt"]), "--out", out], 2, "llm checkpoint not found"),
    ]
    for args, want_code, expect in cases:
        code, _, stderr = run(capsys, args)
        assert code == want_code and expect in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "x.wav").exists()
    lst = write_list(tmp_path / "bad.jsonl", [{"utt": "a", "text": "", "prompt_wav": "x.wav"}])
    code, _, stderr = run(capsys, model_args(tiny_system) + ["--list", str(lst), "--out_dir", str(tmp_path / "o")])
    assert code == 1 and "nothing to synthesize" in stderr


def test_script_help_and_mismatch_error_without_traceback(tiny_system, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    help_run = subprocess.run([sys.executable, "inference.py", "--help"], cwd=REPO, capture_output=True, text=True, env=env)
    assert help_run.returncode == 0 and "--prompt_wav" in help_run.stdout
    bad = subprocess.run(
        [sys.executable, "inference.py", *model_args(tiny_system, "codec3x"), "--text", "hi",
         "--prompt_wav", str(tiny_system["prompt"]), "--out", str(tmp_path / "x.wav")],
        cwd=REPO, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert "use a flow trained on this codec's latents" in bad.stderr
    usage = subprocess.run([sys.executable, "inference.py", "--llm", "a", "--flow", "b", "--codec", "c"],
                           cwd=REPO, capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "missing --text, --prompt_wav, --out" in usage.stderr
