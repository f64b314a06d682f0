"""``train.py``: one entry point that trains any model of the project.

    torchrun --nproc_per_node 8 train.py --model flow --config configs/flow.yaml \\
        --train_data data/train.list --cv_data data/cv.list --model_dir exp/flow \\
        [--train_engine torch_ddp|deepspeed] [--use_amp] [--checkpoint last] [key=value ...]

Everything that can be checked cheaply is checked before any heavy work (process groups, model
construction, data loading): config file and ``--model`` section, overrides, ``train_conf``,
data lists and the shards they name, and every local path given on the command line. A mistake
ends the run with one ``train.py: error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from speech.config import ConfigError, parse_overrides, resolve_config_text, unresolved_config_text
from speech.dataset import DataListError, read_data_list

from .options import TrainConf, loose_yaml_loader, read_train_conf

__all__ = ["build_parser", "main", "run", "SetupError"]

log = logging.getLogger("speech.trainer")


class SetupError(RuntimeError):
    """A command-line mistake found before training starts (reported in one line)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``train.py`` command line."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train any model of the project (one process, torchrun DDP or DeepSpeed).",
        epilog="Trailing key=value pairs override the config (dotted keys: train_conf.max_epoch=2; every "
               "train_conf key is listed in speech/trainer/options.py). Resume exactly with --checkpoint last.",
    )
    p.add_argument("--config", required=True, help="hyperpyyaml config file")
    p.add_argument("--trust_config", action="store_true",
                   help="build classes/functions outside this project's allow-list (dac_vae.safe_config); "
                        "only for a config you wrote or checked: it can run any code")
    p.add_argument("--model", required=True, help="config section holding the model (llm, flow, dac_vae, ...)")
    p.add_argument("--train_data", required=True, help="data.list of training index shards")
    p.add_argument("--cv_data", help="data.list for cross-validation (CV is skipped without it)")
    p.add_argument("--model_dir", required=True, help="where checkpoints, config.yaml and logs go")
    p.add_argument("--train_engine", choices=["torch_ddp", "deepspeed"], default="torch_ddp",
                   help="torch_ddp: one process or DDP under torchrun; deepspeed: ZeRO 0-2 (default: torch_ddp)")
    p.add_argument("--deepspeed_config", help="DeepSpeed JSON (ZeRO stage 0-2), with --train_engine deepspeed")
    p.add_argument("--dist_backend", choices=["nccl", "gloo"], help="default: nccl with CUDA, else gloo")
    p.add_argument("--checkpoint", help="resume from this checkpoint, or 'last' for the newest in --model_dir")
    p.add_argument("--pretrained_model", help="load weights only from this checkpoint/.pt/.safetensors")
    p.add_argument("--qwen_pretrain_path", help="local Qwen2 folder; sets the config's qwen_pretrain_path")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--prefetch", type=int, default=2, help="batches prefetched per worker")
    p.add_argument("--pin_memory", action="store_true", help="pin host memory for faster GPU copies")
    p.add_argument("--use_amp", action="store_true", help="mixed precision (autocast)")
    p.add_argument("--amp_dtype", choices=["bf16", "fp16"], default="bf16",
                   help="bf16 (no loss scaling) or fp16 (with GradScaler)")
    p.add_argument("--comet_disabled", action="store_true", help="no Comet logging even if comet_ml is installed")
    p.add_argument("--comet_offline", action="store_true",
                   help="write an offline Comet archive under model_dir (also the default without an API key)")
    p.add_argument("--comet_project", help="Comet project name")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


@dataclass
class Setup:
    """Everything checked before heavy work."""

    args: argparse.Namespace
    overrides: dict[str, Any]
    config_text: str
    train_conf: TrainConf
    ds_config: dict[str, Any] | None
    config_unresolved: str | None = None  # overrides applied, !ref kept (None: the file uses !include:)


