"""The demo report's intelligibility table: each WER next to the same ASR's WER on the real recordings."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from speech.eval.evaluator import SystemResult
from speech.eval.report import write_json

REPO = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("demo_report", REPO / "recipes" / "demo" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(name: str, wers: dict[str, float]) -> SystemResult:
    return SystemResult(name, rows=[{"utt": u, "wer": w, "cer": w / 2} for u, w in wers.items()])


def _write_check(eval_dir: Path, sub: str, results: list[SystemResult]) -> None:
    """``eval_dir/sub/results.json`` as stage 11's evaluate.py writes it, judged by faster-whisper."""
    (eval_dir / sub).mkdir(parents=True)
    write_json(eval_dir / sub / "results.json", results, {"asr": "faster-whisper"})


def test_each_wer_sits_next_to_the_same_asr_on_the_real_recordings(tmp_path) -> None:
    eval_dir = tmp_path / "eval"
    for sub in ("tts", "codec"):
        (eval_dir / sub).mkdir(parents=True)
    # the synthesis of u3 is missing: the real-recordings mean covers the same two sentences only
    write_json(
        eval_dir / "tts" / "results.json",
        [_result("reference", {"u1": 0.0, "u2": 0.2, "u3": 1.0}), _result("synth", {"u1": 0.5, "u2": 0.7})],
        {"asr": "faster-whisper"},
    )
    write_json(eval_dir / "codec" / "results.json", [_result("wavs", {"a": 0.25})], {"asr": "pocketsphinx"})
    lines = _report_module().intelligibility_section(eval_dir)
    text = "\n".join(lines)
    tts = next(line for line in lines if line.startswith("| synthesis, held-out voices, unseen sentences"))
    assert tts.split(" | ")[1:] == ["the held-out speakers' own", "2", "faster-whisper", "60.0", "10.0", "30.0",
                                   "5.0 |"]
    codec = next(line for line in lines if line.startswith("| codec round trip"))
    # an older run without the reference row: the real-recordings columns are empty, not invented
    assert codec.split(" | ")[1:] == ["test split", "1", "pocketsphinx", "25.0", "–", "12.5", "– |"]
    assert "(missing: " in next(line for line in lines if line.startswith("| dev split, decoded by the codec"))
    assert "Judged by PocketSphinx, the fallback" in text


def test_flow_check_shows_the_samples_beside_the_codec_on_the_true_latents(tmp_path) -> None:
    eval_dir = tmp_path / "eval"
    _write_check(eval_dir, "flow", [_result("reference", {"a": 0.1, "b": 0.1}),
                                    _result("flow_samples", {"a": 0.6, "b": 0.4}),
                                    _result("true_latents", {"a": 0.3, "b": 0.1})])
    lines = [line for line in _report_module().intelligibility_section(eval_dir) if line.startswith("| dev split")]
    assert [line.split(" | ")[1:] for line in lines] == [
        ["dev split", "2", "faster-whisper", "50.0", "10.0", "25.0", "5.0 |"],
        ["dev split", "2", "faster-whisper", "20.0", "10.0", "10.0", "5.0 |"],
    ]
    assert ": flow_samples |" in lines[0] and ": true_latents |" in lines[1]


def test_the_codec_round_trip_of_the_real_recordings_follows_its_synthesis(tmp_path) -> None:
    eval_dir = tmp_path / "eval"
    # evaluate.py writes the systems as reference, codec_round_trip, then the synthesis
    _write_check(eval_dir, "tts_known", [_result("reference", {"a": 0.1, "b": 0.3}),
                                         _result("codec_round_trip", {"a": 0.4, "b": 0.2}),
                                         _result("synth_known", {"a": 0.9, "b": 0.7})])
    module = _report_module()
    trained = "| synthesis, held-out voices, trained"
    lines = [line for line in module.intelligibility_section(eval_dir) if line.startswith(trained)]
    assert [line.split(" | ")[0] for line in lines] == [
        "| synthesis, held-out voices, trained sentences (zero-shot voice, known text)",
        f"| synthesis, held-out voices, trained sentences (zero-shot voice, known text): {module.CEILING_LABEL}",
    ]
    assert [line.split(" | ")[3:6] for line in lines] == [["faster-whisper", "80.0", "20.0"],
                                                         ["faster-whisper", "30.0", "20.0"]]


def test_stage_times_come_from_the_latest_run_and_voice_match_marks_the_own_voice(tmp_path) -> None:
    report = _report_module()
    log = tmp_path / "stage_times.tsv"
    log.write_text("run\t100\tstages 0-12\n0\t100\tindex\n1\t110\tbpe\n"  # an older run
                   "run\t1000\tstages 3-5\n3\t1000\ttokens\n4\t1030\tcodec\n5\t1500\tlatents\n")
    lines = "\n".join(report.stage_times_section(log, now=1600.0))
    assert "| 3 | tokens | 30 |" in lines and "| 4 | codec | 470 |" in lines and "| 5 | latents | 100 |" in lines
    assert "**600** (10.0 min)" in lines and "bpe" not in lines
    # a finished run: the report regenerated later keeps the recorded end
    log.write_text(log.read_text() + "end\t1520\texit status 0\n")
    lines = "\n".join(report.stage_times_section(log, now=9999.0))
    assert "| 5 | latents | 20 |" in lines and "**520** (8.7 min)" in lines and "| end |" not in lines
    match = tmp_path / "voice_match.json"
    match.write_text(json.dumps({"speaker_encoder": "resemblyzer", "lists": {"synth/list.jsonl": {
        "a": {"utterances": 2, "closest_own": 2, "sim": {"a": 0.8, "b": 0.5}},
        "b": {"utterances": 2, "closest_own": 1, "sim": {"a": 0.6, "b": 0.7}}}}}))
    lines = "\n".join(report.voice_match_section(match))
    assert "| a | 2 | 2 | **0.800** | 0.500 |" in lines and "| b | 2 | 1 | 0.600 | **0.700** |" in lines


