"""Loading Stable Diffusion pipelines, checking concepts against their tokenizers, and applying erasure adapters.

    pipe = load_pipeline("concept_erase/diffusion/assets/tiny-sd")      # or any SD 1.x/2.x/SDXL directory or hub id
    concept_token_ids(pipe.tokenizer, "seven")                 # [id]; a clear error if it cannot be represented
    check_concept_tokens(pipe, "seven")                        # the same for every tokenizer (SDXL has two)
    apply_adapter(pipe, "out/erase-seven")                     # a LoRA or a weight file, checked against the model

The pipeline class comes from the model's ``model_index.json`` (:mod:`concept_erase.diffusion.families`): an
unsupported one (SD3, Flux, ...) is refused before any weights are loaded.

An *adapter* is what an erasure produces, in one of two safetensors formats:

- diffusers LoRA (``pytorch_lora_weights.safetensors``, keys ``unet.<module>.lora_A.weight`` ...), loaded with
  ``pipe.load_lora_weights`` and fused;
- concept-erase weights (``erasure.safetensors``, keys ``<component>.<parameter>``, metadata ``mode`` =
  ``replace`` or ``delta``) for methods that change a selected set of weights directly.

Every key is checked against the model before anything is changed: an adapter made for another model fails with a
one-line error that names the first key that does not fit. Adapters the toolkit writes also record the pipeline
class they were made for (metadata ``pipeline_class``): one made for SDXL applied to an SD 1.x/2.x model, or the
reverse, is refused naming both.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from safetensors.torch import load_file

from concept_erase.core.errors import AdapterError, ConfigError, ModelLoadError
from concept_erase.core.tensorfile import save_tensors
from concept_erase.diffusion.families import (
    FAMILIES,
    Family,
    check_family,
    describe_class,
    model_family,
    model_index,
    pipeline_class,
    quiet_loading,
    tokenizers,
)

__all__ = [
    "ADAPTER_FILES",
    "REQUIRED_COMPONENTS",
    "apply_adapter",
    "check_concept_tokens",
    "check_model",
    "concept_token_ids",
    "find_adapter_file",
    "load_pipeline",
    "looks_like_hub_id",
    "pipeline_class",
    "save_lora_adapter",
    "save_weights_adapter",
]

REQUIRED_COMPONENTS = FAMILIES["sd"].components  # SD 1.x/2.x; each family lists its own (Family.components)
WEIGHTS_FILE = "erasure.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_FILES = (WEIGHTS_FILE, LORA_FILE)
WEIGHTS_FORMAT = "concept-erase/weights-v1"
# Weight files that are Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# from_pretrained options per family: no safety checker (SD), no invisible watermark (SDXL)
_LOAD_OPTIONS: dict[str, dict[str, Any]] = {
    "sd": {"safety_checker": None, "requires_safety_checker": False},
    "sdxl": {"add_watermarker": False},
}


# ---------------------------------------------------------------------------------------------------- pipelines


def _check_pipeline_dir(path: Path) -> Family:
    """The family of pipeline directory ``path`` (refused when unsupported), once its components are all there."""
    components = model_index(path, is_local=True)
    family = check_family(components.get("_class_name"), f"model {path}")
    listed = {name for name, value in components.items() if isinstance(value, list) and value and value[0] is not None}
    missing = [name for name in family.components if name not in listed or not (path / name).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{path} is missing Stable Diffusion component(s): {', '.join(missing)} "
            f"(a {family.class_name} needs {', '.join(family.components)})"
        )
    return family


@contextlib.contextmanager
def _diffusers_errors_only():

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def looks_like_hub_id(model: str | Path) -> bool:
    """``owner/name`` that is not an existing local path: ``from_pretrained`` would ask the Hub for it."""
    text = str(model)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _pickled_only_component(path: Path) -> tuple[str, str] | None:
    """``(component, file)`` of the first component of pipeline directory ``path`` whose weights are only pickles
    (``.bin``, ``.pt``, ...: no ``.safetensors`` beside them), or None."""
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        files = [f for f in sub.iterdir() if f.is_file()]
        if any(f.name.endswith(".safetensors") for f in files):
            continue
        pickles = sorted(f.name for f in files if f.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            return sub.name, pickles[0]
    return None


def check_model(model: str | Path, *, allow_pickle: bool = False) -> Family:
    """The family of ``model`` (a pipeline directory or hub id) after everything :func:`load_pipeline` checks before
    loading any weights: the directory exists, is of a supported pipeline class, has the family's components and
    (unless ``allow_pickle``) safetensors weights; a hub id's ``model_index.json`` names a supported class."""
    if looks_like_hub_id(model):
        return model_family(model, is_local=False)
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model {model} does not exist (give a diffusers pipeline directory or a hub id)")
    family = _check_pipeline_dir(path)
    pickled = None if allow_pickle else _pickled_only_component(path)
    if pickled is not None:
        component, file = pickled
        raise ModelLoadError(
            f"{path}: component {component} has only pickled weights ({file}), which can run code when loaded; "
            "convert them to safetensors (save_pretrained(..., safe_serialization=True)) or, for files you "
            "trust, load with allow_pickle=True"
        )
    return family


