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
"""

from __future__ import annotations

import time
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
from concept_erase.core.readers import read_json_object, require
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
    "erase",
    "erasure_inputs",
    "load_erased",
    "read_erasure",
    "resolve_erasure",
]

ERASURE_FILE = "erasure.json"
_ARTIFACT_FORMATS = ("lora", "weights", "pipeline")
ADAPTER_MAX_FRACTION = 0.10  # an adapter is at most this fraction of the UNet's bytes; otherwise a full pipeline

# ---------------------------------------------------------------------------------------------------- erase


def _check_concepts(concepts: list[str] | tuple[str, ...] | None, pipe) -> list[str]:

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
    """Training templates and retain concepts: the config's, else the tiny model's, else generic ones."""

    recipe = read_recipe(model) if Path(model).is_dir() else None
    templates = list(config.templates or (TRAIN_TEMPLATES if recipe is not None else GENERIC_TEMPLATES))
    if config.retain_concepts is not None:
        retain = list(config.retain_concepts)
    elif recipe is not None:
        retain = [c for c in CONCEPTS if c not in concepts and c not in recipe.exclude_concepts]
    else:
        retain = list(GENERIC_RETAIN)
    return templates, retain


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
    model) with the registered diffusion ``method``; write the artifact and ``erasure.json`` to ``output_dir``
    (atomically; ``atomic=False`` writes into an existing directory its owner already made atomic). Returns the
    erasure record. ``config`` keys override the model's presets (``presets=False``: the method's defaults only; see
    :mod:`concept_erase.diffusion.presets`; a :class:`~concept_erase.diffusion.presets.Settings` that
    ``resolve_settings`` already made for this method and model is used as it is). Everything is validated before
    any work starts."""

    entry = get_method(method, tag="diffusion")
    if isinstance(config, Settings) and config.method == entry.name:
        settings = config
    else:
        settings = resolve_settings(entry, resolve_model(model or DEFAULT_MODEL), config, presets)
    config = settings.config
    inputs = [resolve_model(model or DEFAULT_MODEL), *config_paths(config_to_dict(config))]
    if output_dir is not None and atomic:
        check_output_dir(output_dir, overwrite, inputs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check_precision(config.mixed_precision, device)
    model = resolve_model(model or DEFAULT_MODEL)
    config.check_family(check_model(model).name)  # a setting the family cannot honour: refused before loading
    pipe = load_pipeline(model, device=str(device))
    concepts = _check_concepts(concepts, pipe)
    templates, retain = _defaults_for(model, concepts, config)
    request = ErasureRequest(pipe, concepts, _recorded_model(model), retain, templates, device)
    reference = tensor_digests(pipe.unet)  # what changed, found without a second copy of the UNet
    with RunRecorder("erase", config, seed=config.seed, method=entry.name, concepts=concepts) as recorder:
        start = time.perf_counter()
        outcome = entry.target(request, config)
        seconds = time.perf_counter() - start
    record = {
        "method": entry.name,
        "concepts": concepts,
        "base_model": request.model,
        "retain_concepts": retain,
        "templates": templates,
        "config": config_to_dict(config),
        "config_sources": settings.sources,
        "presets": settings.record(),
        "seed": config.seed,
        **_training_summary(outcome, pipe.unet, reference),
        "mask": outcome.mask,
        "details": outcome.details,
        "seconds": round(seconds, 3),
        "peak_memory": peak_memory_bytes(),
        "device": str(device),
        "versions": recorder.record["versions"],
    }
    if output_dir is not None:
        with output_target(output_dir, overwrite, inputs, atomic) as tmp:
            record["artifact"] = _write_artifact(tmp, pipe, outcome, record, config.output_format)
            write_json(tmp / ERASURE_FILE, record)
    return record


def _training_summary(outcome: ErasureOutcome, unet, reference: dict[str, str]) -> dict[str, Any]:
    result = outcome.train_result
    trained = set(result.trained_parameters)
    after = tensor_digests(unet)
    changed = [n for n in after if n in reference and after[n] != reference[n]]
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
    info["path"] = "."
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
    adapter is applied to the base model recorded in ``erasure.json``."""

    record = read_erasure(path)
    if record is None:
        raise InputNotFoundError(f"{path} is not an erasure output directory: it has no {ERASURE_FILE}")
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
