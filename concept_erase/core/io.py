"""Writing outputs: atomic output directories and the run record every output carries.

Every run builds its output in a temporary sibling directory and renames it into place only when it succeeded, so a
crash or an error never leaves a half-written output. An existing non-empty output directory is refused unless the
caller asks to overwrite it. Inputs are never touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from concept_erase.core.config import config_to_dict
from concept_erase.core.errors import NonFiniteValueError, OutputExistsError, OutputOverlapsInputError

__all__ = [
    "cache_dir",
    "atomic_file",
    "atomic_output_dir",
    "check_disjoint",
    "check_output_dir",
    "package_versions",
    "peak_memory_bytes",
    "RunRecorder",
    "write_json",
]

_TRACKED_PACKAGES = (
    "concept-erase",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "safetensors",
    "scikit-learn",
    "numpy",
)


def check_output_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an existing non-empty directory (or a file) at ``path`` unless ``overwrite``, and, with or without
    ``overwrite``, an output that equals, contains or lies inside one of ``inputs`` (see :func:`check_disjoint`)."""
    path = Path(path)
    check_disjoint(path, inputs)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"output directory {path} exists and is not empty; pass --overwrite to replace it")
    return path


def check_disjoint(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an ``output`` path that equals, contains or lies inside an existing input path (a model, an adapter, a
    data set, a store, a config): writing it, or replacing it with ``overwrite``, would destroy that input.

    Inputs that are not local paths (``None``, a hub id) are skipped; links are followed on both sides.
    """
    out = Path(output).expanduser().resolve()
    for given in inputs:
        if given is None or not Path(given).expanduser().exists():
            continue
        source = Path(given).expanduser().resolve()
        if out == source:
            relation = "is"
        elif out in source.parents:
            relation = "contains"
        elif source in out.parents:
            relation = "lies inside"
        else:
            continue
        raise OutputOverlapsInputError(
            f"output {output} {relation} the input {given}: writing it would destroy that input; "
            "choose an output path outside every input"
        )


@contextlib.contextmanager
def atomic_output_dir(
    path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()
) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path``; on success rename it to ``path``, on error delete it.

    With ``overwrite`` an existing directory is replaced only after the new one is complete. ``inputs`` are checked
    as :func:`check_output_dir` does: an output overlapping one of them is refused before anything is created.
    """
    final = check_output_dir(path, overwrite, inputs).absolute()
    created = [p for p in final.parents if not p.exists()]  # parents this call creates, deepest first
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # leave the file system as we found it
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def peak_memory_bytes() -> dict[str, int]:
    """Peak resident memory of this process (and peak CUDA allocation when CUDA is in use), in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    out = {"cpu_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_allocated"] = int(torch.cuda.max_memory_allocated())
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON (no ``NaN`` / ``Infinity``: a non-finite number is refused, naming its key)."""
    bad = _non_finite(data)
    if bad is not None:
        raise NonFiniteValueError(f"cannot write {Path(path).name}: {bad} (strict JSON has no NaN or Infinity)")
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    Path(path).write_text(text + "\n")


def _non_finite(data: Any, where: str = "") -> str | None:
    """``"key.path is nan"`` for the first non-finite float in ``data`` (dicts, lists, tuples, arrays), else None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else f"{where or 'the value'} is {data}"
    if isinstance(data, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    elif hasattr(data, "tolist") and not isinstance(data, (str, bytes)):
        return _non_finite(data.tolist(), where)
    else:
        return None
    for key, value in items:
        found = _non_finite(value, key)
        if found is not None:
            return found
    return None


def cache_dir() -> Path:
    """``$CONCEPT_ERASE_CACHE``, else ``~/.cache/concept-erase`` (oracles, original models, generations)."""
    return Path(os.environ.get("CONCEPT_ERASE_CACHE", Path.home() / ".cache" / "concept-erase"))


class RunRecorder:
    """Collects what every output directory records: config, seeds, versions, wall time and peak memory.

    Use as a context manager around the work and call :meth:`write` with the output directory.
    """

    def __init__(self, kind: str, config: Any = None, seed: int | None = None, **extra: Any):

        self.record: dict[str, Any] = {
            "kind": kind,
            "config": config_to_dict(config),
            "seed": seed,
            "argv": list(sys.argv),
            "versions": package_versions(),
            **extra,
        }
        self._start: float | None = None

    def __enter__(self) -> RunRecorder:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.record["wall_time_s"] = round(time.perf_counter() - (self._start or time.perf_counter()), 4)
        self.record["peak_memory"] = peak_memory_bytes()

    def write(self, out_dir: str | Path, name: str = "run.json") -> Path:
        path = Path(out_dir) / name
        write_json(path, self.record)
        return path
