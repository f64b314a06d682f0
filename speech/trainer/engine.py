"""Training engines: how a micro-batch is run backward and how optimizers step.

The loop (``loop.py``) only sees this interface:

* ``forward_backward(batch, group, step, boundary)`` → detached scalar losses of one micro-batch;
* ``optimizer_step(group)`` at an accumulation boundary → ``(grad_norm, applied)``;
* ``end_iteration()`` once all groups stepped; ``save(path, extra)`` / ``load(path)``.

Model contract (docs/contracts.md): ``forward(batch) -> dict`` whose ``loss`` is optimised; a
GAN-style model defines ``parameter_groups()`` and is called as ``forward(batch, group=, step=)``
once per group, in the dict's order, each group with its own optimizer and scheduler.

``TorchEngine`` runs one process or DDP (``no_sync`` on accumulation micro-steps); AMP is
``torch.autocast`` in bf16 (no scaler: bf16 has fp32's exponent range) or fp16 (with a
``GradScaler``). At every optimizer step the global gradient norm is computed once with foreach
kernels, optionally clipped, and the step is skipped when the norm is not finite; reading that
one flag is the only host synchronisation of the step (``GradScaler`` needs the same read).
The LR scheduler steps after every boundary, applied or skipped, so the LR is a function of the
step count. ``DeepSpeedEngine`` hands the step to DeepSpeed (ZeRO 0–2, JSON config).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from speech.config import ConfigError

from . import faults
from .checkpoint import atomic_torch_save
from .distributed import DistInfo, barrier
from .options import TrainConf
from .scheduler import ConstantLR

__all__ = ["CHECKPOINT_FORMAT", "build_groups", "Engine", "TorchEngine", "DeepSpeedEngine", "deepspeed_safe_globals",
           "deepspeed_weights_only"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "speech-trainer/1"
MAIN_GROUP = "main"


def build_groups(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameter groups: ``parameter_groups()`` for GAN-style models, else all trainable params."""
    if hasattr(module, "parameter_groups"):
        groups = {str(k): list(v) for k, v in module.parameter_groups().items()}
        if not groups:
            raise ConfigError("model.parameter_groups() returned no groups")
        seen: dict[int, str] = {}
        for name, params in groups.items():
            if not params:
                raise ConfigError(f"parameter group {name!r} is empty")
            for p in params:
                if id(p) in seen:
                    raise ConfigError(f"a parameter is in both groups {seen[id(p)]!r} and {name!r}")
                seen[id(p)] = name
        return groups
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    return {MAIN_GROUP: params}


def _per_group(spec: Any, groups: list[str], what: str) -> dict[str, Any]:
    """``optim``/``scheduler`` as one partial for every group or a dict keyed by group name."""
    if isinstance(spec, Mapping):
        if set(spec) != set(groups):
            raise ConfigError(f"{what}: keys {sorted(spec)} do not match the model's parameter groups {groups}")
        return {g: spec[g] for g in groups}
    return {g: spec for g in groups}


