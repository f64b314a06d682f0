"""Run under torchrun by test_distributed.py: the same training several ways, weights dumped.

For each engine in ``--engines`` (``torch_ddp``, ``deepspeed``):

1. ``ENGINE_full``: ``--model toy`` uninterrupted for the config's epochs;
2. ``ENGINE_resumed``: the same run stopped at ``--split_steps`` optimizer steps, then resumed
   with ``--checkpoint last`` by a fresh trainer;

3. with ``--poison UTT``, ``ENGINE_poison`` (and ``deepspeed0_poison`` on ZeRO stage 0): one epoch
   in which the batch holding ``UTT`` has non-finite gradients;

plus ``gan`` (torch_ddp only): the two-optimizer toy GAN for one epoch; and with ``--flow_data DIR``
(a corpus whose batches are the same on every rank), ``flow_full`` and ``flow_resumed``: the toy
flow-matching model uninterrupted and split/resumed, dumping every training draw (noise, time). Each rank writes
``OUT/NAME_rankR.pt`` with its final weights and position; the test compares the files. All
runs share one launch (one process start per rank), which keeps the test fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from speech.trainer.cli import run


def dump(trainer, out: Path, name: str) -> None:
    """Save this rank's final weights and counters for the test to compare."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({"state": trainer.engine.module.state_dict(), "step": trainer.step, "epoch": trainer.epoch,
                "skipped": trainer.engine.skipped_steps, "world": trainer.info.world_size,
                "cv": trainer.last_cv, "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
                "draws": getattr(trainer.engine.module, "draws", None)},
               out / f"{name}_rank{rank}.pt")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split_steps", type=int, required=True)
    p.add_argument("--engines", default="torch_ddp")
    p.add_argument("--gan", action="store_true")
    p.add_argument("--poison", help="utterance whose batch gets non-finite gradients")
    p.add_argument("--flow_data", help="corpus for the toy flow-matching runs (identical batches on every rank)")
    p.add_argument("rest", nargs="*", help="extra train.py arguments (after --)")
    args = p.parse_args()
    out, data = Path(args.out), Path(args.data)
    base = ["--config", "tests/trainer/toy.yaml", "--trust_config", "--train_data", str(data / "train.list"),
            "--cv_data", str(data / "cv.list"), "--comet_disabled", *args.rest]
    for engine in args.engines.split(","):
        flags = base + ["--model", "toy", "--train_engine", engine]
        if engine == "deepspeed":
            flags += ["--deepspeed_config", "configs/deepspeed/zero2.json"]
        dump(run(flags + ["--model_dir", str(out / f"{engine}_full")]), out, f"{engine}_full")
        split = ["--model_dir", str(out / f"{engine}_split")]
        run(flags + split + [f"train_conf.max_steps={args.split_steps}"])
        dump(run(flags + split + ["--checkpoint", "last"]), out, f"{engine}_resumed")
        if args.poison:
            poison = [f"poison=[{args.poison}]", "train_conf.max_epoch=1"]
            dump(run(flags + poison + ["--model_dir", str(out / f"{engine}_poison")]), out, f"{engine}_poison")
            if engine == "deepspeed":
                zero0 = flags + ["--deepspeed_config", "configs/deepspeed/zero0.json"]  # the later flag wins
                dump(run(zero0 + poison + ["--model_dir", str(out / "deepspeed0_poison")]), out, "deepspeed0_poison")
    if args.gan:
        dump(run(base + ["--model", "gan", "--model_dir", str(out / "gan"), "train_conf.max_epoch=1"]), out, "gan")
    if args.flow_data:
        flow = ["--config", "tests/trainer/toy.yaml", "--trust_config", "--model", "flow", "--comet_disabled", *args.rest,
                "--train_data", str(Path(args.flow_data) / "train.list"), "--cv_data", str(data / "cv.list")]
        dump(run(flow + ["--model_dir", str(out / "flow_full")]), out, "flow_full")
        run(flow + ["--model_dir", str(out / "flow_split"), f"train_conf.max_steps={args.split_steps}"])
        dump(run(flow + ["--model_dir", str(out / "flow_split"), "--checkpoint", "last"]), out, "flow_resumed")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
