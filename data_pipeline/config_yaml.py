"""Reading config YAML: YAML 1.2 scalars, ``_base_`` composition that remembers which file set
each key, and dotted command-line overrides. `data_pipeline.configuration` turns the result into
typed dataclasses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "_base_"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core-schema booleans and floats.

    YAML 1.1 reads ``off``/``on``/``yes``/``no`` as booleans (so ``activation_checkpointing: off``
    would arrive as False) and ``3e-4`` as a string. Configs mean the words and the number.
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text the way every config of the project is parsed."""
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects


class ConfigError(ValueError):
    """A config value is missing, unknown, mistyped or inconsistent.

    ``key`` is the dotted path of the offending value and ``source`` where it came from
    (a file path or ``command line``).
    """

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        self.key = key
        self.source = source
        where = f"{source}: " if source else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{message}")


# --------------------------------------------------------------------------------------------
# Reading YAML with provenance
# --------------------------------------------------------------------------------------------

Origins = dict[str, str]  # dotted key path -> file or "command line" that last set it


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", source=str(path)) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file ({err.strerror})", source=str(path)) from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid YAML{line}: {problem}", source=str(path)) from None
    return {} if data is None else data


def record_origins(data: Any, prefix: str, source: str, origins: Origins) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = join_key(prefix, str(key))
            origins[path] = source
            record_origins(value, path, source, origins)


def _merge(base: Any, override: Any) -> Any:
    """Deep-merge two YAML trees: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _resolve_bases(
    data: Any, *, here: Path, prefix: str, origins: Origins, stack: tuple[Path, ...]
) -> Any:
    """Expand every ``_base_`` below ``data`` (a tree read from the file ``here``)."""
    if not isinstance(data, Mapping):
        return data
    result: dict[str, Any] = {}
    bases = data.get(BASE_KEY)
    if bases is not None:
        names = [bases] if isinstance(bases, str) else bases
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            key = join_key(prefix, BASE_KEY)
            raise ConfigError("must be a path or a list of paths", key=key, source=str(here))
        for name in names:
            base_path = (here.parent / name).resolve()
            if base_path in stack:
                cycle = " -> ".join(str(p) for p in (*stack, base_path))
                raise ConfigError(f"_base_ files include each other: {cycle}", source=str(here))
            base_tree = load_tree(base_path, prefix=prefix, origins=origins, stack=stack)
            if not isinstance(base_tree, Mapping):
                raise ConfigError("a _base_ file must hold a mapping", source=str(base_path))
            result = _merge(result, base_tree)
    for key, value in data.items():
        if key == BASE_KEY:
            continue
        path = join_key(prefix, str(key))
        origins[path] = str(here)
        expanded = _resolve_bases(value, here=here, prefix=path, origins=origins, stack=stack)
        result[str(key)] = _merge(result[str(key)], expanded) if key in result else expanded
    return result


def load_tree(path: Path, *, prefix: str, origins: Origins, stack: tuple[Path, ...]) -> Any:
    path = path.resolve()
    data = _read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be a mapping of keys, not {type(data).__name__}", source=str(path)
        )
    return _resolve_bases(data, here=path, prefix=prefix, origins=origins, stack=(*stack, path))


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the key path and the value parsed as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override {text!r} is not of the form dotted.key=value", source="command line"
        )
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"cannot set {key!r}: {part!r} holds a value, not a section",
                key=key,
                source="command line",
            )
        node = child
    node[parts[-1]] = value
