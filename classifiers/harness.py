"""The harness every classifier method is judged by: one unlearning job, end to end.

    result = run_job(UnlearnJob(method="salun", dataset="mnist5k", model="cnn", forget="class:3"))
    result.metrics["ua"], result.metrics["oracle"]["ua"]          # UA of the method and of the retrain oracle
    write_job(result, "out/salun")                                  # weights, metrics.json, config, plots

    # bring your own trained model (any nn.Module) and data
    result = run_job(UnlearnJob(method="boundary_shrink", forget="random:0.1"), model=my_net, splits=my_splits)

A job: load the dataset and its fixed split, build the scenario's :class:`~classifiers.data.UnlearningTask`, get the
original model (the user's, or trained on the full training split and cached), get the retrain oracle (cached), run
the method on a copy of the original (timed), and score it with :func:`~classifiers.metrics.unlearning_metrics`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from classifiers.data import (
    DatasetSplits,
    Scenario,
    UnlearningTask,
    dataset_path,
    load_dataset,
    make_task,
    scenario_paths,
)
from classifiers.injection import inject_feature, injection_metrics
from classifiers.methods import get_classifier_method
from classifiers.metrics import plot_per_class_comparison, unlearning_metrics
from classifiers.models import ModelConfig, build_model, check_fits, is_model_dir, load_model, save_model
from classifiers.oracle import RECIPE_FIELDS, Reference, get_oracle, get_original
from classifiers.training import TrainConfig
from classifiers.ulira import ULiRAConfig, check_scenario, ulira_attack
from concept_erase.core.config import check_numbers, config_to_dict, dump_config, from_dict
from concept_erase.core.errors import CheckpointError, ConfigError, InputNotFoundError
from concept_erase.core.io import check_disjoint, config_paths, write_json
from concept_erase.core.readers import read_json_object, require
from concept_erase.core.tensorfile import save_tensors

__all__ = [
    "JobResult",
    "UnlearnJob",
    "check_model_fits",
    "job_inputs",
    "load_splits",
    "make_method_config",
    "per_class_fractions",
    "read_unlearn_record",
    "run_job",
    "write_job",
]

UNLEARN_RECORD = "unlearn.json"


@dataclass
class UnlearnJob:
    """One unlearning run. ``forget`` is a scenario: ``class:3``, ``subclass:3``, ``random:0.1`` or ``indices:FILE``."""

    method: str = "salun"
    method_config: dict = field(default_factory=dict)  # the method's config keys (its paper defaults otherwise)
    dataset: str = "digits"  # digits, mnist5k, an image folder or an .npz file
    model: str = "cnn"  # architecture: mlp, cnn, vit
    model_config: dict = field(default_factory=dict)  # extra ModelConfig keys (hidden_sizes, channels, ...)
    forget: str = "class:3"
    superclasses: list[list[int]] | None = None  # subclass scenarios: groups of classes (default: pairs)
    seed: int = 0  # seeds the original, the oracle, the random forget set and the method
    recipe: dict = field(default_factory=dict)  # training recipe of original and oracle (TrainConfig keys)
    weights: str | None = None  # the user's trained original: model directory or .safetensors of `model`
    test_size: float = 0.25
    data_seed: int = 0  # seed of the train/test split
    oracle: bool = True  # train (or load) the retrain oracle and report gaps to it
    cache: bool = True  # cache the original and the oracle under $CONCEPT_ERASE_CACHE/classifiers
    # per-example membership inference (classifiers.ulira): ULiRAConfig keys, e.g. {"shadows": 8}; adds ulira_*
    # metrics for the method, the retrain oracle (the attack's check) and the original
    ulira: dict | None = None
    # feature-injection test (classifiers.injection): this value in the first input coordinate of the forget samples
    # before the original and the oracle are trained; metrics["injected_feature"] reports the weight left on it
    inject_feature: float | None = None

    def __post_init__(self) -> None:
        check_numbers(self)
        unknown = set(self.recipe) - set(RECIPE_FIELDS) - {"checkpointing_steps"}
        if unknown:
            raise ConfigError(f"recipe: unknown key {sorted(unknown)[0]!r}; accepted keys: {', '.join(RECIPE_FIELDS)}")
        Scenario.parse(self.forget)  # fail early on a bad scenario
        if self.ulira is not None:
            if not isinstance(self.ulira, dict):
                raise ConfigError(f"ulira must be a mapping of U-LiRA settings (shadows, progress), got {self.ulira!r}")
            from_dict(ULiRAConfig, self.ulira)
            check_scenario(self.forget)

    def train_config(self) -> TrainConfig:
        values = {"seed": self.seed, **self.recipe}
        return from_dict(TrainConfig, {"dataset": self.dataset, "test_size": self.test_size, **values})

    def architecture(self) -> ModelConfig:
        return from_dict(ModelConfig, {**self.model_config, "name": self.model})


@dataclass(eq=False)
class JobResult:
    """What a job produced: the unlearned model, its metrics (with the oracle's beside them) and the method summary."""

    job: UnlearnJob
    task: UnlearningTask
    model: nn.Module
    metrics: dict
    summary: dict
    method_config: Any
    original: Reference
    oracle: Reference | None


def make_method_config(method: str, values: dict | None = None, seed: int | None = None, recipe: TrainConfig = None):
    """A classifier method's validated config. ``seed`` fills its ``seed`` key; for configs with
    ``takes_recipe = True`` (``retrain``, ``amnesiac``) the recipe fills the training keys, so ``retrain`` reproduces
    the oracle exactly and ``amnesiac`` can re-run the original's training."""

    entry = get_classifier_method(method)
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(entry.config_cls)} if entry.config_cls else set()
    if seed is not None and "seed" in names:
        values.setdefault("seed", seed)
    if recipe is not None and getattr(entry.config_cls, "takes_recipe", False):
        for key in RECIPE_FIELDS:
            if key in names:
                values.setdefault(key, getattr(recipe, key))
    return entry.make_config(values)


