"""Typed YAML configuration shared by every CLI of the project.

A config is a tree of dataclasses. YAML files are loaded strictly into that tree:

* an unknown key, a value of the wrong type or a missing required value is a `ConfigError` that
  names the dotted key path and the file (or command-line override) the value came from;
* a mapping may build on other files with ``_base_: path`` (or a list of paths), resolved relative
  to the file that names them; the mapping's own keys override the base, key by key, recursively;
* dotted overrides (``train.lr=3e-4``) are parsed as YAML scalars and type-checked the same way;
* a float must be finite (``.inf``/``nan`` are refused) unless its field opts out with
  ``field(metadata=NONFINITE_OK)``: an infinite learning rate validates as a number but trains
  NaN weights;
* after conversion every dataclass's ``validate()`` runs bottom-up, for cross-field checks.

The resolved config dumps back to plain YAML and loads to an identical object, so a run can be
rebuilt from the copy saved next to its checkpoints.

This module lives in the torch-free `data_pipeline` package because all three CLIs depend on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from data_pipeline.config_yaml import (
    ConfigError,
    Origins,
    apply_override,
    join_key,
    load_tree,
    parse_override,
    record_origins,
)

T = TypeVar("T")

# Field metadata of a float key that may be infinite or NaN (e.g. a limit where inf means none):
# ``x: float = field(default=math.inf, metadata=NONFINITE_OK)``. Every other float must be finite.
NONFINITE_OK: Mapping[str, Any] = types.MappingProxyType({"nonfinite_ok": True})


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
        self.nonfinite_ok = False  # the field being converted opts out of the finite check

    def source_of(self, key: str) -> str:
        probe = key
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            # ``a.b[1]`` was set with ``a.b``; ``a.b`` with ``a``.
            probe = probe[: probe.rindex("[")] if probe.endswith("]") else probe.rpartition(".")[0]
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
                str(k): self.convert(value_type, v, join_key(key, str(k))) for k, v in value.items()
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
            number: float | None = None
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):
                # PyYAML reads 3e-4 (no dot) as a string; users mean a number.
                with contextlib.suppress(ValueError):
                    number = float(value)
            if number is None:
                raise self.error(f"must be a number, got {value!r}", key)
            if not math.isfinite(number) and not self.nonfinite_ok:
                raise self.error(f"must be a finite number, got {value!r}", key)
            return number
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
                    f"unknown key{hint}; {cls.__name__} has: {known}", join_key(key, str(name))
                )
        kwargs: dict[str, Any] = {}
        for name, field in fields.items():
            path = join_key(key, name)
            if name in value:
                self.nonfinite_ok = bool(field.metadata.get("nonfinite_ok"))
                try:
                    kwargs[name] = self.convert(hints[name], value[name], path)
                finally:
                    self.nonfinite_ok = False
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
    record_origins(data, "", source, origins)
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
        tree = dict(load_tree(Path(path), prefix="", origins=origins, stack=()))
        default_source = str(Path(path).resolve())
    for text in overrides:
        key, value = parse_override(text)
        apply_override(tree, key, value)
        source = f"command line override {text!r}"
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            origins.setdefault(".".join(parts[:depth]), source)
        origins[key] = source
        record_origins(value, key, source, origins)
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


def without_storage_options(tree: Any) -> Any:
    """``tree`` (plain config data) without its ``storage_options`` mappings, at any depth.
    fsspec options say how to reach the data (endpoints, often credentials), not what the data
    is: they stay out of what is recorded next to the data (manifests, tokenizer artifacts)
    and out of what identifies a recipe, so rotating a key changes nothing and no secret is
    written to a bucket."""
    if isinstance(tree, Mapping):
        return {k: without_storage_options(v) for k, v in tree.items() if k != "storage_options"}
    if isinstance(tree, list):
        return [without_storage_options(v) for v in tree]
    return tree


def without_defaults(schema: type, tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree``, a config of ``schema`` as plain data (`to_dict`'s, or one recorded by an older
    version), without the keys that hold their schema default, recursively: the choices its
    author made. Two configs that differ only in keys added to the schema since, at their
    defaults, are then equal. A key the schema no longer has is kept (it made a difference)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    kept: dict[str, Any] = {}
    for key, value in tree.items():
        spec = fields.get(key)
        if spec is None:
            kept[key] = value
            continue
        kind = hints[key]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type) and isinstance(value, Mapping):
            chosen = without_defaults(kind, value)
            if chosen:
                kept[key] = chosen
            continue
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:  # required: always a choice
            kept[key] = value
            continue
        if to_dict(default) != value:
            kept[key] = value
    return kept


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
        if isinstance(node, dict):
            # An empty mapping (storage_options left at its default) holds no parameter.
            for k, v in node.items():
                walk(v, join_key(path, k))
        else:
            flat[path] = node

    walk(tree, prefix)
    return flat
