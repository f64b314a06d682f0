"""Config loading for every entry point: hyperpyyaml files plus ``key=value`` overrides.

Overrides use dotted keys for nested entries (``train_conf.max_epoch=3``) and YAML syntax for
values (``optim_conf.lr=1e-4``, ``channels=[64,128]``). The resolved YAML text (overrides applied,
objects not yet built) is what gets saved beside a checkpoint, so a run can always be rebuilt.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

__all__ = ["ConfigError", "parse_overrides", "resolve_config_text", "load_config"]


class ConfigError(ValueError):
    """A config mistake, reported in one line before any heavy work starts."""


def _parse_value(raw: str) -> Any:
    """YAML value, except that ``1e-4`` is a float (YAML 1.1 would read it as a string)."""
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[2,3]"]`` into the nested dict ``{"a": {"b": 1}, "c": [2, 3]}``."""
    nested: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = _parse_value(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def _check_keys(text: str, overrides: dict[str, Any], path: str) -> None:
    """Reject overrides of keys the file does not define: a typo must not be silently ignored."""
    # Tags like !new: are irrelevant for key checking; a permissive loader reads the structure.
    class _Loose(yaml.SafeLoader):
        pass

    _Loose.add_multi_constructor("!", lambda loader, suffix, node: None)
    tree = yaml.load(text, Loader=_Loose) or {}

    def walk(node: Any, over: dict[str, Any], prefix: str) -> None:
        for key, value in over.items():
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"override {prefix}{key} does not match any key in {path}")
            if isinstance(value, dict) and isinstance(node[key], dict):
                walk(node[key], value, f"{prefix}{key}.")

    walk(tree, overrides, "")


def resolve_config_text(path: str | os.PathLike, overrides: Iterable[str] | dict | None = None) -> str:
    """The config's YAML text with overrides applied and references resolved, objects unbuilt."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _check_keys(text, over, str(path))
    return resolve_references(text, over).getvalue()


def load_config(path: str | os.PathLike, overrides: Iterable[str] | dict | None = None) -> dict[str, Any]:
    """Build the config's objects (``!new:``, ``!name:``, ``!ref``) with overrides applied."""
    text = resolve_config_text(path, overrides)
    try:
        return load_hyperpyyaml(io.StringIO(text))
    except Exception as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from exc
