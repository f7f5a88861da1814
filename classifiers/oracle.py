"""The two reference models of a classifier unlearning task, trained once and cached on disk.

- the **original**: the model trained on the whole training split (what a user would unlearn from);
- the **retrain oracle**: the same architecture trained from scratch on the retain set only, with the same recipe and
  seed. It is the gold standard of exact unlearning every method is scored against.

    original = get_original(splits, ModelConfig("cnn"), TrainConfig(seed=0))
    oracle = get_oracle(task, splits, ModelConfig("cnn"), TrainConfig(seed=0))
    oracle.model, oracle.seconds, oracle.cached

Both are cached under ``$CONCEPT_ERASE_CACHE/classifiers/`` keyed by a hash of (dataset name and content fingerprint,
train/test split, super-class grouping, the forget indices for the oracle, the model config, the training recipe,
the seed), so a benchmark trains each once. ``seconds`` is the training wall time recorded when the model was trained:
cost ratios divide a method's time by it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import DatasetSplits, UnlearningTask
from classifiers.models import ModelConfig, load_model, save_model
from classifiers.training import TrainConfig, fresh_model, reinitialise, train_recipe
from concept_erase.core.config import config_to_dict
from concept_erase.core.io import atomic_output_dir, cache_dir, write_json
from concept_erase.core.tensorfile import save_tensors

__all__ = ["RECIPE_FIELDS", "Reference", "get_original", "get_oracle", "recipe_dict"]

# the fields of TrainConfig that define how a model is trained (the data comes from the task)
RECIPE_FIELDS = ("epochs", "max_train_steps", "batch_size", "learning_rate", "optimizer", "weight_decay", "seed")
_INFO = "reference.json"
_WEIGHTS = "model.safetensors"


@dataclass(frozen=True, eq=False)
class Reference:
    """A trained reference model, its training time and where it is cached."""

    model: nn.Module
    seconds: float
    path: Path | None
    cached: bool


def recipe_dict(recipe: TrainConfig) -> dict:
    return {k: getattr(recipe, k) for k in RECIPE_FIELDS}


def _architecture(template: nn.Module) -> dict:
    config = getattr(template, "config", None)
    if isinstance(config, ModelConfig):
        return config_to_dict(config)
    shapes = {k: list(v.shape) for k, v in template.state_dict().items()}
    return {"class": type(template).__qualname__, "shapes": shapes}


def _key(kind: str, splits: DatasetSplits, template: nn.Module, recipe: TrainConfig, forget=None) -> dict:
    forget_hash = None
    if forget is not None:
        forget_hash = hashlib.sha256(forget.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {
        "kind": kind,
        "dataset": splits.name,
        "fingerprint": splits.fingerprint,
        "split": splits.split,
        "superclasses": [list(g) for g in splits.superclasses] if splits.superclasses else None,
        "forget_indices": forget_hash,
        "architecture": _architecture(template),
        "recipe": recipe_dict(recipe),
        "format": 1,
    }


def _cache_path(key: dict) -> Path:

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "classifiers" / f"{key['kind']}-{digest}"


def _load(path: Path, template: nn.Module) -> nn.Module | None:

    if not (path / _INFO).is_file():
        return None
    if isinstance(getattr(template, "config", None), ModelConfig):
        return load_model(path)
    model = copy.deepcopy(template)
    model.load_state_dict(load_file(str(path / _WEIGHTS)))
    return model.eval()


def _save(path: Path, model: nn.Module, key: dict, seconds: float) -> None:

    with atomic_output_dir(path, overwrite=True) as tmp:
        if isinstance(getattr(model, "config", None), ModelConfig):
            save_model(model, tmp)
        else:
            save_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / _WEIGHTS))
        write_json(tmp / _INFO, {**key, "seconds": seconds})


def _reference(
    key: dict, build: Callable[[], nn.Module], train_set: TensorDataset, recipe: TrainConfig, cache: bool
) -> Reference:
    template = build()
    path = _cache_path(key)
    if cache:
        model = _load(path, template)
        if model is not None:
            seconds = json.loads((path / _INFO).read_text())["seconds"]
            return Reference(model, float(seconds), path, cached=True)
    start = time.perf_counter()
    train_recipe(template, train_set, recipe)
    seconds = round(time.perf_counter() - start, 4)
    template.eval()
    if cache:
        _save(path, template, key, seconds)
    return Reference(template, seconds, path if cache else None, cached=False)


def _builder(splits: DatasetSplits, model: ModelConfig | nn.Module, seed: int) -> Callable[[], nn.Module]:
    if isinstance(model, nn.Module):

        def build() -> nn.Module:
            fresh = copy.deepcopy(model)
            reinitialise(fresh, seed)
            return fresh

        return build
    return lambda: fresh_model(model, splits.num_classes, splits.input_shape, seed)


def get_original(
    splits: DatasetSplits, model: ModelConfig | nn.Module, recipe: TrainConfig, cache: bool = True
) -> Reference:
    """The model trained on the whole training split (cached)."""
    build = _builder(splits, model, recipe.seed)
    key = _key("original", splits, build(), recipe)
    return _reference(key, build, splits.train, recipe, cache)


def get_oracle(
    task: UnlearningTask,
    splits: DatasetSplits,
    model: ModelConfig | nn.Module,
    recipe: TrainConfig,
    cache: bool = True,
) -> Reference:
    """The retrain oracle: ``model``'s architecture trained from scratch on ``task.retain`` (cached).

    ``model`` is a :class:`ModelConfig` or any ``nn.Module`` (a copy is re-initialised, never the module itself).
    """
    build = _builder(splits, model, recipe.seed)
    key = _key("oracle", splits, build(), recipe, forget=task.forget_indices)
    return _reference(key, build, task.retain, recipe, cache)
