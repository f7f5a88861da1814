"""Concept erasure for Stable Diffusion: the driver that runs a method and writes what it erased.

    record = erase("tiny-sd", "fmn", ["seven"], output_dir="out/fmn-seven")   # any SD directory or hub id
    pipe = load_erased("out/fmn-seven")                                         # the erased pipeline

The data flow is ``load pipeline -> ErasureRequest -> method(request, config) -> artifact + erasure.json``:

- :func:`erase` loads the pipeline, validates the concepts against its tokenizer, builds an
  :class:`~concept_erase.diffusion.base.ErasureRequest` and calls the registered method (``fmn``, ``salun``, ``esd``:
  see :mod:`concept_erase.diffusion.methods`), which trains the UNet in place through the shared trainer and returns
  an :class:`~concept_erase.diffusion.base.ErasureOutcome`.
- The artifact is the smallest thing that reproduces the erased model: a diffusers LoRA
  (``pytorch_lora_weights.safetensors``, ``pipe.load_lora_weights``), a weights file holding only the trained
  parameters (``erasure.safetensors``) when they are at most :data:`ADAPTER_MAX_FRACTION` of the UNet, or else a full
  pipeline directory. ``erasure.json`` records the method, concepts, resolved config and where each key came from
  (the user, the model's presets, its family's or the method's defaults), base model, trained parameter names, mask
  statistics, steps, losses, wall time, peak memory and the artifact's size.
- ``requests.json``, the request log beside every artifact: one entry per request (concepts, method, config, UTC
  time, the artifact's path, SHA-256 and size, whether it was a no-op). ``model`` may itself be an erasure output
  directory: the request is applied on top of that erasure (its log checked against its artifact first; a LoRA is
  fused into the UNet), the new artifact is written relative to the ORIGINAL base model, ``concepts`` lists every
  concept erased so far and the log carries the previous entries plus this one. A request whose concepts are all
  erased already is a no-op: nothing is edited, the previous artifact is copied unchanged and the log records it.
  :mod:`concept_erase.diffusion.sequential` applies a list of requests one after another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict

from concept_erase.core.config import config_to_dict
from concept_erase.core.digits import CONCEPTS
from concept_erase.core.errors import ConfigError, InputNotFoundError
from concept_erase.core.io import (
    RunRecorder,
    check_output_dir,
    config_paths,
    output_target,
    peak_memory_bytes,
    write_json,
)
from concept_erase.core.readers import read_json, read_json_object, require
from concept_erase.core.registry import get_method
from concept_erase.core.tensorfile import tensor_digests
from concept_erase.diffusion.base import (
    GENERIC_RETAIN,
    GENERIC_TEMPLATES,
    ErasureConfig,
    ErasureOutcome,
    ErasureRequest,
)
from concept_erase.diffusion.loading import (
    WEIGHTS_FILE,
    apply_adapter,
    check_concept_tokens,
    check_model,
    load_pipeline,
    looks_like_hub_id,
    save_lora_adapter,
    save_weights_adapter,
)
from concept_erase.diffusion.presets import Settings, resolve_settings
from concept_erase.diffusion.tiny_sd import (
    ASSETS,
    DEFAULT_MODEL,
    TRAIN_TEMPLATES,
    read_recipe,
    resolve_model,
    save_pipeline,
)

__all__ = [
    "ADAPTER_MAX_FRACTION",
    "ERASURE_FILE",
    "REQUEST_LOG",
    "RequestLogError",
    "check_request_log",
    "erase",
    "erasure_base",
    "erasure_inputs",
    "load_erased",
    "read_erasure",
    "resolve_erasure",
]

ERASURE_FILE = "erasure.json"
_ARTIFACT_FORMATS = ("lora", "weights", "pipeline")
ADAPTER_MAX_FRACTION = 0.10  # an adapter is at most this fraction of the UNet's bytes; otherwise a full pipeline
REQUEST_LOG = "requests.json"
HASH_ON_LOAD_MAX_BYTES = 1 << 30  # loading checks the artifact's SHA-256 up to this size (its byte count always)


class RequestLogError(ConfigError):
    """A request log that does not match the erasure it sits beside (or is damaged)."""


# ---------------------------------------------------------------------------------------------------- erase


def _check_concepts(concepts: list[str] | tuple[str, ...] | None, pipe) -> list[str]:

    cleaned = _clean_concepts(concepts)
    for concept in cleaned:
        check_concept_tokens(pipe, concept)  # every tokenizer the pipeline has (SDXL: two)
    return cleaned


def _check_precision(mixed_precision: str, device: torch.device) -> None:
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "mixed_precision fp16 needs a CUDA GPU (no GPU was found); on CPU use mixed_precision bf16 or no"
        )
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision bf16 is not supported by this GPU; use fp16 or no")


def _recorded_model(model: str | Path) -> str:
    """How erasure.json names the base model: a shipped asset's name, an absolute local path or a hub id."""

    path = Path(model)
    if looks_like_hub_id(model):
        return str(model)
    path = path.resolve()
    if path.parent == ASSETS.resolve():
        return path.name
    return str(path)


