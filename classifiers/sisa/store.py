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

from concept_erase.core.config import config_to_dict
from concept_erase.core.errors import InputNotFoundError, StoreError

__all__ = ["FORMAT_VERSION", "IDENTITY_KEYS", "SISAStore", "build_manifest", "fingerprint_tensors"]

FORMAT_VERSION = 1
# manifest keys that must match when a store is opened again for the same data and configuration
IDENTITY_KEYS = ("dataset_fingerprint", "model", "recipe", "n_shards", "n_slices", "strategy", "seed", "format")
_STATUSES = ("pending", "done", "noop")


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
    return (json.dumps(data, indent=1) + "\n").encode()


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
        if not self.path.is_dir():
            raise InputNotFoundError(f"SISA store not found: {self.path}")
        if not self.exists():
            raise StoreError(f"{self.path} is not a SISA store (no manifest.json); create one with `sisa train`")

    def _read_json(self, name: str):
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            raise StoreError(f"{self.path} is incomplete: {name} is missing") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.path / name} is corrupt: {exc}") from None

    def manifest(self) -> dict:
        self.require()
        return self._read_json("manifest.json")

    def shards(self) -> list[list[list[int]]]:
        return self._read_json("shards.json")

    def models(self) -> dict | None:
        return self._read_json("models.json") if (self.path / "models.json").is_file() else None

    def initialise(self, manifest: dict, shards: list) -> None:
        """Create the store (an empty or missing directory) or check that an existing one matches ``manifest``."""
        if self.exists():
            self.check(manifest)
            if self.shards() != shards:
                raise StoreError(f"{self.path} holds another shard map; use a new --store directory")
            return
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.path} exists and is not a directory")
        if self.path.is_dir() and any(p.name != "lock" for p in self.path.iterdir()):
            raise StoreError(f"{self.path} is not empty and is not a SISA store; use a new --store directory")
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "shards.json", json.dumps(shards).encode())
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

    @contextlib.contextmanager
    def locked(self, enabled: bool = True) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``DIR/lock`` (re-entrant within this object); other processes wait."""
        if not enabled:
            yield
            return
        if self._lock_depth == 0:
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
        return self.checkpoint_path(key).is_file()

    def save_checkpoint(self, key: str, state: dict[str, torch.Tensor]) -> None:

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        _write_atomic(self.checkpoint_path(key), save(tensors))

    def load_checkpoint(self, key: str) -> dict[str, torch.Tensor]:

        path = self.checkpoint_path(key)
        if not path.is_file():
            raise StoreError(f"{self.path} is incomplete: checkpoint {path.name} is missing")
        return load_file(str(path))

    def write_models(self, models: dict) -> None:
        _write_atomic(self.path / "models.json", _json_bytes(models))

    # ------------------------------------------------------------------------------------------------ ledger

    def ledger(self) -> list[dict]:
        """The ledger's records, validated; a corrupt or truncated line is an error naming it (never repaired)."""
        if not self.ledger_path.is_file():
            return []
        text = self.ledger_path.read_text()
        lines = text.split("\n")
        records, seen = [], set()
        for number, line in enumerate(lines, start=1):
            if number == len(lines):
                if line:
                    raise StoreError(f"{self.ledger_path}: line {number} is truncated; the ledger is never rewritten")
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            ok = isinstance(record, dict) and record.get("status") in _STATUSES and "request_id" in record
            if ok and record["status"] == "done":
                ok = record["request_id"] in seen
            if not ok:
                raise StoreError(
                    f"{self.ledger_path}: line {number} is corrupt (not a ledger record); the ledger is never "
                    "rewritten: restore it from a backup"
                )
            seen.add(record["request_id"])
            records.append(record)
        return records

    def append_ledger(self, record: dict) -> None:
        """Append one record as one line and fsync it before returning."""
        record = {**record, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
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
