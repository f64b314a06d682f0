"""Checkpoint files: atomic writes, naming, discovery, pruning, weight loading and averaging.

Layout of ``model_dir`` (``S`` = optimizer step, zero-padded to 9 digits so names sort):

    config.yaml             resolved config text (also stored inside every checkpoint, key "config")
    config.unresolved.yaml  the same with overrides applied but ``!ref`` kept (key "config_unresolved"),
                            so a top-level override at load time reaches every object that used it
    step_S.pt               torch engine: model, optimizers, schedulers, scaler, EMA, trainer state
    step_S/                 DeepSpeed engine: DeepSpeed's shard files + model.pt + trainer.pt
    step_S.yaml             metrics beside each checkpoint: step, epoch, CV and train losses
    tensorboard/, comet/    logs

Every file is written to a hidden temporary name in the same folder and renamed into place
(``os.replace``, atomic on POSIX), so a process killed mid-save leaves at most a stray
``.step_S.pt.tmp-PID`` that is ignored and cleaned up on the next start, never a truncated
checkpoint under a final name. A DeepSpeed folder re-saved under the same step is rotated
through ``.step_S.old``; a kill between its two renames is repaired at the next start by
:func:`recover_rotations`. Pruning first renames a checkpoint to a hidden ``.step_S[.pt].del``
and then deletes it, so a kill mid-delete never leaves a half-deleted folder under a final name.
Everything this module reads goes through ``torch.load(weights_only=True)``.

Pruning keeps the newest ``keep_last`` checkpoints plus the ``keep_best`` with the lowest CV
``best_metric`` (``train_conf``; ``loss`` by default) in their YAML, so
``tools/average_checkpoints.py --num N`` (N <= keep_best), which ranks by the same metric,
finds the best N even after a long run.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml
from torch import nn

from . import faults

__all__ = [
    "CheckpointInfo", "atomic_torch_save", "atomic_write_text", "checkpoint_name", "list_checkpoints",
    "resolve_checkpoint", "prune_checkpoints", "clean_temp_files", "recover_rotations", "cv_score",
    "write_metrics", "read_metrics",
    "load_weights", "load_pretrained", "average_state_dicts", "save_safetensors", "read_config_text",
    "config_beside", "CONFIG_FILE", "UNRESOLVED_CONFIG_FILE",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d+)(\.pt)?$")
TMP_PREFIX = "."  # temporary files and folders are hidden: `.step_S.pt.tmp-PID`
CONFIG_FILE = "config.yaml"  # resolved config text beside the checkpoints
UNRESOLVED_CONFIG_FILE = "config.unresolved.yaml"  # overrides applied, references kept


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on disk."""

    step: int
    path: Path

    @property
    def metrics_path(self) -> Path:
        return self.path.parent / f"step_{self.step:09d}.yaml"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.parent / f"{TMP_PREFIX}{path.name}.tmp-{os.getpid()}"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file, fsync, then rename over ``path``: never a partial file."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        faults.point("write:tmp")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temp + fsync + rename)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        faults.point("write:tmp")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def checkpoint_name(step: int, directory: bool = False) -> str:
    """``step_000001200.pt`` (torch engine) or ``step_000001200`` (a DeepSpeed folder)."""
    return f"step_{step:09d}" + ("" if directory else ".pt")


