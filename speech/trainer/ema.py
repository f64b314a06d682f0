"""Exponential moving average of model weights (train_conf.ema_decay; flow models use ~0.9999).

After every optimizer step: ``ema ← decay·ema + (1-decay)·θ`` for floating parameters (kept in
float32 whatever the training dtype), while buffers (e.g. normalisation statistics, step
counters) are copied as they are. The EMA state dict has the model's keys, so it loads straight
into the model for inference or export.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA weights of one module; ``state_dict()`` is a model state dict."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.params = {
            n: p.detach().to(torch.float32, copy=True) if p.is_floating_point() else p.detach().clone()
            for n, p in module.named_parameters()
        }
        # only buffers the model saves: a non-persistent one (derived, rebuilt in __init__) is not in its
        # state dict, so keeping it here would make the EMA state dict fail to load into the model
        saved = module.state_dict().keys()
        self.buffers = {n: b.detach().clone() for n, b in module.named_buffers() if n in saved}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards the module's current weights (a single fused foreach kernel)."""
        current = dict(module.named_parameters())
        ema_float, new_float = [], []
        for name, shadow in self.params.items():
            p = current[name]
            if shadow.is_floating_point():
                ema_float.append(shadow)
                new_float.append(p.detach().to(torch.float32))
            else:
                shadow.copy_(p)
        if ema_float:
            # lerp(ema, θ, 1-decay) = ema + (1-decay)(θ - ema) = decay·ema + (1-decay)·θ
            torch._foreach_lerp_(ema_float, new_float, 1.0 - self.decay)
        for name, b in module.named_buffers():
            if name in self.buffers:
                self.buffers[name].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights under the model's own keys (parameters and buffers)."""
        return {**self.params, **self.buffers}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore EMA weights saved by :meth:`state_dict`; a missing or extra key is an error."""
        expected = set(self.params) | set(self.buffers)
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, t in state.items():
            target = self.params.get(name, self.buffers.get(name))
            target.copy_(t)

    def copy_to(self, module: nn.Module) -> None:
        """Overwrite the module's weights with the EMA weights (e.g. for EMA validation)."""
        module.load_state_dict({k: v for k, v in self.state_dict().items()}, strict=True)
