"""The Stable Diffusion families the erasure methods support, and what differs between them.

    family = model_family("stabilityai/stable-diffusion-xl-base-1.0")   # reads model_index.json, loads no weights
    text = encode(pipe, ["a photo of a dog"])                          # (states, pooled): pooled is None on SD 1.x/2.x
    pred = unet(noisy, t, text.states, **unet_kwargs(pipe, text.pooled, len(noisy))).sample
    loss = mse(pred, training_target(scheduler, latents, noise, t))    # epsilon, v_prediction or sample

Two families are supported, each one diffusers pipeline class:

- ``sd``: ``StableDiffusionPipeline`` (SD 1.x and 2.x, epsilon or v-prediction);
- ``sdxl``: ``StableDiffusionXLPipeline`` (two tokenizers and text encoders whose penultimate states are
  concatenated, plus the second encoder's pooled embedding and six "time ids" through the UNet's ``text_time``
  embedding).

Any other pipeline class (SD3, Flux, PixArt, Kandinsky, the img2img and inpainting variants, ...) is refused by
:func:`check_family` with one line naming the class and the supported ones, before any weights are loaded.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import diffusers
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from concept_erase.core.errors import ConfigError, ModelLoadError, excerpt

__all__ = [
    "FAMILIES",
    "PREDICTION_TYPES",
    "Family",
    "PromptEmbeddings",
    "check_family",
    "describe_class",
    "check_prediction_type",
    "encode",
    "family_of",
    "model_family",
    "model_index",
    "pipeline_class",
    "quiet_loading",
    "time_ids",
    "tokenizers",
    "training_target",
    "unconditional",
    "unet_kwargs",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class Family:
    """One supported family: its name, diffusers pipeline class and the components a pipeline directory needs."""

    name: str
    class_name: str
    label: str  # for messages: "SD 1.x/2.x", "SDXL"
    components: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.class_name} ({self.label})"


_SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
FAMILIES: dict[str, Family] = {
    "sd": Family("sd", "StableDiffusionPipeline", "SD 1.x/2.x", _SD_COMPONENTS),
    "sdxl": Family("sdxl", "StableDiffusionXLPipeline", "SDXL", (*_SD_COMPONENTS, "text_encoder_2", "tokenizer_2")),
}
_BY_CLASS = {family.class_name: family for family in FAMILIES.values()}


# ---------------------------------------------------------------------------------------------------- which family


def check_family(class_name: Any, where: str = "the model") -> Family:
    """The family of diffusers pipeline class ``class_name``; any other class raises :class:`ModelLoadError`."""
    family = _BY_CLASS.get(class_name) if isinstance(class_name, str) else None
    if family is None:
        what = (
            "names no pipeline class (_class_name)"
            if class_name is None
            else f"is a {excerpt(class_name, quote=False)}"
        )
        supported = ", ".join(str(f) for f in FAMILIES.values())
        raise ModelLoadError(f"{where} {what}; concept erasure supports {supported}")
    return family


def describe_class(class_name: str) -> str:
    """``StableDiffusionXLPipeline (SDXL)`` for a supported class, else the class name itself."""
    family = _BY_CLASS.get(class_name)
    return str(family) if family is not None else class_name


def model_index(model: str | Path, is_local: bool) -> dict[str, Any]:
    """A model's ``model_index.json``: read from a local pipeline directory, or through
    ``DiffusionPipeline.load_config`` for a hub id (no weights are fetched)."""
    if is_local:
        index = Path(model) / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(f"{model} is not a diffusers pipeline directory: it has no model_index.json")
        try:
            config = json.loads(index.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{index} is not valid JSON: {exc}") from None
    else:
        try:
            config = DiffusionPipeline.load_config(str(model))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"could not read the model_index.json of hub id {model}: {first}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"the model_index.json of {model} is not a JSON object of pipeline components")
    return config


def model_family(model: str | Path, is_local: bool) -> Family:
    """The family of a pipeline directory or hub id, from its :func:`model_index`; refused when unsupported."""
    return check_family(model_index(model, is_local).get("_class_name"), where=f"model {model}")


def family_of(pipe) -> Family:
    """The family of a loaded pipeline (by its class), refused like :func:`check_family` when unsupported."""
    return check_family(type(pipe).__name__, where="the pipeline")


@contextlib.contextmanager
def quiet_loading():
    """Hide diffusers' and transformers' per-component loading bars (our callers show their own progress)."""

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    verbosity = transformers_logging.get_verbosity()
    for lib, _ in states:
        lib.disable_progress_bar()
    transformers_logging.set_verbosity_error()  # its "requires torchvision" notices concern image processors we never use
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def pipeline_class(family: str | Family = "sd"):
    """The diffusers pipeline class of ``family``, imported without transformers' notices about torchvision."""
    name = family.class_name if isinstance(family, Family) else FAMILIES[family].class_name
    with quiet_loading():  # diffusers imports its pipelines on first access, printing the notices this hides
        return getattr(diffusers, name)


