"""Rebuild objects from a config that came with a model file, without letting it run arbitrary code.

A hyperpyyaml config can call anything importable (``!apply:os.system``, ``!new:subprocess.Popen``,
``!module:``, ``!!python/object/apply:``, ``!include:`` of another file ...). A config stored
inside a checkpoint, or the ``config.yaml`` beside it, is *data* that travels with the weights, so
every loader rebuilds it through :func:`build_config`, which checks the YAML node tree before
anything is imported or constructed:

- ``!new:`` (a class) and ``!name:`` (a class or function) only for targets under
  :data:`ALLOWED_PREFIXES` or named exactly in :data:`ALLOWED_NAMES`;
- ``!apply:`` only for the factory functions in :data:`ALLOWED_FACTORIES` (the ones this project's
  configs call), plus ``getattr`` of a public attribute, which is what hyperpyyaml writes for a
  ``!ref <key.attr>`` reference;
- ``!ref``, ``!copy`` (no private/dunder attribute references), ``!tuple`` (its items checked
  too), ``!PLACEHOLDER`` and the standard YAML tags; every other tag is refused.

A refusal is one :class:`UntrustedConfigError` line naming the tag, the target and the key (YAML
path, e.g. ``llm.backbone``). After that check passes, each target is resolved and must be a class
or function *defined* in an allowed package (so ``!new:speech.x.system`` where ``speech.x`` merely
imported ``os.system`` is refused too). ``trust=True`` skips all of it (a logged warning): the
user's opt-in (``--trust_config``) for a config they wrote themselves.

This lives in ``dac_vae`` (which never imports ``speech``) so the codec and the ``speech`` package
share one implementation; the allow-list names the other packages as strings only.
"""

from __future__ import annotations

import inspect
import io
import logging
import pydoc
import re
from typing import Any, Iterator

__all__ = [
    "ALLOWED_PREFIXES",
    "ALLOWED_NAMES",
    "ALLOWED_FACTORIES",
    "UntrustedConfigError",
    "check_config_text",
    "check_targets",
    "resolve_config",
    "build_config",
]

log = logging.getLogger(__name__)

#: Packages whose classes (``!new:``) and classes/functions (``!name:``) a model file's config may name.
ALLOWED_PREFIXES: tuple[str, ...] = ("speech", "dac_vae", "flowae", "torch.nn", "torch.optim")
#: Single names outside those packages that may be built: the transformers classes the LM uses.
ALLOWED_NAMES: frozenset[str] = frozenset({
    "transformers.Qwen2Config",
    "transformers.Qwen2ForCausalLM",
    "transformers.Qwen2Model",
    "transformers.models.qwen2.configuration_qwen2.Qwen2Config",
    "transformers.models.qwen2.modeling_qwen2.Qwen2ForCausalLM",
    "transformers.models.qwen2.modeling_qwen2.Qwen2Model",
})
_ALLOWED_NAME_MODULES = ("transformers.models.qwen2",)
#: The only functions ``!apply:`` may call (factories this project's configs use).
ALLOWED_FACTORIES: frozenset[str] = frozenset({
    "speech.llm.model.build_qwen2",
    "speech.text.tokenizer.load_text_tokenizer",
    "speech.text.load_text_tokenizer",
})

_YAML = "tag:yaml.org,2002:"
_STANDARD_TAGS = frozenset(
    _YAML + t for t in ("null", "bool", "int", "float", "str", "binary", "timestamp", "seq", "map", "omap",
                        "pairs", "set", "merge")
)
_PLAIN_TAGS = frozenset({"!ref", "!copy", "!PLACEHOLDER"})
_TUPLE = re.compile(r"^\(.*\)$", re.DOTALL)  # hyperpyyaml's implicit !tuple (parsed with PyYAML's full Loader)
_REFERENCE = re.compile(r"<([^>]*)>")
_HINT = "pass --trust_config to load it anyway if you trust where it came from"


class UntrustedConfigError(ValueError):
    """A config that came with a model file names something it may not build (one line)."""


