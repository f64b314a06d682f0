"""Optional dependencies and local model paths: one clear line when something is missing."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["MissingDependency", "require", "require_path"]


class MissingDependency(ImportError):
    """An optional package a chosen backend needs is not installed (the message says what to install)."""


def require(module: str, pip_spec: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` naming the ``pip install`` that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{what} needs the Python package '{module}': pip install {pip_spec} ({exc})") from exc


def require_path(path: str | Path | None, what: str, kind: str = "file or directory") -> Path:
    """A local model path that must exist (nothing is ever downloaded): else one FileNotFoundError line."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{what}: no local model path given (nothing is downloaded; pass the {kind} path)")
    path = Path(path).expanduser()
    if kind == "directory" and not path.is_dir():
        raise FileNotFoundError(f"{what}: model directory not found: {path}")
    if kind == "file" and not path.is_file():
        raise FileNotFoundError(f"{what}: model file not found: {path}")
    if not path.exists():
        raise FileNotFoundError(f"{what}: model path not found: {path}")
    return path
