"""Reading back files the toolkit wrote (recipes, records, configs, prepared arrays), checked on load.

A file that is truncated, not text, not valid JSON, misses a field or holds a value of the wrong type is refused with
one line naming the path and what is wrong, raised as the caller's error class (a :class:`ConceptEraseError`), never
as a ``KeyError`` / ``TypeError`` / ``UnicodeDecodeError`` from deep inside.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from concept_erase.core.config import from_dict
from concept_erase.core.errors import ConceptEraseError, ConfigError

__all__ = ["read_json", "read_json_object", "require", "read_dataclass", "load_npz", "check_array", "first_line"]

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a bool"}


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def _describe(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types if t is not type(None)) + (
        " or null" if type(None) in types else ""
    )


def read_json(path: str | Path, what: str, error: type[ConceptEraseError] = ConfigError) -> Any:
    """The JSON value in ``path`` (a ``what``: "erasure record", "SISA store file", ...), any JSON type."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise error(f"{what} {path} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is corrupt: not UTF-8 text (a binary file?)") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise error(f"{what} {path} is corrupt: the file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is corrupt: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise error(f"{what} {path} is corrupt: nested too deeply") from None


def read_json_object(path: str | Path, what: str, error: type[ConceptEraseError] = ConfigError) -> dict:
    """The JSON object in ``path`` (a ``what``: "erasure record", "judge config", ...)."""
    data = read_json(path, what, error)
    if not isinstance(data, dict):
        raise error(f"{what} {path} is corrupt: expected a JSON object, got {type(data).__name__}")
    return data


def require(
    data: dict,
    key: str,
    types: type | tuple[type, ...],
    path: str | Path,
    what: str,
    error: type[ConceptEraseError] = ConfigError,
    optional: bool = False,
) -> Any:
    """``data[key]`` when it has one of ``types`` (an int is accepted for float, a bool never for a number)."""
    if key not in data:
        if optional:
            return None
        raise error(f"{what} {path} is corrupt: the field {key!r} is missing")
    value = data[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if not ok:
        raise error(
            f"{what} {path} is corrupt: the field {key!r} must be {_describe(types)}, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{what} {path} is corrupt: the field {key!r} is {value}")
    return value


def read_dataclass(cls: type, data: Any, path: str | Path, what: str, error: type[ConceptEraseError] = ConfigError):
    """``cls`` built from ``data`` with the config checks (unknown keys, types, ranges); a failure names ``path``."""
    try:
        return from_dict(cls, data)
    except ConceptEraseError as exc:
        raise error(f"{what} {path} is corrupt: {exc}") from None


def load_npz(path: str | Path, what: str, keys: Iterable[str] = (), error: type[ConceptEraseError] = ConfigError):
    """The arrays of an ``.npz`` file, read without pickle: object arrays, a damaged archive or a missing key raise."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a directory, not an .npz file")
    if not path.is_file():
        raise error(f"{what} {path} not found")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not is_zip:
        raise error(f"{what} {path} is corrupt or not an .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise error(f"{what} {path} is not an .npz archive (a single .npy array?)")
            arrays = {name: archive[name] for name in archive.files}
    except ConceptEraseError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object arrays" in str(exc).lower():
            raise error(
                f"{what} {path} holds object arrays (pickled data), which are refused; store plain arrays"
            ) from None
        raise error(f"{what} {path} is corrupt: {first_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise error(f"{what} {path} is corrupt or not an .npz archive: {first_line(exc)}") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise error(
            f"{what} {path} is corrupt: missing array(s) {', '.join(missing)}; it holds {', '.join(arrays) or 'none'}"
        )
    return arrays


def check_array(
    array: Any,
    name: str,
    path: str | Path,
    what: str,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
    numeric: bool = True,
    error: type[ConceptEraseError] = ConfigError,
) -> np.ndarray:
    """``array`` when it has ``ndim`` dimensions / ``shape`` (``None`` entries match anything) and a numeric dtype."""
    arr = np.asarray(array) if not hasattr(array, "shape") else array
    dims = tuple(arr.shape)
    if ndim is not None and len(dims) != ndim:
        raise error(f"{what} {path} is corrupt: {name!r} has {len(dims)} dimension(s) {dims}, expected {ndim}")
    if shape is not None and (len(dims) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dims))):
        expected = tuple("*" if s is None else s for s in shape)
        raise error(f"{what} {path} is corrupt: {name!r} has shape {dims}, expected {expected}")
    kind = getattr(getattr(arr, "dtype", None), "kind", None)
    if numeric and isinstance(arr, np.ndarray) and kind not in ("b", "i", "u", "f"):
        raise error(f"{what} {path} is corrupt: {name!r} has dtype {arr.dtype}, expected numbers")
    return arr