# ---------------------------------------------------------------------------------------------------- conditioning


class PromptEmbeddings(NamedTuple):
    """Text conditioning of a batch of prompts: the UNet's encoder states and, on SDXL, the pooled embeddings."""

    states: torch.Tensor  # (N, L, D): what cross-attention attends to (SDXL: both encoders' states concatenated)
    pooled: torch.Tensor | None = None  # (N, P): SDXL's pooled text embeddings; None for SD 1.x/2.x

    def take(self, index) -> PromptEmbeddings:
        """The rows ``index`` (an int tensor, a slice, ...)."""
        return PromptEmbeddings(self.states[index], None if self.pooled is None else self.pooled[index])

    def to(self, *args, **kwargs) -> PromptEmbeddings:
        return PromptEmbeddings(
            self.states.to(*args, **kwargs), None if self.pooled is None else self.pooled.to(*args, **kwargs)
        )

    def expand(self, n: int) -> PromptEmbeddings:
        """One prompt's conditioning repeated ``n`` times (a view, no copy)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return PromptEmbeddings(self.states.expand(n, -1, -1), pooled)

    @staticmethod
    def cat(parts: list[PromptEmbeddings]) -> PromptEmbeddings:
        pooled = [p.pooled for p in parts]
        joined = None if any(p is None for p in pooled) else torch.cat(pooled)
        return PromptEmbeddings(torch.cat([p.states for p in parts]), joined)


def tokenizers(pipe) -> dict[str, Any]:
    """Every tokenizer of the pipeline by component name (``tokenizer``; SDXL also ``tokenizer_2``)."""
    names = FAMILIES[family_of(pipe).name].components
    return {name: getattr(pipe, name) for name in names if name.startswith("tokenizer")}


def encode(pipe, prompts: list[str], device=None) -> PromptEmbeddings:
    """The conditioning the pipeline itself gives its UNet for ``prompts`` (its own ``encode_prompt``, no guidance)."""
    device = device or pipe.text_encoder.device
    if family_of(pipe).name == "sdxl":
        states, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
        return PromptEmbeddings(states, pooled)
    states, _ = pipe.encode_prompt(prompts, device, 1, False)
    return PromptEmbeddings(states)


def unconditional(pipe, device=None) -> PromptEmbeddings:
    """The pipeline's own unconditional conditioning for classifier-free guidance, one row: the empty prompt's
    encoding (SD, and SDXL without ``force_zeros_for_empty_prompt``) or zeros (SDXL's default)."""
    device = device or pipe.text_encoder.device
    if family_of(pipe).name == "sdxl":
        _, states, _, pooled = pipe.encode_prompt([""], device=device, do_classifier_free_guidance=True)
        return PromptEmbeddings(states, pooled)
    _, states = pipe.encode_prompt([""], device, 1, True)
    return PromptEmbeddings(states)


def time_ids(pipe, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SDXL's six micro-conditioning ids ``(1, 6)`` for its native resolution, uncropped, built by the pipeline's own
    ``_get_add_time_ids`` as its ``__call__`` builds them when no size is given."""
    size = pipe.default_sample_size * pipe.vae_scale_factor
    projection = int(pipe.text_encoder_2.config.projection_dim)
    return pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype, text_encoder_projection_dim=projection)


def unet_kwargs(pipe, pooled: torch.Tensor | None, batch: int) -> dict[str, Any]:
    """The keyword arguments the family's UNet needs beside ``(sample, timestep, encoder_hidden_states)``: nothing
    for SD 1.x/2.x; for SDXL ``added_cond_kwargs`` with the pooled embeddings and the native resolution's time ids."""
    if family_of(pipe).name != "sdxl":
        return {}
    if pooled is None or len(pooled) != batch:
        got = "none" if pooled is None else f"{len(pooled)} rows"
        raise ConfigError(f"an SDXL UNet needs pooled text embeddings for each of the {batch} samples, got {got}")
    ids = time_ids(pipe, pooled.dtype).to(pooled.device).expand(batch, -1)
    return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}


# ---------------------------------------------------------------------------------------------------- targets


def check_prediction_type(scheduler) -> str:
    """The scheduler's ``prediction_type``, which must be one :func:`training_target` knows."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ConfigError(
            f"the model's scheduler has prediction_type {excerpt(kind)}; accepted values: {', '.join(PREDICTION_TYPES)}"
        )
    return kind


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts for ``latents`` noised with ``noise`` at ``timesteps``, as diffusers' training scripts
    set it: the noise (``epsilon``), the velocity ``scheduler.get_velocity(latents, noise, timesteps)``
    (``v_prediction``) or the clean latents (``sample``)."""
    kind = check_prediction_type(scheduler)
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return latents if kind == "sample" else noise