def test_stream_section_shows_first_chunk_latency_and_the_offline_difference(tmp_path) -> None:
    report = _report_module()
    path = tmp_path / "stream.rtf.json"
    assert "(missing" in "\n".join(report.stream_section(path))
    path.write_text('{"first_chunk_seconds": 0.41, "chunks": 4, "audio_seconds": 3.2, "wall_seconds": 1.9, '
                    '"rtf": 0.59, "max_abs_diff_vs_offline": 2e-7, "chunk_tokens": 25, "threads": 2}')
    text = "\n".join(report.stream_section(path))
    assert "0.410 s" in text and "2.0e-07" in text and "(missing" not in text


def _fake_model_dir(path: Path, config: str, train_key: str) -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(config)
    (path / "train.log").write_text(f"epoch 0 step 5 | {train_key} 2.0000 | lr 1.000e-03 | grad_norm 1.000\n"
                                    f"epoch 0 step 10 | {train_key} 1.5000 | lr 1.000e-03 | grad_norm 1.000\n"
                                    "cv step 10 | loss 1.2500 | 0.1 s\n")


def test_the_codec_section_follows_the_codec_dir_run_sh_passes(tmp_path) -> None:
    """run.sh --codec flowae trains the codec in EXP/flowae: the report shows that codec, named by its config."""
    import subprocess
    import sys

    exp = tmp_path / "exp"
    _fake_model_dir(exp / "flowae", "sample_rate: 24000\nflowae: !new:flowae.model.FlowAE\n  hop: 480\n", "loss")
    _fake_model_dir(exp / "dac_vae", "dac_vae: !new:dac_vae.model.DACVAE\n  hop: 480\n", "generator/loss")
    for codec, flag, title, key in (("flowae", ["--codec_dir", str(exp / "flowae")], "flowae codec", "loss"),
                                    ("dac_vae", [], "DAC-VAE codec", "generator/loss")):  # run.sh's default
        out = tmp_path / codec / "report.md"
        run = subprocess.run([sys.executable, str(REPO / "recipes/demo/report.py"), "--exp", str(exp), *flag,
                              "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        text = out.read_text()
        assert f"**{title}** (`{exp / codec}`)" in text
        assert f"| train {key} | 2 (step 5) | 1.5 (step 10) |" in text and "| cv loss | 1.25 (step 10) |" in text
        assert f"## Codec round trip ({title}), corpus test split" in text
        assert "no training log" in text and "codec: no training log" not in text  # only the other models
    report = _report_module()
    assert report.codec_title(tmp_path / "flowae") == "flowae codec"  # no config (yet): by the dir's name


def test_llm_probe_line_shows_both_histories_and_is_left_out_without_a_probe(tmp_path) -> None:
    from collections import Counter

    report = _report_module()
    probe = tmp_path / "llm_probe.json"
    counts = Counter({1: 32, 2: 500, "eos": 468})  # most frequent id: accuracy 0.5
    assert report.llm_probe_section(probe, counts) == []
    probe.write_text(json.dumps({"utterances": 109, "targets": 6740, "acc": 0.4451, "loss": 2.29,
                                 "acc_random_history": 0.6241, "loss_random_history": 8.882}))
    line = report.llm_probe_section(probe, counts)[0]
    assert "109 of its training utterances (6740 targets)" in line
    assert "0.445 (loss 2.290) with the true previous speech ids and 0.624 (loss 8.882) with random ones" in line
    assert "near the most-frequent-id baseline (0.500): the LM recites" in line
    probe.write_text(json.dumps({"utterances": 109, "targets": 6740, "acc": 0.4451, "loss": 2.29,
                                 "acc_random_history": 0.9, "loss_random_history": 3.1}))
    line = report.llm_probe_section(probe, counts)[0]
    assert "1.8x the most-frequent-id baseline (0.500): the text alone predicts part of the speech" in line
    assert "recites" not in report.llm_probe_section(probe, Counter())[0]  # no tokens: no verdict


def test_token_consistency_line_compares_same_sentence_and_unrelated_pairs(tmp_path) -> None:
    report = _report_module()
    path = tmp_path / "token_consistency.json"
    assert report.token_consistency_section(path) == []
    path.write_text(json.dumps({"utterances": 444, "same_text_pairs": 0, "unrelated_pairs": 0}))
    assert report.token_consistency_section(path) == []  # no sentence shared by two voices: nothing to say
    figures = {"utterances": 444, "same_text_pairs": 200, "unrelated_pairs": 200, "same_text_ids": 0.861,
               "unrelated_ids": 0.956}
    path.write_text(json.dumps(figures))
    line = report.token_consistency_section(path)[0]
    assert "token sequences 86% apart (edit distance over length; 200 pairs), unrelated sentences 96%." in line
    assert "FSQ digits" not in line
    path.write_text(json.dumps({**figures, "same_text_digits": 0.351, "unrelated_digits": 0.586}))
    assert "share of FSQ digits that differ, 35% against 59%" in report.token_consistency_section(path)[0]