def _defaults_for(model: str | Path, concepts: list[str], config: ErasureConfig) -> tuple[list[str], list[str]]:
    """Training templates and retain concepts: the config's, else the tiny model's, else generic ones (``concepts``:
    every concept erased so far, none of which is retained)."""

    recipe = read_recipe(model) if Path(model).is_dir() else None
    templates = list(config.templates or (TRAIN_TEMPLATES if recipe is not None else GENERIC_TEMPLATES))
    if config.retain_concepts is not None:
        retain = list(config.retain_concepts)
    elif recipe is not None:
        retain = [c for c in CONCEPTS if c not in concepts and c not in recipe.exclude_concepts]
    else:
        retain = [c for c in GENERIC_RETAIN if c not in concepts]
    return templates, retain


@dataclasses.dataclass
class _Previous:
    """An erasure output directory given as the model of a new request: its record, checked log and base model."""

    path: Path
    record: dict[str, Any]
    log: list[dict[str, Any]]
    base: str | Path  # the original base model, resolved

    @property
    def format(self) -> str:
        return self.record["artifact"]["format"]

    def erased_by(self, concept: str) -> int | None:
        """The log index of the request that erased ``concept`` (None: not erased)."""
        return next((e["index"] for e in self.log if concept in e.get("erased", e["concepts"])), None)

    def reference(self, output_dir: str | Path | None) -> dict[str, Any]:
        """How the new record names this one: its path (relative to the new output when they are siblings, so a
        sequence stays valid after its atomic rename), the last log index and the artifact's hash."""
        last = self.log[-1]
        path = self.path.resolve()
        if output_dir is not None and Path(output_dir).absolute().parent.resolve() == path.parent:
            shown = os.path.join("..", path.name)
        else:
            shown = str(path)
        return {
            "path": shown,
            "index": last["index"],
            "concepts": list(self.record["concepts"]),
            "artifact_sha256": last["artifact"]["sha256"],
        }


def erasure_base(model: str | Path | None) -> str | Path:
    """The base model a request on ``model`` uses for its presets and family: the original base of an erasure
    output directory, else ``model`` itself (None: the embedded tiny SD), resolved."""
    resolved = resolve_model(model or DEFAULT_MODEL)
    record = read_erasure(resolved) if Path(resolved).is_dir() else None
    return resolve_model(record["base_model"]) if record is not None else resolved


def _previous_erasure(model: str | Path | None) -> _Previous | None:
    """The erasure output directory ``model`` names, its log checked against its artifact (hash included); None for
    a plain model. A directory written before request logs existed gets its one entry reconstructed."""
    if model is None or not Path(resolve_model(model)).is_dir():
        return None
    path = Path(resolve_model(model))
    record = read_erasure(path)
    if record is None:
        return None
    log = check_request_log(path, record, full_hash=True)
    if log is None:
        log = [
            _log_entry(
                1,
                record["concepts"],
                record["concepts"],
                record["method"],
                record.get("config", {}),
                record["base_model"],
                _artifact_entry(path, record),
                False,
                f"reconstructed from {ERASURE_FILE}: the directory had no {REQUEST_LOG}",
            )
        ]
    return _Previous(path, record, log, resolve_model(record["base_model"]))


