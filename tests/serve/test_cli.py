"""speech-serve's command line: the model flags of inference.py, and one-line errors before serving."""
from __future__ import annotations

import subprocess
import sys

from speech.inference import build_parser as inference_parser
from speech.serve.cli import MODEL_FLAGS, build_parser, main


def test_every_model_flag_of_inference_is_a_serve_flag():
    """When a model variant lands in inference.py (its "models" group), serve must take it too."""
    group = next(g for g in inference_parser()._action_groups if g.title == "models")
    theirs = {a.dest for a in group._group_actions}
    ours = {a.dest for a in build_parser()._actions}
    assert {"sled", "sled_config"} <= theirs <= ours, theirs - ours
    assert set(MODEL_FLAGS) == theirs  # all loaded by speech.inference.load_synthesizer


def test_load_synthesizer_reads_every_model_flag(monkeypatch):
    """Both paths together read every flag of the models group (none is parsed and then dropped)."""
    import argparse

    from speech import inference
    from speech.sled import inference as sled_inference

    read: set[str] = set()

    class Args(argparse.Namespace):
        def __getattribute__(self, name):
            if not name.startswith("_"):
                read.add(name)
            return super().__getattribute__(name)

    monkeypatch.setattr(inference.Synthesizer, "from_checkpoints", classmethod(lambda cls, *a, **k: (a, k)))
    monkeypatch.setattr(sled_inference.SledSynthesizer, "from_checkpoints", classmethod(lambda cls, *a, **k: (a, k)))
    for argv in (["--llm", "l", "--flow", "f", "--codec", "c"], ["--sled", "s", "--codec", "c"]):
        args = build_parser().parse_args(argv, namespace=Args())
        inference.load_synthesizer(args, "cpu")
    assert set(MODEL_FLAGS) <= read, set(MODEL_FLAGS) - read


def test_sled_or_two_stage_models_are_required(capsys):
    import pytest

    for argv in (["--codec", "c"], ["--llm", "l", "--codec", "c"], ["--sled", "s", "--llm", "l", "--flow", "f",
                                                                     "--codec", "c"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "--sled" in capsys.readouterr().err


def test_defaults_listen_on_localhost_only():
    args = build_parser().parse_args(["--llm", "a", "--flow", "b", "--codec", "c"])
    assert (args.host, args.port, args.max_batch, args.max_queue) == ("127.0.0.1", 8000, 8, 32)


def test_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert main(["--llm", str(tmp_path / "no.pt"), "--flow", "x", "--codec", "y", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"error: llm checkpoint not found: {tmp_path / 'no.pt'}"


def test_module_entry_point_help():
    run = subprocess.run([sys.executable, "-m", "speech.serve", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--max_batch" in run.stdout and "--max_prompt_seconds" in run.stdout
