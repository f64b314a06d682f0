"""``train_conf``: the loop settings of a config file, validated before any heavy work.

Every supported key (all optional):

==========================  ========  ===========================================================
key                         default   meaning
==========================  ========  ===========================================================
``max_epoch``               1         epochs to train (an epoch = one pass over ``--train_data``)
``max_steps``               0         stop after this many optimizer steps (0 = no limit);
                                      a checkpoint is saved when it is reached
``accum_grad``              1         micro-batches per optimizer step (gradient accumulation)
``grad_clip``               0         clip the global gradient L2 norm to this value (0 = off;
                                      the norm is still computed, logged and checked)
``log_interval``            10        optimizer steps between log lines / TensorBoard points
``save_per_step``           0         also checkpoint every N optimizer steps (0 = epoch ends only)
``save_per_epoch``          1         checkpoint (and CV) at every N-th epoch end (0 = at none); the
                                      position where training stops is always saved. Short epochs
                                      (a tiny corpus) spend seconds per save: raise it there
``cv_per_step``             0         also run CV every N steps (0 = only at checkpoints)
``keep_last``               0         keep only the newest K checkpoints (0 = keep all)
``keep_best``               0         with ``keep_last`` > 0, also keep the N checkpoints with the
                                      lowest CV ``best_metric`` (in ``step_S.yaml``), so
                                      ``tools/average_checkpoints.py --num N`` still finds the
                                      best N after a long run (0 = only the newest K)
``best_metric``             loss      the CV metric (lower is better; dotted for nested keys) that
                                      ranks checkpoints for ``keep_best`` and, by default, for
                                      ``tools/average_checkpoints.py``; e.g. ``flow_mse`` for
                                      MeanFlow, whose adaptively weighted loss stays near 1
``ema_decay``               0         EMA of the weights with this decay (0 = off), saved in
                                      every checkpoint
``seed``                    0         model init, data order and every RNG stream derive from it;
                                      the model's training draws (noise, flow time, dropout, CFG
                                      and prompt choices) come from ``(seed, rank)``, so
                                      data-parallel ranks never repeat each other's noise
``find_unused_parameters``  false     DDP flag; forced on for models with ``parameter_groups()``
==========================  ========  ===========================================================

Checkpoints are also written at every epoch end and when training stops; CV runs at every
checkpoint so each ``step_S.yaml`` holds CV metrics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from speech.config import ConfigError

__all__ = ["TrainConf", "loose_yaml_loader", "read_train_conf"]


@dataclass
class TrainConf:
    """Validated ``train_conf`` section (see the module docstring for every key)."""

    max_epoch: int = 1
    max_steps: int = 0
    accum_grad: int = 1
    grad_clip: float = 0.0
    log_interval: int = 10
    save_per_step: int = 0
    save_per_epoch: int = 1
    cv_per_step: int = 0
    keep_last: int = 0
    keep_best: int = 0
    best_metric: str = "loss"
    ema_decay: float = 0.0
    seed: int = 0
    find_unused_parameters: bool = False

    @classmethod
    def from_dict(cls, conf: Mapping[str, Any] | None) -> "TrainConf":
        """Check keys and types; an unknown key or a bad value is a one-line ``ConfigError``."""
        conf = dict(conf or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(conf) - set(fields))
        if unknown:
            raise ConfigError(f"train_conf: unknown key(s) {', '.join(unknown)} "
                              f"(supported: {', '.join(fields)})")
        values = {}
        for name, value in conf.items():
            kind = type(fields[name].default)
            if value is None:
                value = fields[name].default
            if kind is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"train_conf.{name} must be true or false, got {value!r}")
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                    raise ConfigError(f"train_conf.{name} must be an integer, got {value!r}")
                value = int(value)
            elif kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"train_conf.{name} must be a number, got {value!r}")
                value = float(value)
            elif kind is str and not (isinstance(value, str) and value.strip()):
                raise ConfigError(f"train_conf.{name} must be a non-empty string, got {value!r}")
            values[name] = value
        out = cls(**values)
        for name in ("max_epoch", "accum_grad", "log_interval"):
            if getattr(out, name) < 1:
                raise ConfigError(f"train_conf.{name} must be >= 1, got {getattr(out, name)}")
        for name in ("max_steps", "save_per_step", "save_per_epoch", "cv_per_step", "keep_last", "keep_best",
                     "grad_clip"):
            if getattr(out, name) < 0:
                raise ConfigError(f"train_conf.{name} must be >= 0, got {getattr(out, name)}")
        if not (out.ema_decay == 0 or 0 < out.ema_decay < 1):
            raise ConfigError(f"train_conf.ema_decay must be 0 (off) or in (0, 1), got {out.ema_decay}")
        return out


def loose_yaml_loader() -> type:
    """A safe YAML loader that reads hyperpyyaml tags (``!new:``, ``!ref`` ...) as None, building nothing."""

    class Loose(yaml.SafeLoader):
        pass

    Loose.add_multi_constructor("!", lambda loader, suffix, node: None)
    return Loose


def read_train_conf(config_text: str) -> TrainConf:
    """The validated ``train_conf`` of a config text (e.g. the ``config.yaml`` a run wrote)."""
    return TrainConf.from_dict((yaml.load(config_text, Loader=loose_yaml_loader()) or {}).get("train_conf"))
