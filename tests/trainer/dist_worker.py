"""Run under torchrun by the distributed tests: the same training three ways, weights dumped.

1. ``full``: ``--model toy`` uninterrupted for the config's epochs;
2. ``split`` + ``resumed``: the same stopped at ``--split_steps`` optimizer steps, then resumed
   with ``--checkpoint last`` in a fresh trainer;
3. optionally ``gan``: the two-optimizer toy GAN for one epoch.

Each rank writes ``OUT/NAME_rankR.pt`` with its final weights and position; the test compares.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from speech.trainer.cli import run


def dump(trainer, out: Path, name: str) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({"state": trainer.engine.module.state_dict(), "step": trainer.step, "epoch": trainer.epoch,
                "skipped": trainer.engine.skipped_steps, "world": trainer.info.world_size},
               out / f"{name}_rank{rank}.pt")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split_steps", type=int, required=True)
    p.add_argument("--gan", action="store_true")
    p.add_argument("rest", nargs="*", help="extra train.py arguments (flags after --)")
    args = p.parse_args()
    out, data = Path(args.out), Path(args.data)
    base = ["--config", "tests/trainer/toy.yaml", "--train_data", str(data / "train.list"),
            "--cv_data", str(data / "cv.list"), "--comet_disabled", *args.rest]
    dump(run(base + ["--model", "toy", "--model_dir", str(out / "full")]), out, "full")
    run(base + ["--model", "toy", "--model_dir", str(out / "split"), f"train_conf.max_steps={args.split_steps}"])
    dump(run(base + ["--model", "toy", "--model_dir", str(out / "split"), "--checkpoint", "last"]), out, "resumed")
    if args.gan:
        dump(run(base + ["--model", "gan", "--model_dir", str(out / "gan"), "train_conf.max_epoch=1"]), out, "gan")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
