"""The shared trainer: engines (torch DDP, DeepSpeed), loop, checkpoints, schedulers, EMA, logging.

Entry point: ``train.py`` (``speech.trainer.cli``). ``train_conf`` keys: ``speech.trainer.options``.
"""
from .checkpoint import average_state_dicts, list_checkpoints, load_pretrained, load_weights
from .ema import EMA
from .options import TrainConf
from .scheduler import ConstantLR, NoamLR, WarmupCosineLR, WarmupLR

__all__ = ["EMA", "TrainConf", "WarmupLR", "NoamLR", "WarmupCosineLR", "ConstantLR", "average_state_dicts",
           "list_checkpoints", "load_pretrained", "load_weights"]