def _in_packages(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _tag(node: Any) -> str:
    tag = getattr(node, "tag", "") or ""
    return str(getattr(tag, "value", tag) or "")


def _compose(text: str, source: str) -> Any:
    """The node tree exactly as the loader will parse it (ruamel's Loader, as hyperpyyaml uses)."""
    import ruamel.yaml

    try:
        loader = ruamel.yaml.Loader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except ruamel.yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UntrustedConfigError(f"{source}: not valid YAML ({problem})") from None


def _walk(node: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Any]]:
    """``(yaml path, node)`` for every node, keys included; aliases (shared nodes) visited once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    yield path, node
    value = getattr(node, "value", None)
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, tuple):  # mapping entry
                key, sub = item
                name = key.value if isinstance(getattr(key, "value", None), str) else f"<key {i}>"
                yield from _walk(key, f"{path}.{name}" if path else name, seen)
                yield from _walk(sub, f"{path}.{name}" if path else name, seen)
            else:
                yield from _walk(item, f"{path}[{i}]", seen)


def _refuse(source: str, key: str, tag: str, why: str) -> UntrustedConfigError:
    return UntrustedConfigError(f"{source}: refused {tag!r} at key '{key or '<root>'}': {why}; {_HINT}")


def _check_reference(value: Any, source: str, key: str, tag: str) -> None:
    if isinstance(value, str) and "**" in value:  # hyperpyyaml evaluates arithmetic: 9 ** 9 ** 9 never ends
        raise _refuse(source, key, f"{tag} {value}", "powers in references are not allowed")
    for ref in _REFERENCE.findall(value if isinstance(value, str) else ""):
        _, _, attr = ref.partition(".")
        if attr and (attr.startswith("_") or "._" in attr):
            raise _refuse(source, key, f"{tag} {value}", "references to private attributes are not allowed")


def _target_allowed(kind: str, target: str) -> bool:
    if kind == "apply":
        return target in ALLOWED_FACTORIES
    return target in ALLOWED_NAMES or _in_packages(target, ALLOWED_PREFIXES)


def _check_tree(root: Any, source: str, where: str = "") -> list[tuple[str, str, str]]:
    """Refuse any tag outside the allow-list; returns ``(kind, target, key)`` of every build tag."""
    targets = []
    for key, node in _walk(root, where, set()):
        tag = _tag(node)
        kind, sep, target = tag[1:].partition(":") if tag.startswith("!") else ("", "", "")
        if tag in _STANDARD_TAGS or tag == "":
            # Checked whatever its quoting: a re-dump while resolving may write a quoted string plain.
            if tag == _YAML + "str" and _TUPLE.match(str(node.value)):
                _check_tuple(node.value, source, key)
            continue
        if tag in _PLAIN_TAGS:
            _check_reference(node.value, source, key, tag)
            continue
        if tag == "!tuple":
            _check_tuple(str(node.value), source, key)
            continue
        if sep and kind in ("new", "name", "apply"):
            if kind == "apply" and target == "getattr":
                # hyperpyyaml's own rendering of `!ref <key.attr>`: [object, "attr"], a public attribute.
                items = node.value if isinstance(node.value, list) else []
                attr = getattr(items[1], "value", None) if len(items) == 2 else None
                if not isinstance(attr, str) or attr.startswith("_") or _tag(items[1]) != _YAML + "str":
                    raise _refuse(source, key, tag, "getattr only of a public attribute name")
                continue
            if not _target_allowed(kind, target):
                allowed = (
                    f"only {', '.join(sorted(ALLOWED_FACTORIES))} may be applied"
                    if kind == "apply"
                    else f"only targets under {', '.join(p + '.' for p in ALLOWED_PREFIXES)} "
                    "(and a few transformers Qwen2 classes) may be built"
                )
                raise _refuse(source, key, tag, allowed)
            targets.append((kind, target, key))
            continue
        why = {
            "module": "modules may not be loaded",
            "include": "other files may not be included",
            "applyref": "functions may not be applied",
        }.get(kind, "tag not allowed in a config that came with a model file")
        raise _refuse(source, key, tag, why)
    return targets


def _check_tuple(value: str, source: str, key: str) -> None:
    """A ``(a, b)`` scalar becomes a tuple through PyYAML's *full* Loader: its items must be plain data."""
    import yaml

    inner = "[" + value.strip()[1:-1] + "]"
    try:
        node = yaml.compose(inner, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        raise _refuse(source, key, "!tuple " + value, "a tuple that cannot be checked") from None
    for sub_key, sub in _walk(node, key, set()):
        if _tag(sub) not in _STANDARD_TAGS:
            raise _refuse(source, sub_key, f"{_tag(sub)} in tuple {value}", "tuples may hold plain values only")


def check_config_text(text: str, source: str = "config") -> list[tuple[str, str, str]]:
    """Refuse (one line) a config whose tags are not all allowed; imports and builds nothing.

    Returns ``(kind, target, key)`` for each ``!new:`` / ``!name:`` / ``!apply:`` it holds.
    """
    return _check_tree(_compose(text, source), source)


def _defined_in_allowed(obj: Any, target: str) -> bool:
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return False
    if _in_packages(module, ALLOWED_PREFIXES):
        return True
    return target in ALLOWED_NAMES and _in_packages(module, _ALLOWED_NAME_MODULES)


def check_targets(text: str, source: str = "config") -> None:
    """:func:`check_config_text`, then resolve each target (importing only allowed packages) and
    refuse one that is not a class/function defined in an allowed package (a re-exported alias)."""
    for kind, target, key in check_config_text(text, source):
        tag = f"!{kind}:{target}"
        try:
            obj = pydoc.locate(target)
        except pydoc.ErrorDuringImport as exc:
            raise UntrustedConfigError(f"{source}: {tag} at key '{key}': cannot import it ({exc.value})") from None
        if obj is None:
            raise UntrustedConfigError(f"{source}: {tag} at key '{key}': no such class or function")
        is_class, is_routine = inspect.isclass(obj), inspect.isroutine(obj)
        if kind == "new" and not is_class:
            raise _refuse(source, key, tag, "!new: must name a class")
        if kind == "name" and not (is_class or is_routine):
            raise _refuse(source, key, tag, "!name: must name a class or function")
        if kind == "apply" and not is_routine:
            raise _refuse(source, key, tag, "!apply: must name a function")
        if not _defined_in_allowed(obj, target):
            where = getattr(obj, "__module__", None) or type(obj).__name__
            why = f"it resolves to an object defined in {where}, outside the allowed packages"
            raise _refuse(source, key, tag, why)


def resolve_config(text: str, overrides: dict[str, Any] | None = None, *, trust: bool = False,
                   source: str = "config") -> str:
    """Overrides applied and references resolved (hyperpyyaml's ``resolve_references``), checked
    before (resolving itself runs ``!applyref:`` / reads ``!include:`` files) and after."""
    from hyperpyyaml import resolve_references

    if not trust:
        check_config_text(text, source)
    resolved = resolve_references(io.StringIO(text), overrides or {}).getvalue()
    if not trust:
        check_config_text(resolved, source)
    return resolved


def build_config(text: str, overrides: dict[str, Any] | None = None, *, trust: bool = False,
                 source: str = "config") -> dict[str, Any]:
    """Every object of a config that came with a model file, built only if the config is allowed.

    ``trust=True`` (the user's ``--trust_config``) builds anything, with a logged warning.
    Raises :class:`UntrustedConfigError` (one line) before importing anything from a refused config.
    """
    from hyperpyyaml import load_hyperpyyaml, resolve_references

    if trust:
        log.warning("%s: --trust_config: building it without the allow-list (it can run any code)", source)
    resolved = resolve_config(text, overrides, trust=trust, source=source)
    if not trust:
        # load_hyperpyyaml resolves once more (a ruamel round trip, deterministic): check exactly the
        # text it will construct from, so no re-serialisation can slip a tag past the check.
        check_targets(resolve_references(io.StringIO(resolved)).getvalue(), source)
    return load_hyperpyyaml(io.StringIO(resolved))
