"""The demo report's intelligibility table: each WER next to the same ASR's WER on the real recordings."""
from __future__ import annotations

import importlib.util
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
    tts = next(line for line in lines if line.startswith("| synthesis of the held-out speakers"))
    assert tts.split(" | ")[1:] == ["the held-out speakers' own", "2", "faster-whisper", "60.0", "10.0", "30.0",
                                   "5.0 |"]
    codec = next(line for line in lines if line.startswith("| codec round trip"))
    # an older run without the reference row: the real-recordings columns are empty, not invented
    assert codec.split(" | ")[1:] == ["test split", "1", "pocketsphinx", "25.0", "–", "12.5", "– |"]
    assert "(missing: " in next(line for line in lines if line.startswith("| flow samples"))
    assert "Judged by PocketSphinx, the fallback" in text


def test_stream_section_shows_first_chunk_latency_and_the_offline_difference(tmp_path) -> None:
    report = _report_module()
    path = tmp_path / "stream.rtf.json"
    assert "(missing" in "\n".join(report.stream_section(path))
    path.write_text('{"first_chunk_seconds": 0.41, "chunks": 4, "audio_seconds": 3.2, "wall_seconds": 1.9, '
                    '"rtf": 0.59, "max_abs_diff_vs_offline": 2e-7, "chunk_tokens": 25, "threads": 2}')
    text = "\n".join(report.stream_section(path))
    assert "0.410 s" in text and "2.0e-07" in text and "(missing" not in text
