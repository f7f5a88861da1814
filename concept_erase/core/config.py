"""Dataclass configs loaded from YAML (``yaml.safe_load``) with dotted command-line overrides.

    cfg = load_config(TrainerConfig, "train.yaml", ["learning_rate=3e-4", "optim.betas=[0.9, 0.99]"])

Unknown keys are an error naming the key and the valid keys; values are checked against the field annotations
(``int``, ``float``, ``str``, ``bool``, ``Literal[...]``, ``Optional``, ``list[...]``, ``tuple[...]``, ``dict``
and nested dataclasses) and a wrong type names the key, the expected type and the value received.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from concept_erase.core.errors import (
    ConfigError,
    ConfigParseError,
    NonFiniteConfigError,
    UnknownConfigKeyError,
    excerpt,
)

__all__ = [
    "merge_dicts",
    "load_config",
    "from_dict",
    "config_to_dict",
    "read_yaml",
    "safe_load",
    "parse_overrides",
    "dump_config",
    "Range",
    "check_numbers",
    "MAX_ALIAS_NODES",
    "MAX_YAML_DEPTH",
    "MAX_CONFIG_BYTES",
    "number_range",
    "SEED",
    "POSITIVE",
    "NON_NEGATIVE",
    "COUNT",
    "FRACTION",
    "FINITE",
]

# ---------------------------------------------------------------------------------------------------- YAML

MAX_ALIAS_NODES = 10_000  # nodes that aliases (``*name``) may expand to in one document
MAX_YAML_DEPTH = 100  # levels of nested lists and mappings
MAX_CONFIG_BYTES = 16 * 2**20  # a config file larger than this is refused unread


class YAMLLimitError(yaml.YAMLError):
    """A YAML document is refused before it is built: it would be too big or too deep for a config."""


class AliasBombError(YAMLLimitError):
    """The aliases of a YAML document expand to more than :data:`MAX_ALIAS_NODES` nodes, or recursively."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the nodes its aliases expand to and refuses, while composing (before any
    object is constructed), a document whose aliases expand beyond :data:`MAX_ALIAS_NODES` ("billion laughs") or
    refer to themselves."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._sizes: dict[int, int | None] = {}
        self._open: set[str] = set()  # anchors of the nodes being composed
        self._depth = 0

    def _size(self, node: yaml.Node) -> int:
        """Nodes in ``node``'s tree with aliases expanded (memoised: linear in the document's size)."""
        key = id(node)
        if key in self._sizes:
            size = self._sizes[key]
            if size is None:
                raise AliasBombError("an alias refers to the node that contains it (a recursive structure)")
            return size
        self._sizes[key] = None
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        self._sizes[key] = size
        if size > MAX_ALIAS_NODES:
            raise AliasBombError(f"aliases expand to more than {MAX_ALIAS_NODES} values")
        return size

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise AliasBombError(f"alias *{excerpt(event.anchor)} refers to the node that contains it (recursive)")
            node = super().compose_node(parent, index)
            self._expanded += self._size(node)
            if self._expanded > MAX_ALIAS_NODES:
                raise AliasBombError(f"aliases expand to more than {MAX_ALIAS_NODES} values")
            return node
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YAMLLimitError(f"values are nested more than {MAX_YAML_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` with alias expansion and nesting bounded (:class:`YAMLLimitError`, a
    ``yaml.YAMLError``, raised while composing: before any Python object is built)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with :func:`safe_load` (``yaml.safe_load``, aliases and nesting bounded); errors name the
    file and the line. A file that is not UTF-8 text (a binary or a pickle) or larger than :data:`MAX_CONFIG_BYTES`
    is refused before it is parsed."""
    path = Path(path)
    shown = excerpt(str(path), 300, quote=False)
    try:
        if not path.is_file():
            raise ConfigParseError(f"config file not found: {shown}")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigParseError(f"{shown} is {size} bytes: a config file may have at most {MAX_CONFIG_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigParseError(f"{shown} is not a text file (UTF-8): a config is a YAML mapping") from None
    except OSError as exc:
        raise ConfigParseError(f"cannot read config file {shown}: {exc.strerror or type(exc).__name__}") from None
    try:
        data = safe_load(text)
    except YAMLLimitError as exc:
        raise ConfigParseError(f"{shown} is refused: {exc}; write the values out plainly") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigParseError(f"{shown} is not valid YAML{where}: {excerpt(problem, 120, quote=False)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigParseError(f"{shown} must contain a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {excerpt(item)} must look like key=value (dotted keys reach nested configs)")
        try:
            value = safe_load(raw) if raw.strip() else ""
        except YAMLLimitError as exc:
            raise ConfigError(f"override {excerpt(key)}: {exc}; write the value out plainly") from None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {excerpt(item)} conflicts with another override of {excerpt(part)}")
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
            raise ConfigError(
                f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__} {excerpt(value)}"
            )
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {excerpt(value)}")
        return dict(value)
    return _coerce_scalar(value, tp, key)


def _coerce_literal(value: Any, accepted: tuple, key: str) -> Any:
    if value in accepted and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in accepted)):
        return value
    accepted_text = ", ".join(excerpt(a) for a in accepted)
    raise ConfigError(f"{key}: invalid value {excerpt(value)}; accepted values: {accepted_text}")


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
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {excerpt(value)}")


def _coerce_sequence(value: Any, tp: Any, key: str) -> list | tuple:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {excerpt(value)}")
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise NonFiniteConfigError(f"{key} must be a finite number, got {excerpt(value)}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {excerpt(value)}")


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
            raise UnknownConfigKeyError(
                f"unknown key {excerpt(prefix + str(key))} for {cls.__name__}; valid keys: {valid}"
            )
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


# ---------------------------------------------------------------------------------------------------- numbers


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: ``low``/``high`` bounds (None: unbounded), each inclusive unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    label: str = ""  # what the field is, named in the message: "kl_weight (lambda) must be in [0, 1]"

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "a finite number"


def _number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


SEED = Range(0, 2**32, high_open=True)  # numpy's RandomState and torch's generators both take [0, 2**32)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1)
FRACTION = Range(0, 1)
FINITE = Range()

# The range of a numeric field by its name, unless its class declares one in ``NUMBER_RANGES``.
_FAMILIES: tuple[tuple[re.Pattern, Range], ...] = tuple(
    (re.compile(pattern), rng)
    for pattern, rng in (
        (r"(.+_)?seeds?", SEED),
        (r"(.+_)?learning_rate", POSITIVE),
        (r"(.+_)?(probability|fraction|accuracy)|(.+_)?lambdas?", FRACTION),
        (r"(.+_)?ratio", Range(0, 1, low_open=True)),
        (r"test_size", Range(0, 1, low_open=True, high_open=True)),
        (r"(.+_)?temperature", POSITIVE),
        (
            r"(.+_)?(epochs|batch_size|samples|repeats|per_class|rank|channels|layers|heads|dim|length|hidden)"
            r"|(.+_)?hidden_sizes?|num_.+|patch_size|intermediate_size|max_train_steps|gradient_accumulation_steps"
            r"|checkpointing_steps|checkpoints_total_limit|generation_steps|num_inference_steps",
            COUNT,
        ),
        (
            r"(.+_)?(steps|weight|scale|std|sigma|decay|epsilon|l2|momentum|bound|noise)|max_grad_norm",
            NON_NEGATIVE,
        ),
    )
)


def number_range(cls: type, name: str) -> Range:
    """The :class:`Range` field ``name`` of config class ``cls`` accepts: its ``NUMBER_RANGES`` entry (the most
    derived class that declares one wins), else the range of its name's family, else any finite number."""
    for klass in cls.__mro__:
        declared = klass.__dict__.get("NUMBER_RANGES")
        if declared and name in declared:
            return declared[name] or FINITE
    for pattern, rng in _FAMILIES:
        if pattern.fullmatch(name):
            return rng
    return FINITE


def _numbers(value: Any) -> list[tuple[str, Any]]:
    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if is_number(value):
        return [("", value)]
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(value) if is_number(v)]
    return []


def check_numbers(config: Any) -> None:
    """Refuse a NaN or infinite number, or one outside its :func:`number_range`, in any field of dataclass
    ``config`` (numbers in lists and tuples too). Every config dataclass calls this from ``__post_init__``, so a
    setting is checked however the config is built (YAML, ``--set``, CLI flags, the Python API).

    Raises :class:`NonFiniteConfigError` (a :class:`ConfigError`) for NaN/inf, :class:`ConfigError` for a value
    out of range; both name the field.
    """
    cls = type(config)
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        rng = None
        for suffix, value in _numbers(getattr(config, f.name)):
            key = f.name + suffix
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteConfigError(f"{key} must be a finite number, got {value}")
            rng = rng or number_range(cls, f.name)
            if value not in rng:
                label = f" ({rng.label})" if rng.label else ""
                raise ConfigError(f"{key}{label} must be {rng}, got {excerpt(value)}")
