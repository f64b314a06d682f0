"""Faults and trust: keep-best pruning, repair of interrupted folder rotations and prunes, DeepSpeed
shards read with weights_only=True, the slow-bf16 warning, per-rank seeds, fault points."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import yaml

from speech.trainer import checkpoint as ck
from speech.trainer import engine as engine_mod
from speech.trainer import faults
from speech.trainer.checkpoint import (clean_temp_files, list_checkpoints, prune_checkpoints, recover_rotations,
                                       resolve_checkpoint, write_metrics)
from speech.trainer.cli import run, warn_slow_cpu_bf16
from speech.trainer.rng import seed_rank_rng

from .support import REPO, train_args


def _ckpt(folder, step: int, loss: float | None, directory: bool = False):
    path = folder / ck.checkpoint_name(step, directory=directory)
    if directory:
        path.mkdir()
        (path / "trainer.pt").write_bytes(b"x")
    else:
        path.write_bytes(b"x")
    write_metrics(path, {"step": step, "cv": None if loss is None else {"loss": loss}})
    return path


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("directory", [False, True], ids=["file", "deepspeed_folder"])
def test_keep_best_keeps_lowest_cv_loss_plus_newest(tmp_path, directory):
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: None, 5: 0.5, 6: 3.0, 7: 2.0, 8: float("nan"), 9: 9.0, 10: 8.0}
    for step, loss in losses.items():
        _ckpt(tmp_path, step, loss, directory)
    removed = prune_checkpoints(tmp_path, keep_last=2, keep_best=3)
    kept = [c.step for c in list_checkpoints(tmp_path)]
    assert kept == [2, 5, 7, 9, 10]  # best three: 0.5, 1.0, 2.0 (no-CV and NaN never rank); newest two
    assert len(removed) == 5 and _hidden(tmp_path) == []
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == [f"step_{s:09d}.yaml" for s in kept]
    prune_checkpoints(tmp_path, keep_last=2)  # without keep_best: only the newest two
    assert [c.step for c in list_checkpoints(tmp_path)] == [9, 10]


def test_keep_best_ranks_by_the_metric_given(tmp_path):
    """MeanFlow's weighted CV loss barely moves: keep_best can rank by another CV metric (flow_mse)."""
    for step, (loss, mse) in {1: (0.9990, 0.30), 2: (0.9994, 0.10), 3: (0.9991, 0.20), 4: (0.9993, 0.40),
                              5: (0.9992, 0.50)}.items():
        write_metrics(_ckpt(tmp_path, step, None), {"step": step, "cv": {"loss": loss, "flow_mse": mse}})
    prune_checkpoints(tmp_path, keep_last=1, keep_best=2, metric="flow_mse")
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 3, 5]  # by loss it would have been 1, 3, 5


def test_the_trainer_prunes_by_train_conf_best_metric(toy_data, tmp_path, monkeypatch, caplog):
    """train_conf.best_metric reaches every prune, and the config.yaml that average_checkpoints reads."""
    from speech.trainer import loop

    metrics = []

    def spy(model_dir, keep_last, keep_best=0, metric="loss"):
        metrics.append(metric)
        return []

    monkeypatch.setattr(loop, "prune_checkpoints", spy)
    common = ["train_conf.save_per_step=4", "train_conf.max_epoch=1", "train_conf.keep_last=1",
              "train_conf.keep_best=2"]
    run(train_args(toy_data, tmp_path / "mae", *common, "train_conf.best_metric=mae"))
    assert metrics and set(metrics) == {"mae"}
    from tools.average_checkpoints import best_metric

    assert best_metric(tmp_path / "mae") == "mae" and best_metric(tmp_path) == "loss"  # no config.yaml: loss
    with caplog.at_level(logging.WARNING, logger="speech"):
        run(train_args(toy_data, tmp_path / "typo", *common, "train_conf.best_metric=mea"))
    assert "train_conf.best_metric 'mea' is not a CV metric (loss, mae)" in caplog.text


