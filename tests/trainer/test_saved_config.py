"""What the trainer saves to rebuild a model: the resolved config and the unresolved one
(overrides applied, ``!ref`` kept), beside the checkpoints and inside each of them."""
from __future__ import annotations

import runpy
from pathlib import Path

import torch

from speech.trainer.checkpoint import atomic_torch_save, config_beside, read_config_text, write_metrics
from speech.trainer.cli import run

from .support import train_args


def test_both_config_texts_are_saved_beside_and_inside(toy_data, tmp_path):
    model_dir = tmp_path / "exp"
    run(train_args(toy_data, model_dir, "train_conf.max_steps=2", "train_conf.save_per_step=2", "dim=4",
                   "train_conf.ema_decay=0.5"))
    resolved = (model_dir / "config.yaml").read_text()
    unresolved = (model_dir / "config.unresolved.yaml").read_text()
    assert "dim: !ref <dim>" in unresolved and "dim: !ref" not in resolved
    assert "ema_decay: 0.5" in unresolved and "ema_decay: 0.5" in resolved  # a train_conf key the file lacks
    ckpt = model_dir / "step_000000002.pt"
    stored = torch.load(ckpt, weights_only=True)
    assert stored["config"] == resolved and stored["config_unresolved"] == unresolved
    assert read_config_text(ckpt) == resolved and read_config_text(ckpt, unresolved=True) == unresolved
    assert config_beside(model_dir) == model_dir / "config.unresolved.yaml"


def test_averaged_and_exported_weights_carry_the_unresolved_text(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    for step, unresolved in ((1, "d: 3\nx: !ref <d>\n"), (2, "d: 3\nx: !ref <d>\n")):
        path = tmp_path / f"step_{step:09d}.pt"
        atomic_torch_save({"model": {"w": torch.full((2,), float(step))}, "config": "d: 3\nx: 3\n",
                           "config_unresolved": unresolved}, path)
        write_metrics(path, {"step": step, "cv": {"loss": 1.0 / step}})
    average = runpy.run_path(str(repo / "tools" / "average_checkpoints.py"))["main"]
    assert average(["--model_dir", str(tmp_path), "--num", "2", "--out", str(tmp_path / "avg.pt")]) == 0
    assert read_config_text(tmp_path / "avg.pt", unresolved=True) == "d: 3\nx: !ref <d>\n"
    assert average(["--model_dir", str(tmp_path), "--num", "2", "--out", str(tmp_path / "avg.safetensors")]) == 0
    assert (tmp_path / "avg.unresolved.yaml").read_text() == "d: 3\nx: !ref <d>\n"
    export = runpy.run_path(str(repo / "tools" / "export_weights.py"))["main"]
    assert export([str(tmp_path / "step_000000001.pt"), "--out", str(tmp_path / "e.safetensors")]) == 0
    assert (tmp_path / "e.unresolved.yaml").read_text() == "d: 3\nx: !ref <d>\n"
    # An older checkpoint (resolved text only) stays as it was.
    atomic_torch_save({"model": {"w": torch.zeros(2)}, "config": "d: 3\n"}, tmp_path / "old.pt")
    assert read_config_text(tmp_path / "old.pt", unresolved=True) == "d: 3\n"