def _clean_concepts(concepts: list[str] | tuple[str, ...] | str | None) -> list[str]:
    if isinstance(concepts, str):
        concepts = [concepts]
    cleaned = []
    for concept in concepts or []:
        if not isinstance(concept, str):
            raise ConfigError(f"concepts must be strings, got {type(concept).__name__} {concept!r}")
        text = " ".join(concept.split())
        if text and text not in cleaned:
            cleaned.append(text)
    if not cleaned:
        raise ConfigError("the concept list is empty: name at least one concept to erase (e.g. --concept seven)")
    return cleaned


def erase(
    model: str | Path | None,
    method: str,
    concepts: list[str] | str,
    config: ErasureConfig | dict | Settings | None = None,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    atomic: bool = True,
    presets: bool = True,
) -> dict[str, Any]:
    """Erase ``concepts`` from ``model`` (a pipeline directory, hub id or shipped asset name; None: the embedded tiny
    model; or an erasure output directory: the request goes on top of that erasure) with the registered diffusion
    ``method``; write the artifact, ``erasure.json`` and the request log ``requests.json`` to ``output_dir``
    (atomically; ``atomic=False`` writes into an existing directory its owner already made atomic). Returns the
    erasure record. ``config`` keys override the model's presets (``presets=False``: the method's defaults only; see
    :mod:`concept_erase.diffusion.presets`; a :class:`~concept_erase.diffusion.presets.Settings` that
    ``resolve_settings`` already made for this method and model is used as it is). Everything is validated before
    any work starts."""

    entry = get_method(method, tag="diffusion")
    previous = _previous_erasure(model)  # an erasure directory: its request log checked against its artifact
    base = previous.base if previous is not None else resolve_model(model or DEFAULT_MODEL)
    if isinstance(config, Settings) and config.method == entry.name:
        settings = config
    else:
        settings = resolve_settings(entry, base, config, presets)
    config = settings.config
    inputs = [previous.path if previous else None, base, *config_paths(config_to_dict(config))]
    if output_dir is not None and atomic:
        check_output_dir(output_dir, overwrite, inputs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check_precision(config.mixed_precision, device)
    config.check_family(check_model(base).name)  # a setting the family cannot honour: refused before loading
    requested = _clean_concepts(concepts)
    erased_before = list(previous.record["concepts"]) if previous else []
    new = [c for c in requested if c not in erased_before]
    if previous is not None and not new:
        return _noop(previous, entry.name, requested, config, output_dir, overwrite, inputs, atomic)
    pipe, reference = _load_for_request(base, previous, device)
    concepts = _check_concepts(new, pipe)
    templates, retain = _defaults_for(base, erased_before + concepts, config)
    request = ErasureRequest(pipe, concepts, _recorded_model(base), retain, templates, device)
    with RunRecorder("erase", config, seed=config.seed, method=entry.name, concepts=concepts) as recorder:
        start = time.perf_counter()
        outcome = entry.target(request, config)
        seconds = time.perf_counter() - start
    summary = _training_summary(outcome, pipe.unet, reference)
    if previous is not None and outcome.lora:  # the artifact is relative to the original base: fuse the new LoRA
        pipe.unet.fuse_lora()
        pipe.unet.unload_lora()
        outcome = dataclasses.replace(outcome, lora=False)
        summary["changed_parameters"] = _changed(pipe.unet, reference)
    skipped = [c for c in requested if c in erased_before]
    record = {
        "method": entry.name,
        "concepts": erased_before + concepts,  # every concept erased so far: what evaluate scores as forgotten
        "request": requested,
        "erased": concepts,
        "noop": False,
        "base_model": request.model,
        "retain_concepts": retain,
        "templates": templates,
        "config": config_to_dict(config),
        "config_sources": settings.sources,
        "presets": settings.record(),
        "seed": config.seed,
        **summary,
        "mask": outcome.mask,
        "details": outcome.details,
        "seconds": round(seconds, 3),
        "peak_memory": peak_memory_bytes(),
        "device": str(device),
        "versions": recorder.record["versions"],
    }
    note = f"already erased, skipped: {', '.join(skipped)}" if skipped else ""
    if previous is not None:
        record["previous"] = previous.reference(output_dir)
    if output_dir is not None:
        with output_target(output_dir, overwrite, inputs, atomic) as tmp:
            record["artifact"] = _write_artifact(tmp, pipe, outcome, record, config.output_format)
            write_json(tmp / ERASURE_FILE, record)
            log = previous.log if previous is not None else []
            own = _log_entry(
                len(log) + 1,
                requested,
                concepts,
                entry.name,
                record["config"],
                request.model,
                _artifact_entry(tmp, record),
                False,
                note,
            )
            write_json(tmp / REQUEST_LOG, [*log, own])
    return record


def _load_for_request(base: str | Path, previous: _Previous | None, device: torch.device):
    """The pipeline a request edits (the base, or the previous erasure applied to it, a LoRA fused into plain UNet
    weights so that any method trains ordinary parameters) and the digests of the ORIGINAL base's UNet, against
    which the artifact is written."""
    pipe = load_pipeline(base, device=str(device))
    reference = tensor_digests(pipe.unet)  # what changed, found without a second copy of the UNet
    if previous is None:
        return pipe, reference
    if previous.format == "pipeline":
        del pipe
        return load_pipeline(previous.path, device=str(device)), reference
    apply_adapter(pipe, previous.path)
    if previous.format == "lora":
        pipe.unload_lora_weights()  # after fuse_lora: the fused weights stay, the LoRA layers go
    return pipe, reference


def _noop(previous: _Previous, method: str, requested: list[str], config, output_dir, overwrite, inputs, atomic):
    """Every requested concept is erased already: no edit; the previous artifact is copied unchanged and the log
    gains a ``noop`` entry."""
    where = ", ".join(f"{c} by request {previous.erased_by(c)}" for c in requested)
    note = f"already erased ({where}): nothing edited, the previous artifact copied unchanged"
    record = {**previous.record, "request": requested, "erased": [], "noop": True, "note": note, "seconds": 0.0}
    record["previous"] = previous.reference(output_dir)
    if output_dir is not None:
        with output_target(output_dir, overwrite, inputs, atomic) as tmp:
            _copy_artifact(previous.path, tmp, previous.record)
            write_json(tmp / ERASURE_FILE, record)
            own = _log_entry(
                len(previous.log) + 1,
                requested,
                [],
                method,
                config_to_dict(config),
                record["base_model"],
                _artifact_entry(tmp, record),
                True,
                note,
            )
            write_json(tmp / REQUEST_LOG, [*previous.log, own])
    return record


def _copy_artifact(source: Path, out: Path, record: dict) -> None:
    if record["artifact"]["format"] != "pipeline":
        shutil.copy2(source / record["artifact"]["path"], out / record["artifact"]["path"])
        return
    for item in source.iterdir():  # a full pipeline: every component, not the records
        if item.name in (ERASURE_FILE, REQUEST_LOG, "run.json"):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)