def load_splits(job: UnlearnJob) -> DatasetSplits:
    splits = load_dataset(job.dataset, job.data_seed, job.test_size)
    if job.forget.startswith("subclass"):
        splits = splits.with_superclasses(job.superclasses)
    elif job.superclasses:
        raise ConfigError("superclasses only apply to subclass:C scenarios")
    return splits


def check_model_fits(model: nn.Module, task: UnlearningTask) -> None:
    """Raise a clear ConfigError when ``model`` cannot take ``task``'s inputs or has another number of outputs."""
    check_fits(model, task.retain.tensors[0][:2], task.num_classes, task.dataset)


def _load_weights(job: UnlearnJob, splits: DatasetSplits) -> nn.Module:

    path = Path(job.weights)
    if is_model_dir(path):
        return load_model(path)
    if path.is_dir():
        raise ConfigError(
            f"weights {path} is a directory but not a model directory (model.safetensors + model_config.json)"
        )
    if not path.is_file():
        raise InputNotFoundError(f"weights not found: {path} (a model directory or a .safetensors file)")
    if path.suffix != ".safetensors":
        raise ConfigError(f"weights must be a .safetensors file or a model directory, got {path.name}")
    config = dataclasses.replace(job.architecture(), num_classes=splits.num_classes, input_shape=splits.input_shape)
    model = build_model(config)
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).replace("\n", " ")[:200]
        raise CheckpointError(f"{path} does not fit model {job.model!r} on {job.dataset!r}: {detail}") from None
    except Exception as exc:  # safetensors' own error type for damaged files
        raise CheckpointError(f"{path} is corrupt: {str(exc).splitlines()[0][:200]}") from None
    return model.eval()


