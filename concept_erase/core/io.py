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
import re
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
from concept_erase.core.errors import (
    ConceptEraseError,
    NonFiniteValueError,
    OutputExistsError,
    OutputOverlapsInputError,
)

__all__ = [
    "OutputNotWritableError",
    "RunRecorder",
    "atomic_file",
    "atomic_output_dir",
    "cache_dir",
    "check_disjoint",
    "check_output_dir",
    "check_writable",
    "config_paths",
    "default_mode",
    "normalize_modes",
    "output_target",
    "package_versions",
    "peak_memory_bytes",
    "remove_stale_temporaries",
    "strict_json",
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


class OutputNotWritableError(ConceptEraseError, PermissionError):
    """An output path cannot be written (its directory, or the existing output, is read-only)."""


def check_output_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an existing non-empty directory (or a file) at ``path`` unless ``overwrite``, and, with or without
    ``overwrite``, an output that equals, contains or lies inside one of ``inputs`` (see :func:`check_disjoint`) or
    one that cannot be written (see :func:`check_writable`): all before any work starts."""
    path = Path(path)
    check_disjoint(path, inputs)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"output directory {path} exists and is not empty; pass --overwrite to replace it")
    check_writable(path)
    return path


def check_writable(path: str | Path) -> None:
    """Refuse an output ``path`` that cannot be written: its nearest existing parent directory must be writable
    (the output is built beside it and renamed into place), and so must an existing output directory (it is
    emptied when replaced). The error names ``path`` as given, never a temporary sibling."""
    path = Path(path)
    anchor = path.absolute().parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputNotWritableError(f"output {path} cannot be written: {anchor} is not a directory")
    blocked = [p for p in (anchor, path) if p.is_dir() and not os.access(p, os.W_OK | os.X_OK)]
    if blocked:
        where = "it" if blocked[0] == path else f"its directory {blocked[0]}"
        raise OutputNotWritableError(
            f"output {path} cannot be written: {where} is read-only; choose a writable output path"
        )


# Config keys whose values name input paths: ``*_dir``, ``*_path``, ``*_file`` and the usual names of inputs; keys
# of outputs (``save_*``, ``output*``, ``logging_dir``, ``work_dir``) are not inputs.
_INPUT_KEY = re.compile(r"(_dir|_path|_file)$|^(model|adapter|original|oracle|judge|dataset|data|store|path)$")
_OUTPUT_KEY = re.compile(r"^(save_|output)|^(logging_dir|work_dir)$")


def config_paths(values: Any, key: str = "") -> list[str]:
    """The input paths a config mapping names: the non-empty strings (alone or in lists) under input-like keys (see
    ``_INPUT_KEY``), at any depth, except under output keys."""
    if isinstance(values, dict):
        return [p for k, v in values.items() for p in config_paths(v, str(k))]
    if isinstance(values, (list, tuple)):
        return [p for v in values for p in config_paths(v, key)]
    if (
        isinstance(values, (str, Path))
        and str(values).strip()
        and _INPUT_KEY.search(key)
        and not _OUTPUT_KEY.search(key)
    ):
        return [str(values)]
    return []


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


def output_target(
    path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = (), atomic: bool = True
):
    """The directory context a command writes ``path`` through: :func:`atomic_output_dir` or, with
    ``atomic=False``, ``path`` itself (a directory its owner, e.g. the pipeline runner, already made atomic)."""
    return atomic_output_dir(path, overwrite, inputs) if atomic else contextlib.nullcontext(Path(path))


@contextlib.contextmanager
def atomic_output_dir(
    path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()
) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path``; on success rename it to ``path``, on error delete it.

    With ``overwrite`` an existing directory is replaced only after the new one is complete. ``inputs`` are checked
    as :func:`check_output_dir` does: an output overlapping one of them is refused before anything is created.
    Temporary siblings that killed runs left behind are removed first (see :func:`remove_stale_temporaries`).
    """
    final = check_output_dir(path, overwrite, inputs).absolute()
    created = [p for p in final.parents if not p.exists()]  # parents this call creates, deepest first
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        tmp.mkdir()
    except PermissionError as exc:  # e.g. a read-only file system: name the user's path, not the temporary one
        raise OutputNotWritableError(f"output {path} cannot be written: {exc.strerror or exc}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # leave the file system as we found it
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    normalize_modes(tmp)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``path`` only if the block succeeds. Temporary siblings
    that killed runs left behind are removed first."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_file() and (tmp.stat().st_mode & 0o777) == 0o600:  # a tempfile-style writer (safetensors)
            tmp.chmod(default_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id we wrote: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temporaries(final_path: str | Path) -> list[Path]:
    """Delete the temporary siblings of ``final_path`` (``.NAME.tmp-PID-XXXXXXXX`` and ``.NAME.old-PID-XXXXXXXX``,
    as :func:`atomic_output_dir` and :func:`atomic_file` name them) whose owning process ``PID`` is no longer
    alive: what a run killed with SIGKILL left behind. Siblings of live processes (a run in progress) are kept.
    Returns the paths removed. Any writer of ``final_path`` may call it before it starts."""
    final = Path(final_path).absolute()
    parent = final.parent
    if not parent.is_dir():
        return []
    removed = []
    for kind in ("tmp", "old"):
        prefix = f".{final.name}.{kind}-"
        for candidate in [c for c in parent.iterdir() if c.name.startswith(prefix)]:
            pid, _, tag = candidate.name[len(prefix) :].partition("-")
            if not (pid.isdigit() and len(tag) == 8 and all(c in "0123456789abcdef" for c in tag)):
                continue
            if _pid_alive(int(pid)):
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    candidate.unlink()
            if not candidate.exists():
                removed.append(candidate)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a new file (``0o666``) or directory (``0o777``) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def normalize_modes(root: Path) -> None:
    """Give files that third-party writers created ``0600`` (and directories ``0700``), the tempfile modes, the
    modes the umask gives; anything else is left as it is."""
    file_mode, dir_mode = default_mode(), default_mode(directory=True)
    for current, dirs, files in os.walk(root):
        for name in dirs:
            p = Path(current) / name
            if not p.is_symlink() and (p.stat().st_mode & 0o777) == 0o700 and dir_mode != 0o700:
                p.chmod(dir_mode)
        for name in files:
            p = Path(current) / name
            if not p.is_symlink() and (p.stat().st_mode & 0o777) == 0o600 and file_mode != 0o600:
                p.chmod(file_mode)


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
    Path(path).write_text(strict_json(data, Path(path).name, indent=2) + "\n")


def strict_json(data: Any, what: str = "the value", **kwargs: Any) -> str:
    """``json.dumps(data, **kwargs)`` as strict JSON: a NaN or infinite number anywhere in ``data`` raises
    :class:`NonFiniteValueError` naming ``what`` and the key, instead of writing ``NaN`` (which is not JSON)."""
    bad = _non_finite(data)
    if bad is not None:
        raise NonFiniteValueError(f"cannot write {what}: {bad} (strict JSON has no NaN or Infinity)")
    kwargs.setdefault("default", _json_default)
    return json.dumps(data, allow_nan=False, **kwargs)


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
