"""Dataclass configs loaded from YAML (``yaml.safe_load``) with dotted command-line overrides.

    cfg = load_config(TrainerConfig, "train.yaml", ["learning_rate=3e-4", "optim.betas=[0.9, 0.99]"])

Unknown keys are an error naming the key and the valid keys; values are checked against the field annotations
(``int``, ``float``, ``str``, ``bool``, ``Literal[...]``, ``Optional``, ``list[...]``, ``tuple[...]``, ``dict``
and nested dataclasses) and a wrong type names the key, the expected type and the value received.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from concept_erase.core.errors import ConfigError, ConfigParseError, UnknownConfigKeyError

__all__ = ["merge_dicts", "load_config", "from_dict", "config_to_dict", "read_yaml", "parse_overrides", "dump_config"]


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigParseError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigParseError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigParseError(f"{path} must contain a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (dotted keys reach nested configs)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def merge_dicts(base: dict, extra: dict) -> dict:
    """Deep-merge ``extra`` into a copy of ``base`` (nested mappings merge, everything else is replaced)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type, source: str | Path | dict | None = None, overrides: list[str] | None = None):
    """Build a ``cls`` instance from a YAML file or mapping plus dotted overrides, validating keys and types."""
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = source
    else:
        data = read_yaml(source)
    if overrides:
        data = merge_dicts(data, parse_overrides(overrides))
    return from_dict(cls, data)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widen to float, lists to tuples)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(tp), key)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    return _coerce_scalar(value, tp, key)


def _coerce_literal(value: Any, accepted: tuple, key: str) -> Any:
    if value in accepted and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in accepted)):
        return value
    raise ConfigError(f"{key}: invalid value {value!r}; accepted values: {', '.join(repr(a) for a in accepted)}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _coerce_sequence(value: Any, tp: Any, key: str) -> list | tuple:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_tp = args[0] if args else Any
    items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if (origin is tuple or tp is tuple) else items


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: dict, prefix: str = ""):
    """Instantiate dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise UnknownConfigKeyError(f"unknown key {prefix + key!r} for {cls.__name__}; valid keys: {valid}")
    kwargs = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{cls.__name__}: missing required key(s): {', '.join(prefix + m for m in missing)}")
    return cls(**kwargs)


def config_to_dict(config: Any) -> Any:
    """A plain, YAML/JSON-serialisable view of a (nested) config dataclass."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config


def dump_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (``config_to_dict`` + ``yaml.safe_dump``)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