# ---------------------------------------------------------------------------------------------------- request log


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _artifact_file(record: dict) -> str:
    """The artifact's file, relative to its directory (a full pipeline: its UNet weights, what methods change)."""
    artifact = record["artifact"]
    if artifact["format"] != "pipeline":
        return artifact["path"]
    return artifact.get("file") or "unet/diffusion_pytorch_model.safetensors"


def _artifact_entry(directory: Path, record: dict) -> dict[str, Any]:
    file = Path(directory) / _artifact_file(record)
    if not file.is_file():
        raise RequestLogError(f"erasure {directory}: its artifact {file.name} is missing")
    return {"path": _artifact_file(record), "sha256": _sha256(file), "bytes": file.stat().st_size}


def _log_entry(index, concepts, erased, method, config, base, artifact, noop, note) -> dict[str, Any]:
    return {
        "index": index,
        "concepts": list(concepts),
        "erased": list(erased),
        "method": method,
        "config": config,
        "base_model": base,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifact": artifact,
        "noop": noop,
        "note": note,
    }


def _read_log(file: Path) -> list[dict[str, Any]]:
    what = "request log"
    entries = read_json(file, what, RequestLogError)
    if not isinstance(entries, list) or not entries:
        raise RequestLogError(f"{what} {file} is corrupt: expected a non-empty JSON list of request entries")
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise RequestLogError(f"{what} {file} is corrupt: entry {number} is not an object")
        for key, types in (("index", int), ("concepts", list), ("method", str), ("artifact", dict), ("noop", bool)):
            require(entry, key, types, file, f"{what} entry {number} of", RequestLogError)
        if entry["index"] != number:
            raise RequestLogError(f"{what} {file} is corrupt: entry {number} has index {entry['index']}")
        for key, types in (("path", str), ("sha256", str), ("bytes", int)):
            require(entry["artifact"], key, types, file, f"{what} entry {number} artifact of", RequestLogError)
    return entries