def read_unlearn_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``unlearn.json`` of an unlearned model directory (None when it has none), checked: a damaged file, or a
    ``forget_classes`` that is not a list of class indices, raises :class:`CheckpointError` naming it."""
    path = Path(model_dir) / UNLEARN_RECORD
    if not path.exists():
        return None
    what = "unlearn record"
    record = read_json_object(path, what, CheckpointError)
    require(record, "method", str, path, what, CheckpointError, optional=True)
    forget = require(record, "forget_classes", list, path, what, CheckpointError, optional=True)
    if forget is not None and not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in forget):
        raise CheckpointError(
            f"{what} {path} is corrupt: 'forget_classes' must be a list of class indices, got {forget!r}"
        )
    return record


def original_reference(
    job: UnlearnJob, splits: DatasetSplits, model: nn.Module | None, recipe: TrainConfig
) -> Reference:
    """The model a job unlearns from: ``model`` when given, else ``job.weights``, else the cached original trained on
    the whole training split with ``recipe``."""
    if model is not None:
        return Reference(model.eval(), float("nan"), None, cached=False)
    if job.weights:
        return Reference(_load_weights(job, splits), float("nan"), Path(job.weights), cached=False)
    return get_original(splits, job.architecture(), recipe, cache=job.cache)


def run_job(job: UnlearnJob, model: nn.Module | None = None, splits: DatasetSplits | None = None) -> JobResult:
    """Run ``job``. ``model`` (any ``nn.Module``, left untouched) and ``splits`` replace the job's model and data."""

    splits = splits if splits is not None else load_splits(job)
    task = make_task(splits, job.forget, seed=job.seed)
    if job.inject_feature is not None:
        if model is not None or job.weights:
            raise ConfigError("inject_feature trains the original on the injected data: it takes no given model")
        if job.model != "mlp":
            raise ConfigError(
                f"inject_feature measures a model whose first layer is linear: model 'mlp', got {job.model!r}"
            )
        splits = inject_feature(splits, task.forget_indices, job.inject_feature)
        task = make_task(splits, job.forget, seed=job.seed)
    recipe = job.train_config()
    method_config = make_method_config(job.method, job.method_config, job.seed, recipe)
    original = original_reference(job, splits, model, recipe)
    check_model_fits(original.model, task)
    template = original.model if (model is not None or job.weights) else job.architecture()
    oracle = get_oracle(task, splits, template, recipe, cache=job.cache) if job.oracle else None
    unlearned = copy.deepcopy(original.model)
    start = time.perf_counter()
    summary = get_classifier_method(job.method).target(unlearned, task, method_config, work_dir=None)
    # one-off work a method reports as belonging to training, not unlearning (DiStruction's BGD preparation)
    excluded = float(summary.get("excluded_seconds") or 0.0) if isinstance(summary, dict) else 0.0
    seconds = time.perf_counter() - start - excluded
    unlearned.eval()
    metrics = unlearning_metrics(
        unlearned,
        task,
        original=original.model,
        oracle=oracle.model if oracle else None,
        seconds=seconds,
        oracle_seconds=oracle.seconds if oracle else None,
        seed=job.seed,
    )
    if job.inject_feature is not None:
        oracle_model = oracle.model if oracle else None
        metrics["injected_feature"] = injection_metrics(unlearned, original.model, oracle_model, job.inject_feature)
    before = unlearning_metrics(original.model, task, seed=job.seed)
    info = {"method": job.method, "scenario": task.scenario, "dataset": task.dataset, "seed": job.seed}
    if excluded:
        info["excluded_seconds"] = round(excluded, 4)
    metrics["original"] = {
        k: before.get(k) for k in ("ua", "ra", "ta", "ta_remaining", "mia_efficacy", "per_class_accuracy")
    }
    if job.ulira is not None:
        _add_ulira(job, task, splits, template, recipe, metrics, unlearned, original.model, oracle)
    return JobResult(job, task, unlearned, {**info, **metrics}, summary, method_config, original, oracle)


ULIRA_KEYS = ("auc", "balanced_accuracy", "balanced_accuracy_at_0", "unlearned_called_in")