def _top_level(text: str, where: Path) -> dict[str, str]:
    """Top-level keys of a YAML text → their tag ('' when untagged), without building anything."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: (v.tag if v.tag.startswith("!") else "") for k, v in node.value}


def check_setup(args: argparse.Namespace) -> Setup:
    """All cheap checks, in the order a user would fix them; raises on the first problem."""
    from .engine import prepare_deepspeed_config

    config = Path(args.config)
    if not config.is_file():
        raise SetupError(f"--config not found: {config}")
    overrides = parse_overrides(args.overrides)
    raw_text = config.read_text(encoding="utf-8")
    if not args.trust_config:  # a config from a model folder is data: checked before anything resolves it
        from dac_vae.safe_config import UntrustedConfigError, check_config_text

        try:
            check_config_text(raw_text, str(config))
        except UntrustedConfigError as exc:
            raise SetupError(str(exc)) from None
    raw_sections = _top_level(raw_text, config)
    if args.qwen_pretrain_path:
        if not Path(args.qwen_pretrain_path).exists():
            raise SetupError(f"--qwen_pretrain_path not found: {args.qwen_pretrain_path}")
        if "qwen_pretrain_path" in raw_sections:
            overrides["qwen_pretrain_path"] = str(args.qwen_pretrain_path)
        else:
            log.warning("--qwen_pretrain_path given but %s has no top-level qwen_pretrain_path key: ignored", config)
    overrides, extra_train_conf = _split_train_conf_overrides(config, overrides)
    text = resolve_config_text(config, overrides)
    unresolved = unresolved_config_text(config, overrides)
    if extra_train_conf:
        text = _add_train_conf(text, extra_train_conf)
        unresolved = _add_train_conf(unresolved, extra_train_conf) if unresolved is not None else None
    sections = _top_level(text, config)
    if args.model not in sections:
        models = [k for k, tag in sections.items() if tag.startswith("!new:")]
        raise SetupError(f"{config} has no '{args.model}' section for --model {args.model}"
                         + (f" (model sections: {', '.join(models)})" if models else ""))
    for key in ("data_pipeline", "optim"):
        if key not in sections:
            raise SetupError(f"{config} has no '{key}' entry (see docs/contracts.md)")
    train_conf = read_train_conf(text)
    read_data_list(args.train_data)
    if args.cv_data:
        read_data_list(args.cv_data)
    if args.pretrained_model and not Path(args.pretrained_model).exists():
        raise SetupError(f"--pretrained_model not found: {args.pretrained_model}")
    if args.checkpoint and args.checkpoint != "last" and not Path(args.checkpoint).exists():
        raise SetupError(f"--checkpoint not found: {args.checkpoint}")
    if args.num_workers < 0 or args.prefetch < 1:
        raise SetupError("--num_workers must be >= 0 and --prefetch >= 1")
    ds_config = None
    if args.train_engine == "deepspeed":
        if not args.deepspeed_config:
            raise SetupError("--train_engine deepspeed needs --deepspeed_config (e.g. configs/deepspeed/zero2.json)")
        ds_config = prepare_deepspeed_config(args.deepspeed_config, train_conf)
    elif args.deepspeed_config:
        log.warning("--deepspeed_config is ignored with --train_engine torch_ddp")
    return Setup(args, overrides, text, train_conf, ds_config, unresolved)


def _split_train_conf_overrides(config: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``train_conf.K=V`` for a documented key the file does not list is still a valid override
    (the config checker only accepts keys present in the file): take those out to add them."""
    wanted = overrides.get("train_conf")
    if not isinstance(wanted, dict):
        return overrides, {}
    tree = yaml.load(config.read_text(encoding="utf-8"), Loader=loose_yaml_loader()) or {}
    present = tree.get("train_conf") or {}
    known = [f.name for f in dataclasses.fields(TrainConf)]
    extra = {k: v for k, v in wanted.items() if k not in present}
    unknown = sorted(set(extra) - set(known))
    if unknown:
        raise ConfigError(f"override train_conf.{unknown[0]}: unknown train_conf key (supported: {', '.join(known)})")
    rest = {k: v for k, v in wanted.items() if k in present}
    overrides = {k: v for k, v in overrides.items() if k != "train_conf"}
    if rest:
        overrides["train_conf"] = rest
    return overrides, extra