def check_request_log(
    path: str | Path, record: dict[str, Any] | None = None, full_hash: bool = True
) -> list[dict[str, Any]] | None:
    """The request log beside the erasure in ``path``, checked against it: the same base model, the same erased
    concepts, the last entry naming the artifact on disk with its size and (``full_hash``) SHA-256. A mismatch is
    a one-line :class:`RequestLogError` naming the file, what the log expects and what was found. None for a
    directory written before request logs existed (its ``erasure.json`` names no request)."""
    path = Path(path)
    record = record if record is not None else read_erasure(path)
    if record is None:
        raise InputNotFoundError(f"{path} is not an erasure output directory: it has no {ERASURE_FILE}")
    file = path / REQUEST_LOG
    if not file.exists():
        if "request" in record or "previous" in record:
            raise RequestLogError(f"request log {file} is missing: the erasure beside it was written with one")
        return None
    entries = _read_log(file)
    mismatch = f"request log {file} does not match the model beside it"
    for entry in entries:
        if entry.get("base_model", record["base_model"]) != record["base_model"]:
            raise RequestLogError(
                f"{mismatch}: request {entry['index']} was applied to base {entry['base_model']}, "
                f"{ERASURE_FILE} names base {record['base_model']}"
            )
    erased = list(dict.fromkeys(c for e in entries for c in e.get("erased", e["concepts"])))
    if sorted(erased) != sorted(record["concepts"]):
        raise RequestLogError(
            f"{mismatch}: the log erased {', '.join(erased) or 'nothing'}, {ERASURE_FILE} names "
            f"{', '.join(record['concepts'])}"
        )
    expected, name = entries[-1]["artifact"], _artifact_file(record)
    artifact = path / name
    if expected["path"] != name:
        raise RequestLogError(
            f"{mismatch}: its last entry names the artifact {expected['path']}, the model's is {name}"
        )
    if not artifact.is_file():
        raise RequestLogError(f"{mismatch}: the artifact {artifact} it names is missing")
    size = artifact.stat().st_size
    if size != expected["bytes"]:
        raise RequestLogError(
            f"{mismatch}: {artifact} has {size} bytes, the log's last entry expects {expected['bytes']}"
        )
    if full_hash:
        found = _sha256(artifact)
        if found != expected["sha256"]:
            raise RequestLogError(
                f"{mismatch}: {artifact} has sha256 {found}, the log's last entry expects {expected['sha256']}"
            )
    return entries


def _training_summary(outcome: ErasureOutcome, unet, reference: dict[str, str]) -> dict[str, Any]:
    result = outcome.train_result
    trained = set(result.trained_parameters)
    changed = _changed(unet, reference)
    losses = list(result.losses)
    return {
        "trained_parameters": list(result.trained_parameters),
        "trained_parameter_count": int(sum(p.numel() for n, p in unet.named_parameters() if n in trained)),
        "changed_parameters": changed,
        "steps": result.global_step,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses": losses,
        "train_seconds": round(result.seconds, 3),
    }


def _changed(unet, reference: dict[str, str]) -> list[str]:
    after = tensor_digests(unet)
    return [n for n in after if n in reference and after[n] != reference[n]]


def _unet_bytes(unet) -> int:
    return sum(p.numel() * p.element_size() for n, p in unet.named_parameters() if "lora_" not in n)