def test_keep_best_through_a_toy_run(toy_data, tmp_path):
    """Checkpoint every step with keep_last=1 keep_best=2: the survivors are the newest and the
    two lowest CV losses of all the checkpoints a keep-all run of the same seed wrote, and
    average_checkpoints --num 2 picks those two."""
    common = ["train_conf.save_per_step=1", "train_conf.max_epoch=2", "optim.lr=0.05"]
    run(train_args(toy_data, tmp_path / "all", *common))
    cv = {c.step: ck.cv_score(c.path) for c in list_checkpoints(tmp_path / "all")}
    assert len(cv) == 12
    run(train_args(toy_data, tmp_path / "pruned", *common, "train_conf.keep_last=1", "train_conf.keep_best=2"))
    best = sorted(cv, key=lambda s: (cv[s], s))[:2]
    kept = [c.step for c in list_checkpoints(tmp_path / "pruned")]
    assert kept == sorted(set(best) | {12}) and _hidden(tmp_path / "pruned") == []
    from tools.average_checkpoints import select

    assert sorted(p.name for p in select(tmp_path / "pruned", 2, "loss", "min", False)) == [
        ck.checkpoint_name(s) for s in sorted(best)]


def _ds_folder(path, tag: str) -> None:
    path.mkdir()
    (path / "mp_rank_00_model_states.pt").write_text(tag)
    (path / "trainer.pt").write_text(tag)


@pytest.mark.parametrize("state, expect", [
    ("killed_before_first_rename", "old"),   # .tmp complete, step_S still the old copy
    ("killed_between_renames", "new"),       # .old + complete .tmp, no step_S
    ("killed_between_renames_tmp_partial", "old"),  # (defensive) .tmp lacks trainer.pt
    ("killed_before_old_deleted", "new"),    # step_S new, .old still there
    ("killed_mid_prune", None),              # a hidden .del copy left by prune
])
def test_interrupted_rotation_is_repaired_at_start(tmp_path, state, expect):
    """Every state a kill can leave between the steps of DeepSpeedEngine.save's rotation (and of
    prune): after recover + clean, `--checkpoint last` finds step_S with the expected content
    and no hidden folder lingers."""
    _ds_folder(tmp_path / "step_000000002", "older")
    final, old, tmp = tmp_path / "step_000000004", tmp_path / ".step_000000004.old", tmp_path / ".step_000000004.tmp"
    if state == "killed_before_first_rename":
        _ds_folder(final, "old")
        _ds_folder(tmp, "new")
    elif state == "killed_between_renames":
        _ds_folder(old, "old")
        _ds_folder(tmp, "new")
    elif state == "killed_between_renames_tmp_partial":
        _ds_folder(old, "old")
        tmp.mkdir()
        (tmp / "mp_rank_00_model_states.pt").write_text("new")
    elif state == "killed_before_old_deleted":
        _ds_folder(final, "new")
        _ds_folder(old, "old")
    else:
        _ds_folder(final, "new")
        _ds_folder(tmp_path / ".step_000000001.del", "pruned")
        (tmp_path / ".step_000000003.pt.del").write_text("pruned")
        for step in (1, 3):  # the kill fell before prune deleted their YAML
            (tmp_path / f"step_{step:09d}.yaml").write_text("cv: {loss: 1.0}\n")
        (tmp_path / ".config.yaml.tmp-123").write_text("half")  # a killed atomic_write_text
    if state.startswith("killed_between"):
        assert resolve_checkpoint("last", tmp_path).name == "step_000000002"  # what used to happen
    recover_rotations(tmp_path)
    clean_temp_files(tmp_path)
    assert _hidden(tmp_path) == []
    last = resolve_checkpoint("last", tmp_path)
    assert last == final and (last / "trainer.pt").read_text() == (expect or "new")
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 4]
    assert not (tmp_path / "step_000000001.yaml").exists() and not (tmp_path / "step_000000003.yaml").exists()


class Evil:
    """Not allow-listed: a shard holding it must not load."""


