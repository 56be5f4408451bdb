"""Typed YAML configuration shared by every CLI of the project.

A config is a tree of dataclasses. YAML files are loaded strictly into that tree:

* an unknown key, a value of the wrong type or a missing required value is a `ConfigError` that
  names the dotted key path and the file (or command-line override) the value came from;
* a mapping may build on other files with ``_base_: path`` (or a list of paths), resolved relative
  to the file that names them; the mapping's own keys override the base, key by key, recursively;
* dotted overrides (``train.lr=3e-4``) are parsed as YAML scalars and type-checked the same way;
* after conversion every dataclass's ``validate()`` runs bottom-up, for cross-field checks.

The resolved config dumps back to plain YAML and loads to an identical object, so a run can be
rebuilt from the copy saved next to its checkpoints.

This module lives in the torch-free `data_pipeline` package because all three CLIs depend on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")

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


def _join(prefix: str, key: str) -> str:
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


def _record_origins(data: Any, prefix: str, source: str, origins: Origins) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = _join(prefix, str(key))
            origins[path] = source
            _record_origins(value, path, source, origins)


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
            raise ConfigError(
                "must be a path or a list of paths", key=_join(prefix, BASE_KEY), source=str(here)
            )
        for name in names:
            base_path = (here.parent / name).resolve()
            if base_path in stack:
                cycle = " -> ".join(str(p) for p in (*stack, base_path))
                raise ConfigError(f"_base_ files include each other: {cycle}", source=str(here))
            base_tree = _load_tree(base_path, prefix=prefix, origins=origins, stack=stack)
            if not isinstance(base_tree, Mapping):
                raise ConfigError("a _base_ file must hold a mapping", source=str(base_path))
            result = _merge(result, base_tree)
    for key, value in data.items():
        if key == BASE_KEY:
            continue
        path = _join(prefix, str(key))
        origins[path] = str(here)
        expanded = _resolve_bases(value, here=here, prefix=path, origins=origins, stack=stack)
        result[str(key)] = _merge(result[str(key)], expanded) if key in result else expanded
    return result


def _load_tree(path: Path, *, prefix: str, origins: Origins, stack: tuple[Path, ...]) -> Any:
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


def _apply_override(tree: dict[str, Any], key: str, value: Any) -> None:
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


# --------------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


class _Converter:
    """Converts a YAML tree into a dataclass tree, reporting errors with key and source."""

    def __init__(self, origins: Origins, default_source: str) -> None:
        self.origins = origins
        self.default_source = default_source

    def source_of(self, key: str) -> str:
        probe = key
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            probe = probe.rpartition(".")[0]
        return self.default_source

    def sources_under(self, key: str) -> str:
        """Every file or override that set a value in the section ``key``, for cross-field errors
        whose cause may sit in any of them."""
        prefix = f"{key}." if key else ""
        found = [src for path, src in self.origins.items() if path.startswith(prefix)]
        unique = list(dict.fromkeys(found)) or [self.source_of(key)]
        return " + ".join(unique)

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=key, source=self.source_of(key))

    def convert(self, tp: Any, value: Any, key: str) -> Any:
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.dataclass(tp, value, key)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Literal:
            if value not in args or isinstance(value, bool) != any(
                isinstance(a, bool) for a in args
            ):
                raise self.error(f"must be one of {_type_name(tp)}, got {value!r}", key)
            return value
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            errors = []
            for option in (a for a in args if a is not type(None)):
                try:
                    return self.convert(option, value, key)
                except ConfigError as err:
                    errors.append(err)
            raise self.error(f"must be {_type_name(tp)}, got {value!r}", key)
        if origin in (list, tuple, Sequence):
            if not isinstance(value, list | tuple):
                raise self.error(f"must be a list, got {value!r}", key)
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise self.error(f"must be a list of {len(args)} items, got {value!r}", key)
                return tuple(
                    self.convert(a, v, f"{key}[{i}]")
                    for i, (a, v) in enumerate(zip(args, value, strict=True))
                )
            item_type = args[0] if args else Any
            items = [self.convert(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin in (dict, Mapping):
            if not isinstance(value, Mapping):
                raise self.error(f"must be a mapping, got {value!r}", key)
            value_type = args[1] if args else Any
            return {
                str(k): self.convert(value_type, v, _join(key, str(k))) for k, v in value.items()
            }
        return self.scalar(tp, value, key)

    def scalar(self, tp: Any, value: Any, key: str) -> Any:
        if tp is Any:
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise self.error(f"must be true or false, got {value!r}", key)
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)  # 1e6 in YAML is a float; accept it where it is integral
            if isinstance(value, str):
                try:
                    as_float = float(value.replace("_", ""))
                except ValueError:
                    pass
                else:
                    if as_float.is_integer():
                        return int(as_float)
            raise self.error(f"must be an integer, got {value!r}", key)
        if tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                # PyYAML reads 3e-4 (no dot) as a string; users mean a number.
                try:
                    return float(value)
                except ValueError:
                    pass
            raise self.error(f"must be a number, got {value!r}", key)
        if tp is str:
            if isinstance(value, str):
                return value
            raise self.error(f"must be a string, got {value!r}", key)
        raise self.error(f"unsupported field type {_type_name(tp)}", key)

    def dataclass(self, cls: type[Any], value: Any, key: str) -> Any:
        if isinstance(value, cls):
            return value
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(f"must be a mapping of {cls.__name__} fields, got {value!r}", key)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for name in value:
            if name not in fields:
                close = difflib.get_close_matches(str(name), list(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(sorted(fields))
                raise self.error(
                    f"unknown key{hint}; {cls.__name__} has: {known}", _join(key, str(name))
                )
        kwargs: dict[str, Any] = {}
        for name, field in fields.items():
            path = _join(key, name)
            if name in value:
                kwargs[name] = self.convert(hints[name], value[name], path)
            elif (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                if dataclasses.is_dataclass(hints[name]):
                    kwargs[name] = self.convert(hints[name], {}, path)
                else:
                    raise self.error(f"missing required value ({_type_name(hints[name])})", path)
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            try:
                validate()
            except ConfigError:
                raise
            except ValueError as err:
                raise ConfigError(
                    str(err), key=key or cls.__name__, source=self.sources_under(key)
                ) from None
        return obj


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def from_dict(schema: type[T], data: Mapping[str, Any], *, source: str = "<dict>") -> T:
    """Convert a plain tree into ``schema`` with the same strict checks as file loading."""
    origins: Origins = {}
    _record_origins(data, "", source, origins)
    result: T = _Converter(origins, source).dataclass(schema, data, "")
    return result


def load_config(
    schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``path`` (optional), apply dotted ``overrides`` and convert into ``schema``."""
    origins: Origins = {}
    tree: dict[str, Any] = {}
    default_source = "command line"
    if path is not None:
        tree = dict(_load_tree(Path(path), prefix="", origins=origins, stack=()))
        default_source = str(Path(path).resolve())
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(tree, key, value)
        source = f"command line override {text!r}"
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            origins.setdefault(".".join(parts[:depth]), source)
        origins[key] = source
        _record_origins(value, key, source, origins)
    result: T = _Converter(origins, default_source).dataclass(schema, tree, "")
    return result


def to_dict(config: Any) -> Any:
    """The plain YAML-able tree of a config (tuples become lists)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, list | tuple):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    return config


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config atomically (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(to_yaml(config), encoding="utf-8")
    tmp.replace(target)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 3e-4, ...}``: the form experiment trackers take as parameters."""
    tree = to_dict(config)
    flat: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, _join(path, k))
        else:
            flat[path] = node

    walk(tree, prefix)
    return flat