def _write_artifact(out: Path, pipe, outcome: ErasureOutcome, record: dict, output_format: str) -> dict[str, Any]:
    """A LoRA, a weights adapter of the changed parameters, or the full pipeline, whichever the format asks for."""

    unet_bytes = _unet_bytes(pipe.unet)
    changed = set(record["changed_parameters"])
    if outcome.lora:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
        return _describe(save_lora_adapter(pipe, out, layers, method=record["method"]), "lora", unet_bytes)
    tensors = {f"unet.{n}": p.detach() for n, p in pipe.unet.named_parameters() if n in changed}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    small = size <= ADAPTER_MAX_FRACTION * unet_bytes
    if output_format == "adapter" or (output_format == "auto" and small):
        made_for = {"method": record["method"], "pipeline_class": type(pipe).__name__}  # checked by apply_adapter
        save_weights_adapter(out / WEIGHTS_FILE, tensors, mode="replace", **made_for)
        return _describe(out / WEIGHTS_FILE, "weights", unet_bytes)
    save_pipeline(pipe, out)
    files = [p for p in (out / "unet").iterdir() if p.suffix == ".safetensors"]
    info = _describe(files[0], "pipeline", unet_bytes)
    info["path"], info["file"] = ".", f"unet/{files[0].name}"
    return info


def _describe(file: Path, kind: str, unet_bytes: int) -> dict[str, Any]:
    size = file.stat().st_size
    return {"format": kind, "path": file.name, "bytes": size, "fraction_of_unet": round(size / unet_bytes, 4)}


# ---------------------------------------------------------------------------------------------------- loading back


def read_erasure(path: str | Path) -> dict[str, Any] | None:
    """The ``erasure.json`` record of an erasure output directory, or None if ``path`` is not one."""

    file = Path(path) / ERASURE_FILE
    if not file.exists():
        return None
    what = "erasure record"
    record = read_json_object(file, what)
    require(record, "method", str, file, what)
    concepts = require(record, "concepts", list, file, what)
    if not concepts or not all(isinstance(c, str) for c in concepts):
        raise ConfigError(f"{what} {file} is corrupt: the field 'concepts' must be a non-empty list of strings")
    require(record, "base_model", str, file, what)
    artifact = require(record, "artifact", dict, file, what)
    if artifact.get("format") not in _ARTIFACT_FORMATS:
        raise ConfigError(
            f"{what} {file} is corrupt: artifact.format must be one of {', '.join(_ARTIFACT_FORMATS)}, "
            f"got {artifact.get('format')!r}"
        )
    optional = ("seconds", float), ("steps", int), ("peak_memory", dict), ("config", dict), ("config_sources", dict)
    for key, types in optional:
        require(record, key, types, file, what, optional=True)
    return record


def erasure_inputs(model: str | Path | None) -> list[str | Path | None]:
    """The paths reading ``model`` reads: itself and, for an erasure output directory, the base model it records."""
    record = read_erasure(model) if model is not None and Path(model).is_dir() else None
    base = record.get("base_model") if isinstance(record, dict) else None
    return [model, resolve_model(base) if isinstance(base, str) else None]


def resolve_erasure(path: str | Path) -> tuple[str | Path, str | Path | None, str | Path]:
    """``(model, adapter, original)`` for an erasure output directory: a full pipeline is itself the model; an
    adapter is applied to the base model recorded in ``erasure.json``. Its request log is checked against the
    artifact first (size always, SHA-256 up to :data:`HASH_ON_LOAD_MAX_BYTES`): a mismatch is refused."""

    record = read_erasure(path)
    if record is None:
        raise InputNotFoundError(f"{path} is not an erasure output directory: it has no {ERASURE_FILE}")
    size = record.get("artifact", {}).get("bytes")
    check_request_log(path, record, full_hash=not isinstance(size, int) or size <= HASH_ON_LOAD_MAX_BYTES)
    base = resolve_model(record["base_model"])
    if record.get("artifact", {}).get("format") == "pipeline":
        return Path(path), None, base
    return base, Path(path), base


def load_erased(path: str | Path, device: str | None = None):
    """The erased pipeline of an erasure output directory (adapter applied to its base model, or the full pipeline)."""

    model, adapter, _ = resolve_erasure(path)
    pipe = load_pipeline(model, device=device)
    if adapter is not None:
        apply_adapter(pipe, adapter)
    return pipe
