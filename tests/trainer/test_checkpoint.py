"""Checkpoint files: atomic saves (also when killed), discovery, pruning, loading, averaging."""
from __future__ import annotations

import logging
import os
import runpy
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from speech.trainer.checkpoint import (atomic_torch_save, average_state_dicts, clean_temp_files, list_checkpoints,
                                       load_pretrained, load_weights, prune_checkpoints, resolve_checkpoint,
                                       write_metrics)
from speech.trainer.engine import CHECKPOINT_FORMAT

from .support import REPO

def save_and_die(obj: dict, target) -> int:
    """Fork a child that starts ``atomic_torch_save`` and is SIGKILLed half-way through writing;
    returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            def dying_save(o, f, *args, **kwargs):
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = dying_save
            atomic_torch_save(obj, target)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("target", ["step_000000003.pt", "step_000000002.pt"], ids=["new", "overwrite"])
def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path, target):
    atomic_torch_save({"w": torch.full((3,), 1.0)}, tmp_path / "step_000000001.pt")
    atomic_torch_save({"w": torch.full((3,), 2.0)}, tmp_path / "step_000000002.pt")
    status = save_and_die({"w": torch.zeros(3)}, tmp_path / target)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".")  # the half-written temp file
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2]  # ignored by discovery
    last = resolve_checkpoint("last", tmp_path)
    assert last.name == "step_000000002.pt"
    assert torch.equal(torch.load(last, weights_only=True)["w"], torch.full((3,), 2.0))
    assert clean_temp_files(tmp_path) == leftovers and not leftovers[0].exists()


def test_discovery_pruning_and_metrics(tmp_path):
    for step in (5, 10, 15, 20):
        path = tmp_path / f"step_{step:09d}.pt"
        atomic_torch_save({"w": torch.zeros(1)}, path)
        write_metrics(path, {"step": step, "cv": {"loss": 1.0 / step}})
    (tmp_path / "step_000000025").mkdir()  # a DeepSpeed folder without trainer.pt: incomplete
    (tmp_path / "notes.txt").write_text("x")
    assert [c.step for c in list_checkpoints(tmp_path)] == [5, 10, 15, 20]
    assert yaml.safe_load((tmp_path / "step_000000010.yaml").read_text())["cv"]["loss"] == pytest.approx(0.1)
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step_000000005.pt", "step_000000010.pt"]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_000000015.pt", "step_000000015.yaml", "step_000000020.pt", "step_000000020.yaml", "step_000000025"]
    assert resolve_checkpoint("last", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "missing.pt"), tmp_path)


def test_load_weights_formats(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = model.state_dict()
    ema = {k: v + 1 for k, v in state.items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": state, "ema": ema, "optimizers": {}}, tmp_path / "c.pt")
    torch.save(state, tmp_path / "plain.pt")
    assert torch.equal(load_weights(tmp_path / "c.pt")["weight"], state["weight"])
    assert torch.equal(load_weights(tmp_path / "c.pt", ema=True)["weight"], ema["weight"])
    assert torch.equal(load_weights(tmp_path / "plain.pt")["bias"], state["bias"])
    with pytest.raises(ValueError, match="EMA"):
        load_weights(tmp_path / "plain.pt", ema=True)
    torch.save({"model": state, "ema": None}, tmp_path / "noema.pt")
    with pytest.raises(ValueError, match="no EMA"):
        load_weights(tmp_path / "noema.pt", ema=True)


def test_pretrained_reports_missing_and_unexpected_keys(tmp_path, caplog):
    src = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("1.")}
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pt")
    dst = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    with caplog.at_level(logging.WARNING, logger="speech.trainer.checkpoint"):
        missing, unexpected = load_pretrained(dst, tmp_path / "w.pt")
    assert missing == ["1.weight", "1.bias"] and unexpected == ["extra.weight"]
    assert torch.equal(dst[0].weight, src[0].weight)
    assert "1.weight" in caplog.text and "extra.weight" in caplog.text
    torch.save({"other": torch.zeros(1)}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match="none of its"):
        load_pretrained(dst, tmp_path / "none.pt")
    torch.save({"0.weight": torch.zeros(4, 4)}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_pretrained(dst, tmp_path / "shape.pt")


def _checkpoint(path, seed: int, cv_loss: float) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g).half(),
             "count": torch.tensor(seed)}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": state, "ema": {k: v * 2 for k, v in state.items()},
                       "config": "dim: 3\n", "optimizers": {}}, path)
    write_metrics(path, {"step": seed, "cv": {"loss": cv_loss}})
    return state



def test_average_ranks_by_the_runs_best_metric_unless_told(tmp_path):
    """A MeanFlow run (train_conf.best_metric: flow_mse in its config.yaml) is averaged by flow_mse, not by
    its adaptively weighted loss (~1 whatever the fit); --metric still picks any CV metric."""
    cv = {1: (0.9990, 0.30), 2: (0.9994, 0.10), 3: (0.9991, 0.20), 4: (0.9993, 0.40)}
    for step, (loss, mse) in cv.items():
        _checkpoint(tmp_path / f"step_{step:09d}.pt", step, loss)
        write_metrics(tmp_path / f"step_{step:09d}.pt", {"step": step, "cv": {"loss": loss, "flow_mse": mse}})
    tool = runpy.run_path(str(REPO / "tools" / "average_checkpoints.py"))

    def averaged(*flags: str) -> list[str]:
        out = tmp_path / "avg.pt"
        assert tool["main"](["--model_dir", str(tmp_path), "--num", "2", "--out", str(out), *flags]) == 0
        return sorted(Path(p).name for p in torch.load(out, weights_only=True)["averaged_from"])

    assert averaged() == ["step_000000001.pt", "step_000000003.pt"]  # no config.yaml: by loss
    (tmp_path / "config.yaml").write_text("flow: !new:speech.flow.model.FlowModel\n  x: !ref <d>\n"
                                          "train_conf:\n  keep_last: 3\n  best_metric: flow_mse\n")
    assert averaged() == ["step_000000002.pt", "step_000000003.pt"]
    assert averaged("--metric", "loss") == ["step_000000001.pt", "step_000000003.pt"]
    assert averaged("--metric", "flow_mse", "--mode", "max") == ["step_000000001.pt", "step_000000004.pt"]

def test_average_equals_mean_of_best_three(tmp_path):
    losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.2}  # the best three are steps 4, 2, 3
    states = {s: _checkpoint(tmp_path / f"step_{s:09d}.pt", s, loss) for s, loss in losses.items()}
    best = [states[4], states[2], states[3]]
    tool = runpy.run_path(str(REPO / "tools" / "average_checkpoints.py"))
    assert tool["main"](["--model_dir", str(tmp_path), "--num", "3", "--out", str(tmp_path / "avg.pt")]) == 0
    out = torch.load(tmp_path / "avg.pt", weights_only=True)
    torch.testing.assert_close(out["model"]["w"], (best[0]["w"] + best[1]["w"] + best[2]["w"]) / 3)
    want_b = (best[0]["b"].double() + best[1]["b"].double() + best[2]["b"].double()) / 3
    assert out["model"]["b"].dtype == torch.float16
    torch.testing.assert_close(out["model"]["b"], want_b.half())
    assert out["model"]["count"] == 3  # integer tensors come from the last averaged checkpoint
    assert out["config"] == "dim: 3\n" and len(out["averaged_from"]) == 3
    # EMA weights, safetensors output with the config beside it, and the export tool.
    assert tool["main"](["--model_dir", str(tmp_path), "--num", "3", "--ema",
                         "--out", str(tmp_path / "avg.safetensors")]) == 0
    st = load_file(str(tmp_path / "avg.safetensors"))
    torch.testing.assert_close(st["w"], 2 * (best[0]["w"] + best[1]["w"] + best[2]["w"]) / 3)
    assert (tmp_path / "avg.yaml").read_text() == "dim: 3\n"
    export = runpy.run_path(str(REPO / "tools" / "export_weights.py"))
    assert export["main"]([str(tmp_path / "step_000000002.pt"), "--out", str(tmp_path / "e.safetensors")]) == 0
    assert torch.equal(load_file(str(tmp_path / "e.safetensors"))["w"], states[2]["w"])
    assert torch.equal(load_weights(tmp_path / "e.safetensors")["w"], states[2]["w"])


def test_average_state_dicts_rejects_mismatched_keys():
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