def test_deepspeed_shards_load_weights_only_with_allow_list(tmp_path):
    """A file with a ZeRO shard's structure loads through DeepSpeed's own checkpoint engine with
    weights_only forced on and only DeepSpeed's classes allowed; anything else is refused."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    shard = {"optimizer_state_dict": {
        "loss_scaler": LossScaler(1.0), "dynamic_loss_scale": False, "overflow": False, "clip_grad": 1.0,
        "base_optimizer_state": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
        "single_partition_of_fp32_groups": [torch.arange(3.0)], "zero_stage": ZeroStageEnum.gradients,
        "partition_count": [1], "ds_version": "0.19.8",
        "param_slice_mappings": [{"net.0.weight": fragment_address(numel=3, start=0)}]}, "ds_config": {}}
    good, bad = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp_path / "evil.pt"
    torch.save(shard, good)
    torch.save({**shard, "payload": Evil()}, bad)
    original = torch.load
    with engine_mod.deepspeed_weights_only():
        loaded = TorchCheckpointEngine().load(str(good), map_location=lambda s, loc: s)  # asks weights_only=False
        with pytest.raises(Exception, match="weights_only|Unsupported global"):
            TorchCheckpointEngine().load(str(bad), map_location=lambda s, loc: s)
    assert torch.load is original
    opt = loaded["optimizer_state_dict"]
    assert isinstance(opt["loss_scaler"], LossScaler) and opt["loss_scaler"].cur_scale == 1.0
    assert opt["zero_stage"] is ZeroStageEnum.gradients
    assert opt["param_slice_mappings"][0]["net.0.weight"] == fragment_address(numel=3, start=0)
    assert torch.load(bad, weights_only=False)["payload"] is not None  # outside the scope: untouched


def test_slow_bf16_warning(monkeypatch, caplog):
    monkeypatch.setattr(engine_mod, "bf16_matmul_slowdown", lambda: 97.0)
    with caplog.at_level(logging.WARNING, logger="speech.trainer"):
        assert warn_slow_cpu_bf16() == 97.0
    assert "97x slower than fp32" in caplog.text and "drop --use_amp" in caplog.text
    caplog.clear()
    monkeypatch.setattr(engine_mod, "bf16_matmul_slowdown", lambda: 0.5)  # native bf16: no warning
    with caplog.at_level(logging.WARNING, logger="speech.trainer"):
        warn_slow_cpu_bf16()
    assert caplog.text == ""


def test_slow_bf16_probe_runs_only_for_bf16_amp_on_cpu(toy_data, tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(engine_mod, "bf16_matmul_slowdown", lambda: calls.append(1) or 50.0)
    with caplog.at_level(logging.WARNING, logger="speech.trainer"):
        run(train_args(toy_data, tmp_path / "amp", "--use_amp", "train_conf.max_steps=1"))
    assert calls == [1] and "50x slower than fp32" in caplog.text
    run(train_args(toy_data, tmp_path / "fp32", "train_conf.max_steps=1"))
    assert calls == [1]


def test_real_probe_is_quick():
    import time

    t0 = time.perf_counter()
    ratio = engine_mod.bf16_matmul_slowdown()
    assert ratio > 0 and time.perf_counter() - t0 < 2.0


def test_rank_seeds_differ_and_repeat():
    seed_rank_rng(3, 0)
    a = torch.rand(4)
    seed_rank_rng(3, 1)
    b = torch.rand(4)
    seed_rank_rng(3, 0)
    assert torch.equal(a, torch.rand(4)) and not torch.equal(a, b)


def test_resume_writes_metrics_a_kill_left_out(toy_data, tmp_path):
    """A kill between a checkpoint's rename and its YAML: the resumed run writes the CV metrics
    (the values a complete save would have written), so keep_best can rank it."""
    model_dir = tmp_path / "exp"
    run(train_args(toy_data, model_dir, "train_conf.max_steps=3"))
    meta = model_dir / "step_000000003.yaml"
    expected = yaml.safe_load(meta.read_text())["cv"]
    meta.unlink()
    resumed = run(train_args(toy_data, model_dir, "--checkpoint", "last", "train_conf.max_steps=4"))
    assert resumed.step == 4 and yaml.safe_load(meta.read_text())["cv"] == expected


def test_fault_points_log_and_kill(tmp_path):
    """SPEECH_FAULT_LOG records points with their step; SPEECH_FAULT_KILL sends SIGKILL there."""
    log = tmp_path / "points.log"
    code = ("from speech.trainer import faults\n"
            "faults.point('a'); faults.set_step(2); faults.point('a'); faults.point('b')\n"
            "print('survived')\n")
    env = {**os.environ, "SPEECH_FAULT_LOG": str(log), "SPEECH_FAULT_KILL": "b@2"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == -9 and "survived" not in result.stdout
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [["a", "-1"], ["a", "2"], ["b", "2"]]
    faults.reset()
    faults.point("nothing")  # inert without the variables
