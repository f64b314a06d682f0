"""The demo recipe end to end on a tiny slice of the corpus with 2-step training budgets.

Every stage runs for real (BPE, FSQ tokenizer, tokens, DAC-VAE, latents, indexes, LM, flow,
averaging, synthesis, evaluation, report); only the data and the step counts are small, so this
checks the plumbing between stages, not quality (see the demo's own report for that).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
SLICE = {  # split -> utterance ids (two seen speakers, one held-out speaker)
    "train": [f"{spk}_{i:03d}" for spk in ("slt", "rms") for i in range(3, 9)],
    "dev": ["slt_000", "rms_000"],
    "test": ["slt_001", "rms_001"],
    "heldout": ["ensc_m7_h00", "ensc_m7_h01", "ensc_m7_h02"],
}


def tiny_corpus(src: Path, dst: Path) -> Path:
    utt2spk = dict(line.split() for line in (src / "utt2spk").read_text().splitlines() if line.strip())
    (dst / "splits").mkdir(parents=True)
    for split, utts in SLICE.items():
        (dst / "splits" / f"{split}.txt").write_text("".join(u + "\n" for u in utts))
        for utt in utts:
            spk = utt2spk[utt]
            (dst / "wavs" / spk).mkdir(parents=True, exist_ok=True)
            for ext in (".wav", ".txt"):
                shutil.copy(src / "wavs" / spk / f"{utt}{ext}", dst / "wavs" / spk / f"{utt}{ext}")
    chosen = [u for utts in SLICE.values() for u in utts]
    (dst / "utt2spk").write_text("".join(f"{u} {utt2spk[u]}\n" for u in chosen))
    return dst


@pytest.mark.slow
def test_demo_recipe_end_to_end(corpus_dir, tmp_path):
    corpus = tiny_corpus(corpus_dir, tmp_path / "corpus")
    exp = tmp_path / "exp"
    budgets = ["--fsq_steps", "2", "--codec_steps", "2", "--llm_steps", "2", "--flow_steps", "2",
               "--flow_width", "64", "--known_per_speaker", "2",
               "--fsq_levels", "3 3 3 3"]  # 81 ids: the levels reach the tokenizer, the LM and the flow
    # the recipe calls `python`: the interpreter running the tests, whatever PATH says
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        ["bash", "recipes/demo/run.sh", "--corpus", str(corpus), "--exp", str(exp), "--nj", "1", *budgets],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    banners = [line for line in run.stdout.splitlines() if line.startswith("==== stage")]
    assert len(banners) == 13  # stages 0..12, each announced
    # --codec_amp auto: bf16 only where this CPU multiplies bf16 faster than fp32; the codec's own log agrees
    chosen = re.search(r"codec training precision: (bf16 autocast|fp32)\n", run.stdout)
    assert chosen, run.stdout[-3000:]
    assert f"speech.trainer: precision: {chosen.group(1)}" in (exp / "dac_vae" / "train.log").read_text()
    times = [line.split("\t") for line in (exp / "stage_times.tsv").read_text().splitlines()]
    assert [r[0] for r in times] == ["run", *map(str, range(13)), "end"] and times[-1][2] == "exit status 0"

    synth = exp / "synth"
    manifest = [json.loads(line) for line in (synth / "synthesis.jsonl").read_text().splitlines()]
    assert sorted(m["utt"] for m in manifest) == SLICE["heldout"]
    for m in manifest:
        info = sf.info(str(synth / f"{m['utt']}.wav"))
        assert info.samplerate == 24000 and info.frames == m["n_tokens"] * 960
    report = (exp / "report.md").read_text()
    tokens = [torch.load(p, weights_only=True) for p in (exp / "tokens").glob("*/*_fsq.pt")]
    assert tokens and max(int(t.max()) for t in tokens) < 81
    assert "speech_token_size: 81" in (exp / "llm" / "config.yaml").read_text()
    assert "speech_vocab: 81" in (exp / "flow" / "config.yaml").read_text()
    known = [json.loads(line) for line in (exp / "synth_known" / "synthesis.jsonl").read_text().splitlines()]
    assert sorted(m["utt"] for m in known) == ["ensc_m7_known00", "ensc_m7_known01"]
    train_texts = {(corpus / "wavs" / u.rsplit("_", 1)[0] / f"{u}.txt").read_text().strip() for u in SLICE["train"]}
    assert all(m["text"] in train_texts for m in known)  # known text: sentences the LM trained on
    match = json.loads((exp / "eval" / "voice_match.json").read_text())
    assert [t["ensc_m7"]["utterances"] for t in match["lists"].values()] == [3, 2]
    for part in ("tiny CPU model", "recipes/libritts/run.sh", "Stage 1 LM", "Stage 2 flow", "WER", "SIM",
                 "Real-time factor", "mel.png", "Intelligibility", "WER real", "trained sentences", "Voice match",
                 "Stage times", "**total**"):
        assert part in report, part
    assert "(missing" not in report, report
    assert (exp / "mel.png").stat().st_size > 0 and (exp / "losses.png").stat().st_size > 0
    for part, n in (("codec", len(SLICE["test"])), ("flow", len(SLICE["dev"])), ("tts", len(SLICE["heldout"])),
                    ("tts_known", len(known))):
        payload = json.loads((exp / "eval" / part / "results.json").read_text())
        summary = payload["systems"][0]["summary"]
        assert summary["n"] == n, (part, summary)
        # every check is also heard on the real recordings of its sentences, by the same ASR
        assert [s["name"] for s in payload["systems"]][0] == "reference" and "wer" in summary, part
        if part == "flow":  # the flow's samples beside the codec on the real latents of the same utterances
            assert [s["name"] for s in payload["systems"]] == ["reference", "flow_samples", "true_latents"]
            assert [s["summary"]["n"] for s in payload["systems"]] == [n, n, n]
        assert payload["meta"]["asr"] in ("faster-whisper", "pocketsphinx"), payload["meta"]
    assert list((exp / "llm").glob("**/events.out.tfevents.*")), "TensorBoard logs of the LM"
    probe = json.loads((exp / "eval" / "llm_probe.json").read_text())  # does the LM read its text?
    assert probe["utterances"] > 0 and 0 <= probe["acc_random_history"] <= 1 and 0 <= probe["acc"] <= 1
    assert "Does the LM read its text?" in report
    consistency = json.loads((exp / "eval" / "token_consistency.json").read_text())  # tokens: voice or text?
    assert consistency["utterances"] == len(SLICE["train"]) and consistency["unusable_token_files"] == 0

    # Re-running a finished stage range is safe: extraction skips what exists, nothing is deleted.
    again = subprocess.run(["bash", "recipes/demo/run.sh", "--corpus", str(corpus), "--exp", str(exp),
                            "--stage", "3", "--stop_stage", "3", "--nj", "1"],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list((exp / "tokens").glob("*/*_fsq.pt"))) == sum(len(u) for u in SLICE.values())

    bad = subprocess.run(["bash", "recipes/demo/run.sh", "--stage", "10", "--exp", str(tmp_path / "empty")],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "run the earlier stages first" in bad.stderr
    assert (tmp_path / "empty" / "stage_times.tsv").read_text().splitlines()[-1].endswith("\texit status 1")
    unknown = subprocess.run(["bash", "recipes/demo/run.sh", "--nope", "1"], cwd=REPO, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown option --nope" in unknown.stderr
    bad_amp = subprocess.run(["bash", "recipes/demo/run.sh", "--codec_amp", "yes", "--exp", str(tmp_path / "bad")],
                             cwd=REPO, capture_output=True, text=True)
    assert bad_amp.returncode == 2 and "--codec_amp must be auto, 0 or 1" in bad_amp.stderr
    for levels in ("3,3", "1 3", "3 x"):  # a comma would make bash's $(( )) quietly count 3 ids
        bad_levels = subprocess.run(
            ["bash", "recipes/demo/run.sh", "--fsq_levels", levels, "--exp", str(tmp_path / "bad")],
            cwd=REPO, capture_output=True, text=True,
        )
        assert bad_levels.returncode == 2 and "--fsq_levels must be integers" in bad_levels.stderr, levels
