"""train.py end to end in one process: the seed command, exact resume, fail-fast, Comet offline."""
from __future__ import annotations

import logging

import pytest
import torch
import yaml

from speech.config import ConfigError
from speech.trainer.cli import main, run
from speech.trainer.options import TrainConf, loose_yaml_loader

from .support import PYTHON, TOY_CONFIG, run_cmd, train_args


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--train_engine", "--deepspeed_config", "--qwen_pretrain_path", "--num_workers", "--prefetch",
                 "--pin_memory", "--use_amp", "--amp_dtype", "--comet_disabled", "--checkpoint",
                 "--pretrained_model"):
        assert flag in out


def test_seed_command_single_process(toy_data, tmp_path):
    """The user's command line as written (minus torchrun), with bf16 AMP and a worker process."""
    qwen = tmp_path / "CosyVoice-BlankEN"
    qwen.mkdir()
    model_dir = tmp_path / "exp"
    result = run_cmd([PYTHON, "train.py", "--train_engine", "torch_ddp", *train_args(toy_data, model_dir),
                      "--qwen_pretrain_path", str(qwen), "--num_workers", "1", "--prefetch", "2", "--pin_memory",
                      "--use_amp", "train_conf.max_epoch=1"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 6 steps" in result.stderr
    saved = yaml.load((model_dir / "config.yaml").read_text(), Loader=loose_yaml_loader())  # tags read as None
    assert saved["qwen_pretrain_path"] == str(qwen)
    metrics = yaml.safe_load((model_dir / "step_000000006.yaml").read_text())
    assert metrics["step"] == 6 and metrics["epoch"] == 1 and metrics["cv"]["loss"] > 0
    ckpt = torch.load(model_dir / "step_000000006.pt", weights_only=True)
    assert {"model", "optimizers", "schedulers", "scaler", "ema", "trainer", "config"} <= set(ckpt)
    assert ckpt["trainer"]["epoch"] == 1 and ckpt["trainer"]["batch_in_epoch"] == 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(model_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/mae", "train/lr", "train/grad_norm", "train/frames_per_s", "train/skipped_steps",
            "data/skipped_items", "data/skipped/too_long", "cv/loss", "cv/mae"} <= tags
    # 2 batches of 2 items per log line, one "too_long" skip reported per batch by the toy pipeline
    assert [e.value for e in events.Scalars("data/skipped_items")] == [2.0, 2.0, 2.0]
    assert all(e.value > 0 for e in events.Scalars("train/frames_per_s"))
    assert "audio/tone" in events.Tags()["audio"] and "image/noise" in events.Tags()["images"]


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}


@pytest.mark.parametrize("workers", ["0", "1"])
def test_resume_is_exact(toy_data, tmp_path, workers):
    """N steps + resume + N steps == 2N steps: weights, EMA and Adam moments bit for bit."""
    common = ["--num_workers", workers, "train_conf.accum_grad=2", "train_conf.ema_decay=0.9",
              "train_conf.save_per_step=2", "train_conf.keep_last=2"]
    full = run(train_args(toy_data, tmp_path / "full", *common))
    split = train_args(toy_data, tmp_path / "split", *common)
    first = run(split + ["--checkpoint", "last", "train_conf.max_steps=4"])  # no checkpoint yet: fresh start
    assert first.step == 4 and (first.epoch, first.batch_in_epoch) == (1, 2)  # stopped inside epoch 1
    resumed = run(split + ["--checkpoint", "last"])
    assert full.step == resumed.step == 6
    for k, v in _weights(full).items():
        assert torch.equal(v, _weights(resumed)[k]), k
    for k, v in full.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k
    opt_a, opt_b = full.engine.optimizers["main"].state_dict(), resumed.engine.optimizers["main"].state_dict()
    for i, state in opt_a["state"].items():
        assert torch.equal(state["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])
    assert full.engine.schedulers["main"].last_epoch == resumed.engine.schedulers["main"].last_epoch == 6
    assert sorted(p.name for p in (tmp_path / "split").glob("step_*.pt")) == [
        "step_000000004.pt", "step_000000006.pt"]  # keep_last=2


@pytest.mark.parametrize("extra, message", [
    (["--model", "nope"], "has no 'nope' section for --model nope (model sections: toy, gan, flow)"),
    (["--pretrained_model", "/no/such/model.pt"], "--pretrained_model not found: /no/such/model.pt"),
    (["--qwen_pretrain_path", "/no/such/qwen"], "--qwen_pretrain_path not found: /no/such/qwen"),
    (["--checkpoint", "/no/such/ckpt.pt"], "--checkpoint not found"),
    (["train_conf.max_epok=3"], "unknown train_conf key"),
    (["dimm=3"], "does not match any key"),
    (["train_conf.accum_grad=0"], "accum_grad must be >= 1"),
    (["novalue"], "is not of the form key=value"),
    (["--train_engine", "deepspeed"], "needs --deepspeed_config"),
], ids=["model", "pretrained", "qwen", "checkpoint", "train_conf_key", "override_key", "train_conf_value",
        "override_form", "deepspeed"])
def test_fail_fast(toy_data, tmp_path, capsys, extra, message):
    args = train_args(toy_data, tmp_path / "exp")
    if "--model" in extra:
        i = args.index("--model")
        args[i + 1] = extra[1]
        extra = []
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:") and message in err[0]
    assert not (tmp_path / "exp").exists()  # nothing was started


def test_fail_fast_on_missing_shard(toy_data, tmp_path, capsys):
    bad_list = tmp_path / "bad.list"
    bad_list.write_text("train.jsonl\nmissing_shard.jsonl\n")
    (tmp_path / "train.jsonl").write_text((toy_data / "train.jsonl").read_text())
    args = train_args(toy_data, tmp_path / "exp")
    args[args.index("--train_data") + 1] = str(bad_list)
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "names 1 missing shard(s)" in lines[0] and "missing_shard.jsonl" in lines[0]
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("every,max_steps,expected", [
    (1, 0, [6, 12, 18, 24, 30]), (2, 0, [12, 24, 30]), (0, 0, [30]), (0, 9, [9]), (2, 15, [12, 15])])
def test_save_per_epoch_checkpoints_every_nth_epoch_end_and_the_last(toy_data, tmp_path, every, max_steps, expected):
    """6 steps per epoch, 5 epochs (or max_steps): the stopping position is saved whatever N is."""
    model_dir = tmp_path / "exp"
    assert main(train_args(toy_data, model_dir, "train_conf.max_epoch=5", f"train_conf.save_per_epoch={every}",
                           f"train_conf.max_steps={max_steps}")) == 0
    saved = sorted(int(p.stem.split("_")[1]) for p in model_dir.glob("step_*.yaml"))
    assert saved == expected


@pytest.mark.parametrize("save_per_step,save_per_epoch,expected", [
    (4, 0, [4, 8, 12, 16, 20]), (3, 0, [3, 6, 9, 12, 15, 18, 20]), (4, 3, [4, 8, 12, 16, 18, 20])])
def test_save_per_step_checkpoints_land_on_epoch_ends_too(toy_data, tmp_path, save_per_step, save_per_epoch, expected):
    """6 steps per epoch: a step interval that ends an epoch (6, 12, 18) is saved after the epoch ends,
    whatever save_per_epoch is (it was dropped when the epoch-end save was off)."""
    model_dir = tmp_path / "exp"
    assert main(train_args(toy_data, model_dir, "train_conf.max_epoch=5", f"train_conf.save_per_epoch={save_per_epoch}",
                           f"train_conf.save_per_step={save_per_step}", "train_conf.max_steps=20")) == 0
    saved = sorted(int(p.stem.split("_")[1]) for p in model_dir.glob("step_*.yaml"))
    assert saved == expected


def test_an_epoch_without_batches_fails_instead_of_training_nothing(toy_data, tmp_path, capsys):
    """A shard whose items all vanish (here: an empty one) would otherwise run max_epoch empty epochs
    and exit 0 with a step-0 checkpoint that looks like a trained model."""
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.list").write_text("empty.jsonl\n")
    args = train_args(toy_data, tmp_path / "exp", "train_conf.max_epoch=50")
    args[args.index("--train_data") + 1] = str(tmp_path / "empty.list")
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the (empty) progress bar
    assert last.startswith("train.py: error: epoch 0 produced no training batches")
    assert not list((tmp_path / "exp").glob("step_*.pt"))


def test_a_config_outside_the_allow_list_is_refused_before_anything_runs(toy_data, tmp_path, capsys):
    """train.py builds configs like every other loader: a model folder's config.yaml is data."""
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(TOY_CONFIG.read_text() + f"evil: !apply:os.system ['touch {marker}']\n")
    args = train_args(toy_data, tmp_path / "exp")
    args = [a for a in args if a != "--trust_config"]
    args[args.index("--config") + 1] = str(config)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:") and "refused" in err[0] and "--trust_config" in err[0]
    assert not marker.exists() and not (tmp_path / "exp").exists()


def test_bad_optimizer_argument_is_one_line(toy_data, tmp_path, capsys):
    assert main(train_args(toy_data, tmp_path / "exp", "optim.lrr=0.1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected keyword argument 'lrr'" in err[0]


def test_comet_offline_archive(toy_data, tmp_path):
    pytest.importorskip("comet_ml")
    args = [a for a in train_args(toy_data, tmp_path / "exp", "--comet_offline", "train_conf.max_epoch=1")
            if a != "--comet_disabled"]
    run(args)
    archives = list((tmp_path / "exp" / "comet").glob("*.zip"))
    assert len(archives) == 1 and archives[0].stat().st_size > 0


def test_pretrained_model_loads_weights_and_reports(toy_data, tmp_path, caplog):
    donor = run(train_args(toy_data, tmp_path / "donor", "train_conf.max_steps=1"))
    weights = {k: v for k, v in donor.engine.module.state_dict().items() if k != "net.3.bias"}
    torch.save(weights, tmp_path / "w.pt")
    with caplog.at_level(logging.INFO, logger="speech"):  # lr 0: the weights stay as loaded
        t = run(train_args(toy_data, tmp_path / "exp", "--pretrained_model", str(tmp_path / "w.pt"),
                           "train_conf.max_steps=1", "optim.lr=0.0", "optim.weight_decay=0.0"))
    assert t.step == 1
    assert torch.equal(t.engine.module.net[0].weight, weights["net.0.weight"])
    assert not torch.equal(t.engine.module.net[3].bias, donor.engine.module.net[3].bias)  # kept at init
    assert "not in the file" in caplog.text and "net.3.bias" in caplog.text


def test_train_conf_validation():
    assert TrainConf.from_dict({"max_epoch": 3, "grad_clip": 1}).grad_clip == 1.0
    with pytest.raises(ConfigError, match="must be an integer"):
        TrainConf.from_dict({"accum_grad": 1.5})
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConf.from_dict({"ema_decay": 1.0})
    assert TrainConf.from_dict({}).best_metric == "loss"
    assert TrainConf.from_dict({}).save_per_epoch == 1
    with pytest.raises(ConfigError, match="save_per_epoch must be >= 0"):
        TrainConf.from_dict({"save_per_epoch": -1})
    assert TrainConf.from_dict({"best_metric": "flow_mse"}).best_metric == "flow_mse"
    for bad in ("", 1.0):
        with pytest.raises(ConfigError, match="best_metric must be a non-empty string"):
            TrainConf.from_dict({"best_metric": bad})
    assert TOY_CONFIG.is_file()
