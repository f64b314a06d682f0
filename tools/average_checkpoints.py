#!/usr/bin/env python3
"""Average the weights of several checkpoints (by default the best N by CV metric in a model_dir).

    python tools/average_checkpoints.py --model_dir exp/flow --num 5 --out exp/flow/avg5.pt
    python tools/average_checkpoints.py --model_dir exp/flow --num 5 --ema --out exp/flow/avg5.safetensors
    python tools/average_checkpoints.py --checkpoints a.pt b.pt c.pt --out avg.pt

The output ``.pt`` holds ``{"model", "config", "averaged_from"}`` and loads with
``--pretrained_model`` or ``speech.trainer.load_weights``; a ``.safetensors`` output gets the
config written beside it as ``NAME.yaml``.

The CV metric that ranks them is the run's ``train_conf.best_metric`` (the one ``keep_best`` kept
checkpoints by; ``loss`` unless the config says otherwise, e.g. ``flow_mse`` for MeanFlow), or
``--metric``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from speech.config import ConfigError
from speech.trainer.checkpoint import (CONFIG_FILE, atomic_torch_save, atomic_write_text, average_state_dicts,
                                       cv_score, list_checkpoints, load_weights, read_config_text, save_safetensors)
from speech.trainer.options import TrainConf, read_train_conf


def best_metric(model_dir: Path) -> str:
    """The CV metric a training run ranks its checkpoints by: ``train_conf.best_metric`` of the
    ``config.yaml`` it wrote (the default, ``loss``, without one)."""
    config = model_dir / CONFIG_FILE
    if not config.is_file():
        return TrainConf.best_metric
    try:
        return read_train_conf(config.read_text(encoding="utf-8")).best_metric
    except (ConfigError, yaml.YAMLError) as exc:
        raise ValueError(f"{config}: cannot read train_conf.best_metric ({exc}); give --metric") from None


def select(model_dir: Path, num: int, metric: str, mode: str, last: bool) -> list[Path]:
    """The newest ``num`` checkpoints, or the best ``num`` by ``cv.<metric>`` from their YAML."""
    found = list_checkpoints(model_dir)
    if not found:
        raise ValueError(f"no checkpoints in {model_dir}")
    if last:
        return [c.path for c in found[-num:]]
    scored = [(m, c.path) for c in found if (m := cv_score(c.path, metric)) is not None]
    if not scored:
        raise ValueError(f"no checkpoint in {model_dir} has a CV '{metric}' in its YAML (use --last)")
    scored.sort(key=lambda t: t[0], reverse=mode == "max")
    return [p for _, p in scored[:num]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model_dir", type=Path, help="pick checkpoints from this training folder")
    src.add_argument("--checkpoints", type=Path, nargs="+", help="average exactly these")
    p.add_argument("--num", type=int, default=5, help="how many to average (with --model_dir)")
    p.add_argument("--metric", default=None,
                   help="CV metric in step_S.yaml to rank by (default: the run's train_conf.best_metric, else loss)")
    p.add_argument("--mode", choices=["min", "max"], default="min", help="lower (min) or higher (max) is better")
    p.add_argument("--last", action="store_true", help="take the newest --num instead of the best")
    p.add_argument("--ema", action="store_true", help="average the EMA weights")
    p.add_argument("--out", type=Path, required=True, help="output .pt or .safetensors")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        metric = args.metric or (best_metric(args.model_dir) if args.model_dir else TrainConf.best_metric)
        paths = args.checkpoints or select(args.model_dir, args.num, metric, args.mode, args.last)
        states = [load_weights(path, ema=args.ema) for path in tqdm(paths, desc="loading", unit="ckpt")]
        averaged = average_state_dicts(states)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"average_checkpoints.py: error: {exc}\n")
        return 2
    config = read_config_text(paths[-1])
    unresolved = read_config_text(paths[-1], unresolved=True)
    unresolved = unresolved if unresolved != config else None  # older checkpoints have no unresolved text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".safetensors":
        save_safetensors(averaged, args.out, {"averaged_from": ",".join(map(str, paths)), "ema": str(args.ema)})
        if config:
            atomic_write_text(args.out.with_suffix(".yaml"), config)
        if unresolved:
            atomic_write_text(args.out.with_suffix(".unresolved.yaml"), unresolved)
    else:
        atomic_torch_save({"model": averaged, "config": config, "config_unresolved": unresolved,
                           "averaged_from": [str(p) for p in paths]}, args.out)
    scores = [cv_score(p, metric) for p in paths]
    shown = ", ".join(f"{Path(p).name}" + (f" ({s:.4f})" if s is not None else "") for p, s in zip(paths, scores))
    print(f"averaged {len(paths)} checkpoint(s){' (EMA)' if args.ema else ''}: {shown} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