def _method_unlearn(name: str, values: dict, recipe: TrainConfig):
    """``unlearn(model, task, seed)`` applying method ``name`` (its config made for that seed) in place."""
    entry = get_classifier_method(name)

    def unlearn(model: nn.Module, task: UnlearningTask, seed: int) -> None:
        config = make_method_config(name, values, seed, dataclasses.replace(recipe, seed=seed))
        entry.target(model, task, config, work_dir=None)

    return unlearn


def _add_ulira(job, task, splits, template, recipe, metrics, unlearned, original, oracle) -> None:
    """U-LiRA of the method, of the retrain oracle (the attack's check) and of the original (no unlearning at
    all) on shared shadows: ``ulira_*`` keys in ``metrics``, ``metrics['oracle']`` and ``metrics['original']``."""
    methods = {"method": _method_unlearn(job.method, job.method_config, recipe), "original": lambda *a: None}
    targets = {"method": unlearned, "original": original}
    if oracle is not None:
        methods["oracle"] = _method_unlearn("retrain", {}, recipe)
        targets["oracle"] = oracle.model
    config = from_dict(ULiRAConfig, job.ulira)
    found = ulira_attack(
        task, splits, template, recipe, methods, config, targets=targets, cache=job.cache, seed=job.seed
    )
    where = {"method": metrics, "oracle": metrics.get("oracle"), "original": metrics["original"]}
    for name, values in found.items():
        where[name].update({f"ulira_{k}": values.get(k) for k in ULIRA_KEYS})
    metrics["ulira"] = found


def job_inputs(job: UnlearnJob) -> list[str | None]:
    """The local paths ``job`` reads: its weights, a dataset given as a path, an ``indices:FILE`` scenario's file and
    the paths in its method config (``mask_path``, ``records_path``, ``prepared_path``). An output overlapping one
    of them would destroy it (see :func:`concept_erase.core.io.check_disjoint`)."""
    return [job.weights, dataset_path(job.dataset), *scenario_paths(job.forget), *config_paths(job.method_config)]


def write_job(result: JobResult, out_dir: str | Path) -> Path:
    """Write the unlearned weights (safetensors), ``metrics.json``, ``config.yaml``, ``unlearn.json`` and a per-class
    accuracy plot (original, unlearned, oracle) into ``out_dir`` (an existing directory, e.g. an atomic temp dir)."""

    out_dir = Path(out_dir)
    check_disjoint(out_dir, job_inputs(result.job))  # never write over what the job read
    if isinstance(getattr(result.model, "config", None), ModelConfig):
        save_model(result.model, out_dir)
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        save_tensors(tensors, str(out_dir / "model.safetensors"))
    write_json(out_dir / "metrics.json", result.metrics)
    job = config_to_dict(result.job)
    dump_config({**job, "method_config": config_to_dict(result.method_config)}, out_dir / "config.yaml")
    scenario = {"scenario": result.task.scenario, "forget_classes": list(result.task.forget_classes)}
    write_json(out_dir / UNLEARN_RECORD, {**result.summary, **scenario, "job": job})
    forget = result.task.forget_classes
    named = {"original": result.metrics.get("original"), "unlearned": result.metrics}
    named["retrain oracle"] = result.metrics.get("oracle")
    runs = {k: v for k, m in named.items() if (v := per_class_fractions(m, forget))}
    plot_per_class_comparison(
        runs, out_dir / "per_class_accuracy.png", title=f"{result.job.method}: {result.task.scenario}"
    )
    return out_dir


def per_class_fractions(metrics: dict | None, forget_classes=()) -> dict | None:
    """Per-class accuracy of a metrics dict as fractions, with the forgotten classes: what the per-class plot takes."""
    if not metrics or "per_class_accuracy" not in metrics:
        return None
    values = metrics["per_class_accuracy"] or {}
    return {
        "per_class_accuracy": {k: (None if v is None else v / 100) for k, v in values.items()},
        "forget_classes": list(forget_classes),
    }
