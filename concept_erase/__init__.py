"""concept-erase: make trained models forget.

The package has two rooms:

- :mod:`concept_erase.core`: what every method shares, on both sides (the Accelerate trainer, the saliency-mask
  utility, the registry, the config loader, output handling, the error hierarchy, the digit data sets). It imports
  nothing from the rest of the toolkit.
- :mod:`concept_erase.diffusion`: concept erasure for Stable Diffusion (the base that methods import, the driver that
  runs them, loading, attention steering, evaluation, the judge, the retrain oracle, the tiny model, the methods).

Classifier unlearning lives in the sibling package :mod:`classifiers` (built on :mod:`concept_erase.core` only) and the
command line in :mod:`pipelines`. The public API is importable from here directly::

    from concept_erase import erase, evaluate, load_erased
    record = erase(None, "fmn", ["seven"], output_dir="out/fmn-seven")   # None: the embedded tiny Stable Diffusion

Names are resolved on first use, so ``import concept_erase`` (and ``concept-erase --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_ERRORS = (
    "AdapterError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConceptEraseError",
    "ConfigError",
    "ConfigParseError",
    "EmptyDataError",
    "InputNotFoundError",
    "MaskError",
    "ModelLoadError",
    "NonFiniteValueError",
    "NotFittedError",
    "OutputExistsError",
    "OutputOverlapsInputError",
    "PipelineError",
    "RegistryError",
    "StoreError",
    "TrainingError",
    "UnknownConfigKeyError",
    "UnknownNameError",
)
# public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    **{name: ("concept_erase.core.errors", name) for name in _ERRORS},
    "METHODS": ("concept_erase.core.registry", "METHODS"),
    "STEPS": ("concept_erase.core.registry", "STEPS"),
    "get_method": ("concept_erase.core.registry", "get_method"),
    "list_methods": ("concept_erase.core.registry", "list_methods"),
    "register_method": ("concept_erase.core.registry", "register_method"),
    "register_step": ("concept_erase.core.registry", "register_step"),
    "load_config": ("concept_erase.core.config", "load_config"),
    "Trainer": ("concept_erase.core.trainer", "Trainer"),
    "TrainerConfig": ("concept_erase.core.trainer", "TrainerConfig"),
    "SaliencyMask": ("concept_erase.core.saliency", "SaliencyMask"),
    "compute_saliency": ("concept_erase.core.saliency", "compute_saliency"),
    "ErasureConfig": ("concept_erase.diffusion.base", "ErasureConfig"),
    "erase": ("concept_erase.diffusion.erasure", "erase"),
    "load_erased": ("concept_erase.diffusion.erasure", "load_erased"),
    "EvaluationConfig": ("concept_erase.diffusion.evaluation", "EvaluationConfig"),
    "evaluate": ("concept_erase.diffusion.evaluation", "evaluate_erasure"),
    "evaluate_erasure": ("concept_erase.diffusion.evaluation", "evaluate_erasure"),
    "load_pipeline": ("concept_erase.diffusion.loading", "load_pipeline"),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'concept_erase' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
