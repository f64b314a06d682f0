"""Config loading for every entry point: hyperpyyaml files plus ``key=value`` overrides.

Overrides use dotted keys for nested entries (``train_conf.max_epoch=3``) and YAML syntax for
values (``optim_conf.lr=1e-4``, ``channels=[64,128]``). The resolved YAML text (overrides applied,
objects not yet built) is what gets saved beside a checkpoint, so a run can always be rebuilt; the
unresolved text (overrides applied, ``!ref`` kept) is saved too, so that a top-level override at load
time (``latent_stats=null``) still reaches every object that referred to it.

:func:`load_config` builds a config the user gave (their own code: anything goes).
:func:`load_model_config` builds a config that came with a model file (stored inside a checkpoint or
``config.yaml`` beside it): only allow-listed classes, unless the user trusts it
(:mod:`dac_vae.safe_config`, ``--trust_config``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

__all__ = [
    "ConfigError", "parse_overrides", "resolve_config_text", "unresolved_config_text", "load_config",
    "load_model_config",
]


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
        if node == {}:  # an empty mapping is a slot for free-form arguments (e.g. time_sampler_args: {})
            return
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


def unresolved_config_text(path: str | os.PathLike, overrides: Iterable[str] | dict | None = None) -> str | None:
    """The config's YAML text with overrides applied and references (``!ref``) kept, or None when
    the file uses ``!include:`` / ``!applyref:`` (resolved at training time: only the resolved text
    rebuilds it)."""
    from ruamel.yaml import YAML

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = path.read_text(encoding="utf-8")
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _check_keys(raw, over, str(path))
    if "!include:" in raw or "!applyref:" in raw:
        return None
    rt = YAML(typ="rt")
    doc = rt.load(raw)
    if over:
        from hyperpyyaml.core import recursive_update

        recursive_update(doc, over)
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def load_model_config(
    path: str | os.PathLike, overrides: Iterable[str] | dict | None = None, *, trust_config: bool = False
) -> dict[str, Any]:
    """Build a config that came with a model file, with overrides applied.

    Only allow-listed classes and functions may be built (:mod:`dac_vae.safe_config`), checked
    before anything is imported: otherwise :class:`dac_vae.safe_config.UntrustedConfigError`, one
    line naming the tag and the key. ``trust_config=True`` builds anything (a logged warning).
    """
    from dac_vae.safe_config import UntrustedConfigError, build_config, check_config_text

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not trust_config:
        check_config_text(text, str(path))  # before the key check, which parses the text too
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _check_keys(text, over, str(path))
    try:
        return build_config(text, over, trust=trust_config, source=str(path))
    except UntrustedConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from exc
