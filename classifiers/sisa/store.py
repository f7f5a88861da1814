"""The persistent SISA store: one directory holding everything needed to predict, unlearn and audit.

    manifest.json                  what was trained: dataset (name, fingerprint, split), model, recipe, S, R, strategy,
                                   aggregation, seed, format version
    shards.json                    the shard map: shards[s][r] = training indices of slice r of shard s
    checkpoints/<key>.safetensors  the model after slice r of shard s; key = sha256(config fingerprint, s, r, the
                                   surviving indices of slices 0..r): a deletion reuses every checkpoint whose
                                   training content did not change
    models.json                    the current ensemble: version and the checkpoint key of each shard's last slice
    ledger.jsonl                   append-only deletion ledger, one JSON object per line (fsync'ed)
    lock                           fcntl.flock'ed by a process that trains or unlearns

Ledger records: ``{"status": "pending", "request_id", "indices", "new_indices", "already_deleted", "affected":
{shard: first retrained slice}, "version", "timestamp"}`` is written *before* retraining and ``{"status": "done",
"request_id", "version", "retrained", "seconds", "timestamp"}`` after; a request that deletes nothing new is one
``{"status": "noop", ...}`` record. The deleted set is the union of ``new_indices`` of every pending or done request,
so a request interrupted by a crash is completed by the next command (its checkpoints are content-keyed: those
already written are reused). The ledger is never rewritten: a corrupt or truncated line stops every command with an
error that names the line. Every other file is replaced atomically (temporary file, fsync, ``os.replace``).

Every file is checked when it is read back (:class:`~concept_erase.core.errors.StoreError`, one line naming the file
and what is wrong): the manifest's keys and types, the shard map against the manifest (``n_shards`` x ``n_slices``
lists of distinct indices in ``0..num_samples-1``), each ledger record's fields, types and indices, ``models.json``,
and each checkpoint (a readable safetensors file). Nothing is ever created in a directory that is not a store, or an
empty one that ``train`` makes into one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from classifiers.sisa.aggregation import AGGREGATIONS
from classifiers.sisa.sharding import STRATEGIES
from concept_erase.core.config import config_to_dict
from concept_erase.core.errors import InputNotFoundError, StoreError
from concept_erase.core.io import strict_json
from concept_erase.core.readers import read_json

__all__ = ["FORMAT_VERSION", "IDENTITY_KEYS", "SISAStore", "build_manifest", "fingerprint_tensors"]

FORMAT_VERSION = 1
# manifest keys that must match when a store is opened again for the same data and configuration
IDENTITY_KEYS = ("dataset_fingerprint", "model", "recipe", "n_shards", "n_slices", "strategy", "seed", "format")
_STATUSES = ("pending", "done", "noop")
# manifest keys and what each must be (the format version is checked first, on its own)
_MANIFEST_TYPES = {
    "method": ("sisa",),
    "dataset": str,
    "split": (dict, type(None)),
    "dataset_fingerprint": str,
    "num_samples": "count",
    "num_classes": "count",
    "model": dict,
    "recipe": dict,
    "n_shards": "count",
    "n_slices": "count",
    "strategy": STRATEGIES,
    "aggregation": AGGREGATIONS,
    "seed": int,
}
_RECIPE_TYPES = {"epochs": "count", "batch_size": "count", "learning_rate": float, "optimizer": str,
                 "weight_decay": float}  # fmt: skip
# ledger fields per status: "ids" a list of training indices, "count" an int >= 1 (request ids), int any int >= 0
_LEDGER_FIELDS = {
    "pending": {"request_id": "count", "indices": "ids", "new_indices": "ids", "already_deleted": "ids",
                "affected": dict, "version": int},
    "noop": {"request_id": "count", "indices": "ids", "new_indices": "ids", "already_deleted": "ids",
             "affected": dict, "version": int},
    "done": {"request_id": "count", "version": int, "retrained": dict},
}  # fmt: skip


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_problem(value, kind) -> str | None:
    """What is wrong with ``value`` for ``kind`` (a type, a tuple of accepted values or types, "count", "ids"), or
    None when it is fine."""
    if kind == "count":
        return None if _is_int(value) and value >= 1 else "must be an integer >= 1"
    if kind == "ids":
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            return "must be a list of integer training indices"
        return None
    if kind is int:
        return None if _is_int(value) and value >= 0 else "must be an integer >= 0"
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        return None if ok else "must be a number"
    if isinstance(kind, tuple) and all(isinstance(k, str) for k in kind):
        return None if value in kind else f"must be one of {', '.join(kind)}"
    if isinstance(kind, tuple):
        return None if isinstance(value, kind) else f"must be one of {', '.join(k.__name__ for k in kind)}"
    return None if isinstance(value, kind) and not isinstance(value, bool) else f"must be a {kind.__name__}"


def _shown(value) -> str:
    return json.dumps(value)[:60]


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """A short hash of tensors' shapes, dtypes and bytes (identifies a training set)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_manifest(info: dict, fingerprint: str, num_samples: int, template, recipe, params: dict) -> dict:
    """The manifest of a store: the dataset (``info``: name, split, num_classes), its fingerprint, the model (a
    ModelConfig as a dict, or a module's class and parameter shapes), the recipe and the SISA parameters."""

    if isinstance(template, torch.nn.Module):
        shapes = {k: list(v.shape) for k, v in template.state_dict().items()}
        model = {"class": type(template).__qualname__, "shapes": shapes}
    else:
        model = config_to_dict(template)
    return {
        "format": FORMAT_VERSION,
        "method": "sisa",
        "dataset": info["dataset"],
        "split": info["split"],
        "dataset_fingerprint": fingerprint,
        "num_samples": num_samples,
        "num_classes": info["num_classes"],
        "model": model,
        "recipe": config_to_dict(recipe),
        **params,
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_bytes(data) -> bytes:
    return (strict_json(data, "a SISA store file", indent=1) + "\n").encode()


class SISAStore:
    """A SISA store directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_file = None
        self._lock_depth = 0

    # ------------------------------------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger.jsonl"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def require(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a SISA store directory")
        if not self.path.is_dir():
            raise InputNotFoundError(f"SISA store not found: {self.path}")
        if not self.exists():
            raise StoreError(f"{self.path} is not a SISA store (no manifest.json); create one with `sisa train`")

    def _read_json(self, name: str):
        path = self.path / name
        if not path.exists():
            raise StoreError(f"{self.path} is incomplete: {name} is missing")
        return read_json(path, "SISA store file", StoreError)

    def _corrupt(self, name: str, what: str) -> StoreError:
        return StoreError(f"{self.path / name} is corrupt: {what}")

    def manifest(self) -> dict:
        """The manifest, checked: every key present with the right type, and this format version."""
        self.require()
        manifest = self._read_json("manifest.json")
        if not isinstance(manifest, dict):
            raise self._corrupt("manifest.json", f"expected a JSON object, got {type(manifest).__name__}")
        if "format" not in manifest:
            raise self._corrupt("manifest.json", "'format' is missing")
        if manifest["format"] != FORMAT_VERSION:
            raise StoreError(
                f"{self.manifest_path}: store format {_shown(manifest['format'])}; this version reads format "
                f"{FORMAT_VERSION}"
            )
        for fields, where in ((_MANIFEST_TYPES, manifest), (_RECIPE_TYPES, manifest.get("recipe"))):
            for key, kind in fields.items():
                name = key if where is manifest else f"recipe.{key}"
                if key not in where:
                    raise self._corrupt("manifest.json", f"{name!r} is missing")
                problem = _type_problem(where[key], kind)
                if problem:
                    raise self._corrupt("manifest.json", f"{name!r} {problem}, got {_shown(where[key])}")
        if manifest["dataset"] != "tensors" and manifest["split"] is None:
            raise self._corrupt("manifest.json", f"'split' is missing for dataset {manifest['dataset']!r}")
        return manifest

    def shards(self, manifest: dict | None = None) -> list[list[list[int]]]:
        """The shard map, checked against the manifest: ``n_shards`` lists of ``n_slices`` lists of distinct training
        indices in ``0..num_samples-1``."""
        manifest = self.manifest() if manifest is None else manifest
        shards = self._read_json("shards.json")
        n_shards, n_slices, n = manifest["n_shards"], manifest["n_slices"], manifest["num_samples"]
        shape = f"{n_shards} shards of {n_slices} slices (lists of training indices)"
        if not isinstance(shards, list) or len(shards) != n_shards:
            raise self._corrupt("shards.json", f"expected {shape}")
        for s, shard in enumerate(shards):
            if not isinstance(shard, list) or len(shard) != n_slices or not all(isinstance(p, list) for p in shard):
                raise self._corrupt("shards.json", f"shard {s} is not {n_slices} lists of indices ({shape})")
        flat = [i for shard in shards for part in shard for i in part]
        bad = [i for i in flat if not _is_int(i)]
        if bad:
            raise self._corrupt("shards.json", f"index {_shown(bad[0])} is not an integer")
        bad = [i for i in flat if not 0 <= i < n]
        if bad:
            raise self._corrupt("shards.json", f"index {bad[0]} is out of range for the {n} training samples")
        if len(set(flat)) != len(flat):
            seen, dup = set(), None
            for i in flat:
                if i in seen:
                    dup = i
                    break
                seen.add(i)
            raise self._corrupt("shards.json", f"index {dup} is in two slices")
        return shards

    def models(self) -> dict | None:
        """``models.json`` (written for readers of the store; the ensemble itself follows the ledger), checked."""
        if not (self.path / "models.json").exists():
            return None
        models = self._read_json("models.json")
        ok = (
            isinstance(models, dict)
            and _is_int(models.get("version"))
            and _is_int(models.get("deleted"))
            and isinstance(models.get("shards"), list)
            and all(isinstance(s, dict) and isinstance(s.get("checkpoint"), str) for s in models["shards"])
        )
        if not ok:
            raise self._corrupt(
                "models.json",
                "expected {version, deleted, shards: [{shard, checkpoint, samples}]}; delete it to "
                "have the next command rewrite it from the ledger",
            )
        return models

    def initialise(self, manifest: dict, shards: list) -> None:
        """Create the store (an empty or missing directory) or check that an existing one matches ``manifest``."""
        if self.exists():
            self.check(manifest)
            if self.shards(self.manifest()) != shards:
                raise StoreError(f"{self.path} holds another shard map; use a new --store directory")
            return
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.path} exists and is not a directory")
        if self.path.is_dir() and any(p.name != "lock" for p in self.path.iterdir()):
            raise StoreError(f"{self.path} is not empty and is not a SISA store; use a new --store directory")
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "shards.json", strict_json(shards, "shards.json").encode())
        _write_atomic(self.manifest_path, _json_bytes(manifest))  # last: its presence marks a store

    def check(self, expected: dict) -> None:
        """Refuse a store made from other data or with another configuration, naming the first difference."""
        found = self.manifest()
        for key in IDENTITY_KEYS:
            if found.get(key) != expected.get(key):
                what = "dataset" if key == "dataset_fingerprint" else key
                raise StoreError(
                    f"{self.path} was made with another {what} ({found.get('dataset')!r}: {key}="
                    f"{json.dumps(found.get(key))[:80]}, here {json.dumps(expected.get(key))[:80]}); "
                    "use a new --store directory"
                )

    def config_fingerprint(self) -> str:
        manifest = self.manifest()
        identity = {k: manifest.get(k) for k in IDENTITY_KEYS}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------------ lock

    def _check_lockable(self) -> None:
        """Refuse, before creating anything, a path that is a file or a non-empty directory that is not a store: the
        lock file is only ever made in a store, or in the empty (or missing) directory ``train`` makes into one."""
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.path} exists and is not a directory")
        if self.path.is_dir() and not self.exists() and any(p.name != "lock" for p in self.path.iterdir()):
            raise StoreError(f"{self.path} is not empty and is not a SISA store; use a new --store directory")

    @contextlib.contextmanager
    def locked(self, enabled: bool = True) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``DIR/lock`` (re-entrant within this object); other processes wait."""
        if not enabled:
            yield
            return
        if self._lock_depth == 0:
            self._check_lockable()
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path / "lock", "a+")
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None

    # ------------------------------------------------------------------------------------------------ checkpoints

    def checkpoint_key(self, fingerprint: str, shard: int, slice_id: int, surviving: list[list[int]]) -> str:
        content = json.dumps([fingerprint, shard, slice_id, surviving], separators=(",", ":"))
        return hashlib.sha256(content.encode()).hexdigest()[:32]

    def checkpoint_path(self, key: str) -> Path:
        return self.path / "checkpoints" / f"{key}.safetensors"

    def has_checkpoint(self, key: str) -> bool:
        path = self.checkpoint_path(key)
        if path.exists() and not path.is_file():
            raise StoreError(f"{path} is corrupt: a directory, not a checkpoint file")
        return path.is_file()

    def save_checkpoint(self, key: str, state: dict[str, torch.Tensor]) -> None:

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        _write_atomic(self.checkpoint_path(key), save(tensors))

    def load_checkpoint(self, key: str) -> dict[str, torch.Tensor]:

        path = self.checkpoint_path(key)
        if not path.is_file():
            raise StoreError(f"{self.path} is incomplete: checkpoint {path.name} is missing")
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
            detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise StoreError(f"{path} is corrupt: not a readable safetensors checkpoint ({detail})") from None

    def write_models(self, models: dict) -> None:
        _write_atomic(self.path / "models.json", _json_bytes(models))

    # ------------------------------------------------------------------------------------------------ ledger

    def ledger(self, num_samples: int | None = None) -> list[dict]:
        """The ledger's records, validated (fields, types, request ids, indices in ``0..num_samples-1``, by default
        the manifest's); a corrupt or truncated line is an error naming it (never repaired)."""
        if not self.ledger_path.exists():
            return []
        if num_samples is None and self.exists():
            num_samples = self.manifest()["num_samples"]
        try:
            text = self.ledger_path.read_bytes().decode()
        except IsADirectoryError:
            raise StoreError(f"{self.ledger_path} is corrupt: a directory, not the ledger file") from None
        except UnicodeDecodeError as exc:
            line = self.ledger_path.read_bytes()[: exc.start].count(b"\n") + 1
            raise StoreError(
                f"{self.ledger_path}: line {line} is corrupt (not UTF-8 text); the ledger is never rewritten: restore "
                "it from a backup"
            ) from None
        lines = text.split("\n")
        records, pending, done, deleted = [], set(), set(), set()
        for number, line in enumerate(lines, start=1):
            if number == len(lines):
                if line:
                    raise StoreError(f"{self.ledger_path}: line {number} is truncated; the ledger is never rewritten")
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            problem = self._record_problem(record, num_samples, pending, done, deleted)
            if problem:
                raise StoreError(
                    f"{self.ledger_path}: line {number} is corrupt ({problem}); the ledger is never rewritten: "
                    "restore it from a backup"
                )
            records.append(record)
        return records

    @staticmethod
    def _record_problem(record, n: int | None, pending: set, done: set, deleted: set) -> str | None:
        """What is wrong with one ledger record given the records before it (their pending and done request ids and
        deleted indices, updated here), or None."""
        if not isinstance(record, dict) or record.get("status") not in _STATUSES:
            return "not a ledger record"
        status = record["status"]
        for key, kind in _LEDGER_FIELDS[status].items():
            if key not in record:
                return f"{status} record without {key!r}"
            problem = _type_problem(record[key], kind)
            if problem:
                return f"{key!r} {problem}, got {_shown(record[key])}"
        request = record["request_id"]
        if status == "done":
            if request not in pending:
                return f"'done' for request {request}, which is not a pending request before it"
            if request in done:
                return f"request {request} is done twice"
            done.add(request)
            return None
        if request in pending:
            return f"request_id {request} is used twice"
        for key in ("indices", "new_indices", "already_deleted"):
            values = record[key]
            bad = [i for i in values if i < 0 or (n is not None and i >= n)]
            if bad:
                valid = f"0..{n - 1}" if n is not None else ">= 0"
                return f"{key!r} holds index {bad[0]}, out of range for the training samples (valid: {valid})"
            if len(set(values)) != len(values):
                return f"{key!r} holds an index twice"
        if status == "noop" and record["new_indices"]:
            return "a no-op record with new_indices"
        if not set(record["new_indices"]) | set(record["already_deleted"]) == set(record["indices"]):
            return "new_indices and already_deleted do not add up to indices"
        again = deleted & set(record["new_indices"])
        if again:
            return f"'new_indices' holds {min(again)}, deleted by an earlier request"
        unknown = set(record["already_deleted"]) - deleted
        if unknown:
            return f"'already_deleted' holds {min(unknown)}, which no earlier request deleted"
        if status == "pending":
            pending.add(request)
            deleted |= set(record["new_indices"])
        else:
            pending.add(request)  # a no-op's id is taken too (but is never 'done')
            done.add(request)
        return None

    def append_ledger(self, record: dict) -> None:
        """Append one record as one line and fsync it before returning."""
        record = {**record, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = (strict_json(record, "a ledger record", separators=(",", ":")) + "\n").encode()
        fd = os.open(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: a kill cannot leave half of it
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def deleted(records: list[dict]) -> set[int]:
        return {i for r in records if r["status"] == "pending" for i in r["new_indices"]}

    @staticmethod
    def unfinished(records: list[dict]) -> list[dict]:
        done = {r["request_id"] for r in records if r["status"] == "done"}
        return [r for r in records if r["status"] == "pending" and r["request_id"] not in done]