def load_pipeline(
    model: str | Path, torch_dtype: torch.dtype | None = None, device: str | None = None, *, allow_pickle: bool = False
):
    """The model's own pipeline class (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``, from its
    ``model_index.json``) ``.from_pretrained`` on a local directory or a hub id, with clear errors.

    Any other pipeline class is refused with a :class:`ModelLoadError` naming it and the supported ones, before any
    weights are loaded. Weights are loaded from safetensors files only (``use_safetensors=True``): a pickled weight
    file (``.bin``) can run arbitrary code when it is loaded. A model whose weights are only pickles is refused with
    a :class:`ModelLoadError` naming the component, unless ``allow_pickle=True`` (for files you trust).

    The safety checker (SD) and the invisible watermark (SDXL) are not loaded (they concern photographs, not the
    concepts we erase); the pipeline's own progress bar is disabled because callers show one over whole batches.
    """
    family = check_model(model, allow_pickle=allow_pickle)
    is_local = not looks_like_hub_id(model)
    kwargs: dict[str, Any] = dict(_LOAD_OPTIONS[family.name])
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    try:
        with quiet_loading():
            pipe = pipeline_class(family).from_pretrained(str(model), **kwargs)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        where = "directory" if is_local else "hub id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (
            ""
            if allow_pickle or "safetensors" not in first
            else " (only safetensors weights are loaded unless allow_pickle=True)"
        )
        raise ModelLoadError(f"could not load a {family.class_name} from {where} {model}: {first}{hint}") from exc
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def concept_token_ids(tokenizer, concept: str, name: str = "tokenizer") -> list[int]:
    """The token ids of ``concept`` as the model's tokenizer writes it (no special tokens).

    Raises ConfigError if the concept is empty, contains text the tokenizer maps to its unknown token (or drops),
    or does not fit in the tokenizer's context; ``name`` is the tokenizer's component name in the message.
    """
    if not concept or not concept.strip():
        raise ConfigError("concept must be a non-empty string")
    ids = tokenizer(concept, add_special_tokens=False).input_ids
    unknown = {tokenizer.unk_token_id} - {None}
    if tokenizer.unk_token_id == tokenizer.eos_token_id:  # CLIP maps unknown text to end-of-text
        unknown.add(tokenizer.eos_token_id)
    if not ids or any(i in unknown for i in ids):
        raise ConfigError(
            f"concept {concept!r} cannot be represented by the model's {name} (it becomes "
            f"{tokenizer.convert_ids_to_tokens(ids) or 'nothing'}); use text the tokenizer knows, e.g. plain ASCII"
        )
    limit = tokenizer.model_max_length - 2
    if len(ids) > limit:
        raise ConfigError(f"concept {concept!r} is {len(ids)} tokens long; the {name}'s context holds {limit}")
    return list(ids)


def check_concept_tokens(pipe, concept: str) -> dict[str, list[int]]:
    """:func:`concept_token_ids` of ``concept`` in every tokenizer of ``pipe`` (SDXL has two), by component name."""
    return {name: concept_token_ids(tokenizer, concept, name) for name, tokenizer in tokenizers(pipe).items()}


# ---------------------------------------------------------------------------------------------------- adapters