def _add_train_conf(text: str, extra: dict[str, Any]) -> str:
    """Insert ``train_conf`` keys into a resolved config text, keeping every tag as written."""
    import io

    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    doc = rt.load(text)
    if doc.get("train_conf") is None:
        doc["train_conf"] = {}
    doc["train_conf"].update(extra)
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def _build_config(text: str, path: str, trust: bool = False) -> dict[str, Any]:
    """Build the objects of the final resolved text (exactly what is saved beside checkpoints),
    through the allow-list of :mod:`dac_vae.safe_config` unless ``--trust_config``."""
    from dac_vae.safe_config import UntrustedConfigError, build_config

    try:
        return build_config(text, trust=trust, source=path)
    except UntrustedConfigError as exc:
        raise SetupError(str(exc)) from None
    except Exception as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from exc


def _setup_logging(model_dir: Path, is_main: bool) -> logging.Handler | None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("speech").setLevel(logging.INFO if is_main else logging.WARNING)
    if not is_main:
        return None
    handler = logging.FileHandler(model_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("speech").addHandler(handler)
    return handler


def run(argv: Sequence[str] | None = None, setup: Setup | None = None):
    """Check, build and train; returns the finished :class:`~speech.trainer.loop.Trainer`.

    Raises ``ConfigError``/``DataListError``/``SetupError`` for mistakes found before training.
    The process group is left initialised (``main`` tears it down) so callers can run again.
    """
    import numpy as np
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from speech.dataset import Dataset
    from speech.dataset.processors import check_length_bound

    from .checkpoint import (UNRESOLVED_CONFIG_FILE, atomic_write_text, clean_temp_files, load_pretrained,
                             recover_rotations, resolve_checkpoint)
    from .data import LoaderConf, attach_skip_counts
    from .distributed import barrier, init_distributed
    from .ema import EMA
    from .engine import DeepSpeedEngine, TorchEngine
    from .logger import RunLogger
    from .loop import Trainer
    from .rng import seed_rank_rng
    from . import faults

    if setup is None:
        setup = check_setup(build_parser().parse_intermixed_args(argv))
    args, conf = setup.args, setup.train_conf
    model_dir = Path(args.model_dir)
    faults.set_step(-1)  # fault points before training starts (see faults.py)

    info = init_distributed(args.dist_backend, force_group=args.train_engine == "deepspeed")
    if info.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        for repair in recover_rotations(model_dir):
            log.warning("%s: %s (left by a save that was killed)", model_dir, repair)
        for stale in clean_temp_files(model_dir):
            log.info("removed %s (left by an interrupted save)", stale)
    barrier(info)
    handler = _setup_logging(model_dir, info.is_main)
    logger = None
    try:
        random.seed(conf.seed)
        np.random.seed(conf.seed)
        torch.manual_seed(conf.seed)  # identical initial weights on every rank
        configs = _build_config(setup.config_text, args.config, args.trust_config)
        module = configs[args.model]
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"config section '{args.model}' is a {type(module).__name__}, not a torch module "
                              "(build it with !new:)")
        n_params = sum(p.numel() for p in module.parameters())
        log.info("model %s: %s, %.2fM parameters", args.model, type(module).__name__, n_params / 1e6)
        for key in ("data_pipeline", "cv_data_pipeline"):
            if configs.get(key):
                try:
                    check_length_bound(configs[key], f"{args.config}: {key}")
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
        pipeline = list(configs["data_pipeline"]) + [attach_skip_counts]
        train_set = Dataset(args.train_data, pipeline, shuffle=True, partition=True, seed=conf.seed)
        cv_set = None
        if args.cv_data:
            cv_pipeline = list(configs.get("cv_data_pipeline") or configs["data_pipeline"]) + [attach_skip_counts]
            cv_set = Dataset(args.cv_data, cv_pipeline, shuffle=False, partition=True, seed=conf.seed)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp_dtype] if args.use_amp else None
        log.info("precision: %s", f"{args.amp_dtype} autocast (--use_amp)" if args.use_amp else "fp32")
        if amp_dtype == torch.bfloat16 and info.device.type == "cpu" and info.is_main:
            warn_slow_cpu_bf16()
        common = dict(optim=configs.get("optim"), scheduler=configs.get("scheduler"), conf=conf, info=info,
                      amp_dtype=amp_dtype)
        if args.train_engine == "deepspeed":
            engine = DeepSpeedEngine(module, ds_config=setup.ds_config, **common)
        else:
            engine = TorchEngine(module, **common)
        checkpoint = resolve_checkpoint(args.checkpoint, model_dir)
        if args.checkpoint == "last" and checkpoint is None:
            log.info("--checkpoint last: no checkpoint in %s yet, starting from scratch", model_dir)
        if args.pretrained_model:
            if checkpoint is not None:
                log.info("resuming from %s: --pretrained_model is not used", checkpoint)
            else:
                try:
                    load_pretrained(engine.module, args.pretrained_model)
                except (ValueError, RuntimeError) as exc:
                    raise SetupError(str(exc)) from None
        ema = EMA(engine.module, conf.ema_decay) if conf.ema_decay > 0 and info.is_main else None
        engine.wrap()
        seed_rank_rng(conf.seed, info.rank)  # weights were built from the seed alone; draws differ by rank
        logger = RunLogger(model_dir, enabled=info.is_main, comet=not args.comet_disabled,
                           comet_offline=args.comet_offline, comet_project=args.comet_project,
                           params={"model": args.model, "engine": args.train_engine, "world_size": info.world_size,
                                   "amp": args.amp_dtype if args.use_amp else "off",
                                   "train_conf": dataclasses.asdict(conf)})
        trainer = Trainer(engine, train_set, cv_set, LoaderConf(args.num_workers, args.prefetch, args.pin_memory),
                          conf, info, model_dir, logger, config_text=setup.config_text, ema=ema,
                          config_unresolved=setup.config_unresolved)
        if checkpoint is not None:
            try:
                trainer.resume(checkpoint)
            except (ValueError, KeyError) as exc:
                raise SetupError(f"cannot resume from {checkpoint}: {exc}") from None
        if info.is_main:
            atomic_write_text(model_dir / "config.yaml", setup.config_text)
            if setup.config_unresolved is not None:
                atomic_write_text(model_dir / UNRESOLVED_CONFIG_FILE, setup.config_unresolved)
            else:  # a stale one from an earlier run would be preferred by the loaders
                (model_dir / UNRESOLVED_CONFIG_FILE).unlink(missing_ok=True)
        with logging_redirect_tqdm():
            trainer.fit()
        return trainer
    finally:
        if logger is not None:
            logger.close()
        if handler is not None:
            logging.getLogger("speech").removeHandler(handler)
            handler.close()


def warn_slow_cpu_bf16(threshold: float = 2.0) -> float:
    """``--use_amp`` bf16 on CPU: time a tiny matmul probe (~0.1 s) and warn when this CPU runs bf16
    matmuls ``threshold`` times slower than fp32 (no native bf16); returns the measured ratio."""
    from . import engine

    ratio = engine.bf16_matmul_slowdown()
    if ratio >= threshold:
        log.warning("--use_amp (bf16) on this CPU: a bf16 matmul measured %.0fx slower than fp32 (no native bf16 "
                    "matmul here, e.g. AVX2 only); training would run several times slower than in fp32: drop "
                    "--use_amp on this machine (or use --amp_dtype fp16 on a GPU)", ratio)
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 on success, 2 with one error line for a setup mistake."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        setup = check_setup(args)
        run(setup=setup)
    except (ConfigError, DataListError, SetupError) as exc:
        if os.environ.get("RANK", "0") == "0":
            sys.stderr.write(f"train.py: error: {exc}\n")
        return 2
    finally:
        _teardown()
    return 0


def _teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