def list_checkpoints(model_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """Complete checkpoints in ``model_dir``, oldest first."""
    model_dir = Path(model_dir)
    found = []
    if not model_dir.is_dir():
        return found
    for entry in model_dir.iterdir():
        m = _NAME.match(entry.name)
        if not m:
            continue
        is_file = m.group(2) is not None
        if (is_file and entry.is_file()) or (not is_file and (entry / "trainer.pt").is_file()):
            found.append(CheckpointInfo(int(m.group(1)), entry))
    return sorted(found, key=lambda c: (c.step, c.path.is_dir()))


def resolve_checkpoint(arg: str | None, model_dir: str | os.PathLike) -> Path | None:
    """``--checkpoint`` value → path: ``last`` is the newest complete one (None if there is none)."""
    if not arg:
        return None
    if arg == "last":
        found = list_checkpoints(model_dir)
        return found[-1].path if found else None
    path = Path(arg)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def cv_score(checkpoint: str | os.PathLike, metric: str = "loss") -> float | None:
    """``cv.<metric>`` (dotted for nested keys) from a checkpoint's YAML; None when absent."""
    value: Any = read_metrics(checkpoint).get("cv") or {}
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value else None  # NaN never ranks as best


def prune_checkpoints(model_dir: str | os.PathLike, keep_last: int, keep_best: int = 0,
                      metric: str = "loss") -> list[Path]:
    """Delete all checkpoints (and their YAML) but the newest ``keep_last`` and the ``keep_best``
    with the lowest CV ``metric`` (ties: the older one); ``keep_last`` 0 keeps everything.

    Checkpoints whose YAML has no CV value are never among the best. Each doomed checkpoint is
    first renamed to a hidden ``.NAME.del`` (atomic), then its YAML and the hidden copy are
    deleted, so a kill at any moment leaves either the whole checkpoint or a hidden leftover
    that :func:`clean_temp_files` removes.
    """
    if keep_last <= 0:
        return []
    found = list_checkpoints(model_dir)
    keep = {c.path for c in found[-keep_last:]}
    if keep_best > 0:
        scored = [(s, c.step, c.path) for c in found if (s := cv_score(c.path, metric)) is not None]
        keep |= {p for _, _, p in sorted(scored)[:keep_best]}
    removed = []
    for info in found:
        if info.path in keep:
            continue
        hidden = info.path.parent / f"{TMP_PREFIX}{info.path.name}.del"
        os.replace(info.path, hidden)
        faults.point("prune:hidden")
        info.metrics_path.unlink(missing_ok=True)
        shutil.rmtree(hidden) if hidden.is_dir() else hidden.unlink()
        removed.append(info.path)
    return removed


def recover_rotations(model_dir: str | os.PathLike) -> list[str]:
    """Finish or undo DeepSpeed folder rotations a kill interrupted (call before
    :func:`clean_temp_files`, by one process, before any checkpoint is read).

    A re-save of ``step_S`` renames the old folder to ``.step_S.old``, the complete new one from
    ``.step_S.tmp`` to ``step_S``, then deletes ``.step_S.old``. Found at start:

    * ``step_S`` complete: the rotation finished; the ``.old`` copy is deleted;
    * ``step_S`` missing and ``.step_S.tmp`` complete (it has ``trainer.pt``, written last):
      the kill fell between the renames; the new folder is moved into place;
    * otherwise the old folder is moved back.

    Returns one line per repair, for the log.
    """
    model_dir = Path(model_dir)
    done: list[str] = []
    if not model_dir.is_dir():
        return done
    for old in sorted(model_dir.glob(f"{TMP_PREFIX}step_*.old")):
        name = old.name[len(TMP_PREFIX):-len(".old")]
        if not _NAME.match(name) or not old.is_dir():
            continue
        final, tmp = model_dir / name, model_dir / f"{TMP_PREFIX}{name}.tmp"
        if (final / "trainer.pt").is_file():
            shutil.rmtree(old)
            done.append(f"removed {old.name} (its rotation had finished)")
            continue
        if final.exists():  # an incomplete folder under the final name cannot come from the rotation
            shutil.rmtree(final)
        if (tmp / "trainer.pt").is_file():
            os.replace(tmp, final)
            shutil.rmtree(old)
            done.append(f"completed the interrupted rotation of {name} (the new copy moved into place)")
        else:
            os.replace(old, final)
            done.append(f"restored {name} from {old.name}")
    if done:
        _fsync_dir(model_dir)
    return done


_TMP_FILE = re.compile(r"^\..+\.tmp-\d+$")  # atomic_torch_save / atomic_write_text temp names


def clean_temp_files(model_dir: str | os.PathLike) -> list[Path]:
    """Remove leftovers of saves and prunes that were killed half-way: hidden ``*.tmp-PID`` files
    (any atomic write: checkpoints, YAML, ``config.yaml``), ``.step_S.tmp`` folders, and
    ``.step_S[.pt].del`` copies with their YAML; run :func:`recover_rotations` first."""
    model_dir = Path(model_dir)
    removed = []
    if not model_dir.is_dir():
        return removed
    for entry in sorted(model_dir.iterdir()):
        name = entry.name
        ours = name.startswith(TMP_PREFIX + "step_") and (".tmp" in name or name.endswith(".del"))
        if not (ours or _TMP_FILE.match(name)):
            continue
        if name.endswith(".del"):  # a prune killed before it deleted the YAML
            m = _NAME.match(name[len(TMP_PREFIX):-len(".del")])
            if m:
                yaml_path = model_dir / f"step_{int(m.group(1)):09d}.yaml"
                if yaml_path.exists() and not any(c.step == int(m.group(1)) for c in list_checkpoints(model_dir)):
                    yaml_path.unlink()
                    removed.append(yaml_path)
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        removed.append(entry)
    return removed


def write_metrics(info_path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write the YAML beside a checkpoint (``step_S.yaml``)."""
    info_path = Path(info_path)
    step = int(_NAME.match(info_path.name).group(1))
    path = info_path.parent / f"step_{step:09d}.yaml"
    atomic_write_text(path, yaml.safe_dump(_plain(metrics), sort_keys=False))
    return path


def read_metrics(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The YAML metrics beside a checkpoint ({} when there are none)."""
    checkpoint = Path(checkpoint)
    m = _NAME.match(checkpoint.name)
    if not m:
        return {}
    path = checkpoint.parent / f"step_{int(m.group(1)):09d}.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _plain(x: Any) -> Any:
    """Tensors/NumPy scalars → Python numbers so YAML stays readable."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return x.item()
    return x


def _weights_file(path: Path) -> Path:
    return path / "model.pt" if path.is_dir() else path


def load_weights(path: str | os.PathLike, ema: bool = False) -> dict[str, torch.Tensor]:
    """Model weights from a trainer checkpoint (file or DeepSpeed folder), a ``.pt`` state dict,
    an averaged checkpoint or a ``.safetensors`` file; ``ema=True`` picks the EMA weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        if ema:
            raise ValueError(f"{path} holds plain weights; it has no separate EMA weights")
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(_weights_file(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        if ema:
            if obj.get("ema") is None:
                raise ValueError(f"{path} has no EMA weights (train with train_conf.ema_decay > 0)")
            return dict(obj["ema"])
        return dict(obj["model"])
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if ema:
            raise ValueError(f"{path} is a plain state dict; it has no separate EMA weights")
        return dict(obj)
    raise ValueError(f"{path} holds neither a checkpoint nor a state dict")


def read_config_text(path: str | os.PathLike, unresolved: bool = False) -> str | None:
    """The resolved config text stored inside a checkpoint, if any; ``unresolved=True`` prefers
    the unresolved text (references kept) when the checkpoint has it (older ones do not)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return None
    obj = torch.load(_weights_file(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        return None
    if unresolved and isinstance(obj.get("config_unresolved"), str):
        return obj["config_unresolved"]
    return obj.get("config")


def config_beside(folder: str | os.PathLike) -> Path | None:
    """The config file the trainer wrote into ``folder`` (the checkpoint's model_dir):
    ``config.unresolved.yaml`` when there is one, else ``config.yaml``, else None."""
    folder = Path(folder)
    for name in (UNRESOLVED_CONFIG_FILE, CONFIG_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def load_pretrained(module: nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load weights only (no optimizer/step), reporting every missing and unexpected key.

    Partial loading is allowed on purpose (e.g. a new head on a pretrained body), but never
    silently: both lists are logged, and a file that matches no key at all is an error.
    """
    state = load_weights(path)
    own = module.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise ValueError(f"--pretrained_model {path}: none of its {len(state)} keys match the model")
    mismatched = [k for k in matched if state[k].shape != own[k].shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(f"--pretrained_model {path}: shape mismatch for {len(mismatched)} key(s), "
                         f"e.g. {k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    log.info("pretrained weights from %s: %d keys loaded", path, len(matched))
    if missing:
        log.warning("pretrained: %d model keys not in the file (kept at init): %s", len(missing), _preview(missing))
    if unexpected:
        log.warning("pretrained: %d file keys not in the model (ignored): %s", len(unexpected), _preview(unexpected))
    return missing, unexpected


def _preview(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def average_state_dicts(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (accumulated in float64, cast back to each dtype);
    integer tensors (counters such as ``num_batches_tracked``) are taken from the last state."""
    states = list(states)
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))
            raise ValueError(f"state {i} has different keys from state 0, e.g. {diff[:3]}")
    out = {}
    for k in keys:
        ref = states[0][k]
        if ref.is_floating_point() or ref.is_complex():
            acc = torch.zeros_like(ref, dtype=torch.complex128 if ref.is_complex() else torch.float64)
            for s in states:
                acc += s[k].to(acc.dtype)
            out[k] = (acc / len(states)).to(ref.dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write weights as safetensors, atomically; tied (shared-storage) tensors are cloned, since the
    format refuses shared storage, and each is stored under its own key."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    tmp = _tmp_name(path)
    try:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