def find_adapter_file(path: str | Path) -> Path:
    """The adapter's safetensors file: ``path`` itself, or the known file inside a directory."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise AdapterError(f"adapter {path} is not a .safetensors file")
        return path
    if path.is_dir():
        for name in ADAPTER_FILES:
            if (path / name).is_file():
                return path / name
        raise AdapterError(f"adapter directory {path} holds none of {', '.join(ADAPTER_FILES)}")
    raise AdapterError(f"adapter {path} does not exist")


def _read_adapter(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:

    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(file)), metadata
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterError(f"adapter {file} is not a readable safetensors file: {exc}") from None


def _component(pipe, key: str) -> tuple[str, torch.nn.Module, str]:
    name, _, rest = key.partition(".")
    module = getattr(pipe, name, None)
    if not isinstance(module, torch.nn.Module) or not rest:
        raise AdapterError(f"adapter key {key!r} does not name a model component (expected unet.* or text_encoder.*)")
    return name, module, rest


def _mismatch(pipe) -> str:
    return f"adapter does not match the model (a {type(pipe).__name__})"


def _check_weights(pipe, tensors: dict[str, torch.Tensor]) -> None:
    for key, value in tensors.items():
        name, module, param = _component(pipe, key)
        state = module.state_dict()
        if param not in state:
            raise AdapterError(f"{_mismatch(pipe)}: {name} has no parameter {param!r}")
        if tuple(state[param].shape) != tuple(value.shape):
            raise AdapterError(
                f"{_mismatch(pipe)}: {key} has shape {tuple(value.shape)}, the model's is {tuple(state[param].shape)}"
            )


def _check_lora(pipe, tensors: dict[str, torch.Tensor]) -> None:
    """Check peft-style LoRA keys (``<component>.<module>.lora_A.weight`` / ``lora_B``) against the modules."""
    for key, value in tensors.items():
        for marker, dim in ((".lora_A.", 1), (".lora_B.", 0)):
            if marker not in key:
                continue
            name, component, rest = _component(pipe, key)
            module_name = rest.split(marker)[0]
            try:
                module = component.get_submodule(module_name)
            except AttributeError:
                raise AdapterError(f"{_mismatch(pipe)}: {name} has no module {module_name!r}") from None
            base = getattr(module, "base_layer", module)
            expected = base.weight.shape[dim]
            if value.ndim < 2 or value.shape[dim] != expected:
                raise AdapterError(
                    f"{_mismatch(pipe)}: {key} has shape {tuple(value.shape)}, "
                    f"but {name}.{module_name} needs size {expected} in dimension {dim}"
                )


def _check_made_for(pipe, metadata: dict[str, str], file: Path) -> None:
    """An adapter that records the pipeline class it was made for must be applied to a pipeline of that class."""
    made_for, model = metadata.get("pipeline_class"), type(pipe).__name__
    if made_for is not None and made_for != model:
        raise AdapterError(
            f"adapter {file} was made for a {describe_class(made_for)} model, but the model is a "
            f"{describe_class(model)}; apply it to a model of the family it was made for"
        )


@torch.no_grad()
def apply_adapter(pipe, adapter: str | Path) -> dict[str, Any]:
    """Apply an erasure adapter to ``pipe`` in place (the files are never modified); returns a short description."""
    file = find_adapter_file(adapter)
    tensors, metadata = _read_adapter(file)
    if not tensors:
        raise AdapterError(f"adapter {file} holds no tensors")
    _check_made_for(pipe, metadata, file)
    if any("lora" in key for key in tensors):
        _check_lora(pipe, tensors)
        try:
            with _diffusers_errors_only():  # "no LoRA keys for the text encoder" is expected: erasures train the UNet
                pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="erasure")
            pipe.fuse_lora(adapter_names=["erasure"])
        except (ValueError, RuntimeError, KeyError) as exc:
            raise AdapterError(f"adapter {file} could not be loaded as a LoRA: {str(exc).splitlines()[0]}") from None
        return {"path": str(file), "format": "lora", "tensors": len(tensors)}
    mode = metadata.get("mode", "replace")
    if metadata.get("format", WEIGHTS_FORMAT) != WEIGHTS_FORMAT or mode not in ("replace", "delta"):
        raise AdapterError(
            f"adapter {file} has format {metadata.get('format')!r} / mode {mode!r}; "
            f"accepted: a diffusers LoRA, or {WEIGHTS_FORMAT} with mode replace or delta"
        )
    _check_weights(pipe, tensors)
    for key, value in tensors.items():
        _, module, param = _component(pipe, key)
        target = module.get_parameter(param) if param in dict(module.named_parameters()) else module.get_buffer(param)
        value = value.to(device=target.device, dtype=target.dtype)
        target.copy_(target + value if mode == "delta" else value)
    return {"path": str(file), "format": WEIGHTS_FORMAT, "mode": mode, "tensors": len(tensors)}


def save_weights_adapter(path: str | Path, tensors: dict[str, torch.Tensor], mode: str = "replace", **metadata) -> None:
    """Write a concept-erase weights adapter: ``{component.parameter: tensor}`` plus string metadata (the toolkit
    records ``method`` and ``pipeline_class``, which :func:`apply_adapter` checks)."""

    if mode not in ("replace", "delta"):
        raise ConfigError(f"mode must be 'replace' or 'delta', got {mode!r}")
    header = {"format": WEIGHTS_FORMAT, "mode": mode, **{k: str(v) for k, v in metadata.items()}}
    save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=header)


def save_lora_adapter(pipe, directory: str | Path, unet_layers: dict[str, torch.Tensor], **metadata) -> Path:
    """Write a UNet LoRA in diffusers' format through the pipeline's own class (``save_lora_weights``, so it loads
    back with that class's ``load_lora_weights``), its metadata also naming the ``pipeline_class`` it was made for."""
    type(pipe).save_lora_weights(str(directory), unet_lora_layers=unet_layers, safe_serialization=True)
    file = Path(directory) / LORA_FILE
    tensors, written = _read_adapter(file)
    header = {**written, "pipeline_class": type(pipe).__name__, **{k: str(v) for k, v in metadata.items()}}
    save_tensors(tensors, str(file), metadata=header)
    return file