class Engine:
    """Shared pieces: groups, optimizers, schedulers, autocast, loss bookkeeping."""

    checkpoint_is_dir = False

    def __init__(self, module: nn.Module, optim: Any, scheduler: Any, conf: TrainConf, info: DistInfo,
                 amp_dtype: torch.dtype | None = None):
        self.module = module.to(info.device)
        self.conf, self.info, self.amp_dtype = conf, info, amp_dtype
        self.params = build_groups(self.module)
        self.groups = list(self.params)
        self.multi_group = hasattr(self.module, "parameter_groups")
        if optim is None:
            raise ConfigError("config has no 'optim' entry (e.g. optim: !name:torch.optim.AdamW)")
        optims = _per_group(optim, self.groups, "optim")
        scheds = _per_group(scheduler, self.groups, "scheduler")
        try:
            self.optimizers = {g: optims[g](self.params[g]) for g in self.groups}
            self.schedulers = {g: (scheds[g] or ConstantLR)(self.optimizers[g]) for g in self.groups}
        except (TypeError, ValueError) as exc:  # e.g. a misspelt optimizer argument in the config
            raise ConfigError(f"optim/scheduler: {exc}") from None

    # --- helpers shared by the engines -------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op without ``--use_amp``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype)

    def _select_group(self, group: str | None) -> None:
        """GAN steps: only this group's parameters take gradients, so e.g. the discriminator
        collects nothing from the generator's adversarial loss (and backward is cheaper).
        ``None`` makes every group trainable again."""
        if not self.multi_group:
            return
        for name, params in self.params.items():
            for p in params:
                p.requires_grad_(group is None or name == group)

    def _call(self, model: Callable, batch: Any, group: str, step: int) -> dict[str, torch.Tensor]:
        out = model(batch, group=group, step=step) if self.multi_group else model(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(f"model forward must return a dict with a 'loss' entry, got {type(out).__name__}"
                            + (f" with keys {sorted(out)}" if isinstance(out, Mapping) else ""))
        return out

    @staticmethod
    def _scalars(out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v.detach().float() for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 0}

    def lr(self, group: str) -> float:
        """Current learning rate of a group (first param group of its optimizer)."""
        return float(self.optimizers[group].param_groups[0]["lr"])

    def train(self) -> None:
        self.module.train()

    def end_iteration(self) -> None:
        """Called once after every group's ``optimizer_step`` at a boundary."""

    @property
    def skipped_steps(self) -> int:
        return self._skipped


class TorchEngine(Engine):
    """One process or ``DistributedDataParallel``; AMP via autocast (+ GradScaler for fp16)."""

    def __init__(self, module: nn.Module, optim: Any, scheduler: Any, conf: TrainConf, info: DistInfo,
                 amp_dtype: torch.dtype | None = None):
        super().__init__(module, optim, scheduler, conf, info, amp_dtype)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
        self._skipped = 0
        self.model: nn.Module = self.module
        self.ddp = info.distributed and info.world_size > 1

    def wrap(self) -> None:
        """Wrap in DDP (after any weight loading: DDP broadcasts rank 0's weights)."""
        if self.ddp:
            device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=device_ids,
                find_unused_parameters=self.conf.find_unused_parameters or self.multi_group)

    def forward_backward(self, batch: Any, group: str, step: int, boundary: bool) -> dict[str, torch.Tensor]:
        """Forward + backward of one micro-batch; gradients are all-reduced only at ``boundary``."""
        self._select_group(group)
        sync = contextlib.nullcontext() if (boundary or not self.ddp) else self.model.no_sync()
        with sync:
            with self.autocast():
                out = self._call(self.model, batch, group, step)
            loss = out["loss"] / self.conf.accum_grad
            self.scaler.scale(loss).backward()
        return self._scalars(out)

    def optimizer_step(self, group: str) -> tuple[torch.Tensor, bool]:
        """Unscale, measure (and clip) the gradient norm, step unless it is non-finite."""
        opt, params = self.optimizers[group], self.params[group]
        if self.scaler.is_enabled():
            self.scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros((), device=self.info.device)
        if self.conf.grad_clip > 0 and grads:
            torch.nn.utils.clip_grads_with_norm_(params, self.conf.grad_clip, norm, foreach=True)
        applied = bool(torch.isfinite(norm))  # the step's one host read
        if applied:
            if self.scaler.is_enabled():
                self.scaler.step(opt)
            else:
                opt.step()
        else:
            self._skipped += 1
        self.schedulers[group].step()
        opt.zero_grad(set_to_none=True)
        return norm.detach(), applied

    def end_iteration(self) -> None:
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the scale after an overflow, raises it after a quiet spell

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        """Rank 0 writes one file atomically: weights, optimizers, schedulers, scaler + ``extra``."""
        if self.info.is_main:
            atomic_torch_save({
                "format": CHECKPOINT_FORMAT,
                "model": self.module.state_dict(),
                "optimizers": {g: o.state_dict() for g, o in self.optimizers.items()},
                "schedulers": {g: s.state_dict() for g, s in self.schedulers.items()},
                "scaler": self.scaler.state_dict(),
                "skipped_steps": self._skipped,
                **extra,
            }, path)
        barrier(self.info)

    def load(self, path: Path) -> dict[str, Any]:
        """Restore everything :meth:`save` wrote (strictly); returns the whole checkpoint dict."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizers" not in ckpt:
            raise ValueError(f"{path} is not a training checkpoint of this trainer (use --pretrained_model "
                             "for weights only)")
        if set(ckpt["optimizers"]) != set(self.groups):
            raise ValueError(f"{path} has optimizer groups {sorted(ckpt['optimizers'])}, model has {self.groups}")
        self.module.load_state_dict(ckpt["model"], strict=True)
        for g in self.groups:
            self.optimizers[g].load_state_dict(ckpt["optimizers"][g])
            self.schedulers[g].load_state_dict(ckpt["schedulers"][g])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self._skipped = int(ckpt.get("skipped_steps", 0))
        return ckpt


def bf16_matmul_slowdown(n: int = 256, seconds: float = 0.12, rounds: int = 3) -> float:
    """How many times slower a bf16 matmul is than an fp32 one on this CPU (about ``seconds``).

    CPUs without native bf16 matmul (AVX2 only, no AVX512-BF16/AMX) emulate it, often about
    100x slower than fp32, which makes bf16 autocast a large slowdown instead of a speed-up.
    Both kinds are warmed up first, then timed in alternating rounds, and the median ratio is
    returned: a single short timing after one warm-up call once read this native-bf16 CPU as 17x
    slower (a fresh process under load), and a demo run then trained its codec in fp32.
    Constant inputs: the probe draws nothing from the random generators.
    """
    import statistics
    import time

    def rate(a: torch.Tensor, b: torch.Tensor, budget: float) -> float:
        reps, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= budget and reps >= 2:
                return reps / elapsed

    pairs = [(torch.full((n, n), 0.5, dtype=dt), torch.full((n, n), 0.25, dtype=dt))
             for dt in (torch.float32, torch.bfloat16)]
    share = seconds / (2 + 2 * rounds)
    for a, b in pairs:  # warm-up
        rate(a, b, share)
    ratios = [rate(*pairs[0], share) / rate(*pairs[1], share) for _ in range(rounds)]
    return statistics.median(ratios)


def prepare_deepspeed_config(path: str | os.PathLike, conf: TrainConf) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fit it to this loop (accumulation, clipping, batch fields)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--deepspeed_config not found: {path}")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--deepspeed_config {path}: invalid JSON ({exc})") from None
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage > 2:
        raise ConfigError(f"{path}: ZeRO stage {stage} is not supported (0-2: weights stay whole on every rank, "
                          "which EMA, CV and weight export rely on)")
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{path}: remove 'optimizer'/'scheduler'; they come from the model config "
                          "(optim:, scheduler:)")
    # Our batches are built by the dataset (dynamic, by frames); DeepSpeed's batch-size fields only
    # drive its own data loader, which is not used, so they are set to neutral values.
    ds.pop("train_batch_size", None)
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = conf.accum_grad
    if conf.grad_clip > 0:
        ds["gradient_clipping"] = conf.grad_clip
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch.optim optimizers from the config
    ds.setdefault("steps_per_print", 2**31 - 1)  # the trainer logs itself
    return ds


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO 0–2: DeepSpeed owns gradient reduction, clipping and fp16 loss scaling."""

    checkpoint_is_dir = True

    def __init__(self, module: nn.Module, optim: Any, scheduler: Any, conf: TrainConf, info: DistInfo,
                 ds_config: dict[str, Any], amp_dtype: torch.dtype | None = None):
        if hasattr(module, "parameter_groups"):
            raise ConfigError("models with parameter_groups() (GAN-style) need --train_engine torch_ddp")
        if amp_dtype == torch.float16:
            raise ConfigError("with DeepSpeed use its JSON 'fp16' section instead of --amp_dtype fp16")
        super().__init__(module, optim, scheduler, conf, info, amp_dtype)
        self.ds_config = ds_config
        self._skipped = 0

    def wrap(self) -> None:
        """``deepspeed.initialize`` (after weight loading, like DDP)."""
        import deepspeed

        _skip_cpu_shm_build()
        self.model, _, _, _ = deepspeed.initialize(
            model=self.module, optimizer=self.optimizers[MAIN_GROUP], config=self.ds_config)

    def forward_backward(self, batch: Any, group: str, step: int, boundary: bool) -> dict[str, torch.Tensor]:
        self.model.set_gradient_accumulation_boundary(boundary)
        with self.autocast():
            out = self._call(self.model, batch, group, step)
        self.model.backward(out["loss"])  # DeepSpeed divides by gradient_accumulation_steps itself
        return self._scalars(out)

    def optimizer_step(self, group: str) -> tuple[torch.Tensor, bool]:
        """DeepSpeed's step; without a ZeRO/fp16 optimizer (stage 0 in fp32/bf16) DeepSpeed applies
        non-finite gradients, so the trainer checks the (already reduced) gradient norm itself."""
        if not hasattr(self.model.optimizer, "overflow"):
            grads = [p.grad for p in self.params[group] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else None
            if norm is not None and not bool(torch.isfinite(norm)):
                self.model.zero_grad()
                self._skipped += 1
                self.schedulers[group].step()
                return norm.detach(), False
        before = self.model.skipped_steps
        self.model.step()
        applied = self.model.skipped_steps == before
        if not applied:
            self._skipped += 1
        self.schedulers[group].step()
        norm = self.model.get_global_grad_norm()
        norm = torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32)
        return norm.detach().to(self.info.device), applied

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        """Collective: DeepSpeed shards + ``model.pt`` + ``trainer.pt`` into a temp folder, then
        rank 0 renames it into place (a folder rename is atomic like a file rename)."""
        tmp = path.parent / f".{path.name}.tmp"
        if self.info.is_main and tmp.exists():
            shutil.rmtree(tmp)
        barrier(self.info)
        self.model.save_checkpoint(str(path.parent), tag=tmp.name, save_latest=False)
        barrier(self.info)  # every rank's shards are on disk before trainer.pt marks the folder complete
        faults.point("ds:shards")
        if self.info.is_main:
            extra = dict(extra)
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": self.module.state_dict(),
                               "ema": extra.pop("ema", None), "config": extra.get("config"),
                               "config_unresolved": extra.get("config_unresolved")}, tmp / "model.pt")
            atomic_torch_save({"format": CHECKPOINT_FORMAT,
                               "schedulers": {g: s.state_dict() for g, s in self.schedulers.items()},
                               "skipped_steps": self._skipped, **extra}, tmp / "trainer.pt")
        barrier(self.info)
        if self.info.is_main:
            old = path.parent / f".{path.name}.old"
            if path.exists():  # same step saved twice (e.g. step save then epoch end): swap
                os.replace(path, old)  # a kill from here to the next rename is repaired at the
                faults.point("ds:between_renames")  # next start (checkpoint.recover_rotations)
            os.replace(tmp, path)
            if old.exists():
                faults.point("ds:old_left")
                shutil.rmtree(old)
        barrier(self.info)

    def load(self, path: Path) -> dict[str, Any]:
        """Restore DeepSpeed's state (weights, ZeRO optimizer shards) and ours (``trainer.pt``)."""
        if not (path / "trainer.pt").is_file():
            raise ValueError(f"{path} is not a DeepSpeed checkpoint folder of this trainer")
        # DeepSpeed reads its shard files with torch.load(weights_only=False); they are read here
        # with weights_only=True and an allow-list of DeepSpeed's few classes instead.
        with deepspeed_weights_only():
            load_path, _ = self.model.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                      load_lr_scheduler_states=False, load_module_strict=True)
        if load_path is None:
            raise ValueError(f"DeepSpeed could not load {path}")
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        weights = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        for g in self.groups:
            self.schedulers[g].load_state_dict(state["schedulers"][g])
        self._skipped = int(state.get("skipped_steps", 0))
        return {**state, "ema": weights.get("ema")}


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed (0.19) pickles into its checkpoint shards, beyond tensors and containers.

    Found by saving ZeRO 0/1/2 checkpoints in fp32 and bf16 and listing
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` of every file: the ZeRO optimizer
    shards hold a ``LossScaler`` object, a ``ZeroStageEnum`` and ``fragment_address`` tuples of
    the parameter-slice map. ``DynamicLossScaler`` is what the same field holds with fp16 loss
    scaling (``fp16.enabled``, GPU only, so it cannot be produced here; from DeepSpeed's source:
    ``stage_1_and_2.state_dict`` stores ``self.loss_scaler``).
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def deepspeed_weights_only(extra_globals: list[Any] | None = None):
    """Within the block every ``torch.load`` runs with ``weights_only=True`` (whatever the caller
    asked for) and only :func:`deepspeed_safe_globals` (+ ``extra_globals``) allow-listed.

    DeepSpeed's checkpoint engines call ``torch.load(..., weights_only=False)`` through the
    ``torch`` module attribute, so replacing ``torch.load`` for the duration of the load covers
    every file it reads (model states and each ZeRO shard). Not for use from several threads.
    """
    allowed = deepspeed_safe_globals() + list(extra_globals or [])
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        torch.load = original


def _skip_cpu_shm_build() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce kernel at its first start (about
    two minutes); gloo does the job for CPU runs, so mark that optional op as unavailable."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {}

