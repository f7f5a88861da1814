"""Training classifiers with the shared trainer: the original model and the retrain-from-scratch oracle.

    model, info = train_classifier(TrainConfig(model=ModelConfig("mlp"), epochs=20))
    oracle, _ = train_classifier(TrainConfig(model=ModelConfig("mlp"), epochs=20, exclude_classes=[7]))

``exclude_classes`` drops those classes' training samples: with the same recipe and seed, that is the gold standard
of exact unlearning every method is compared with.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from classifiers.data import load_dataset, subset_by_class
from classifiers.models import ModelConfig, build_model
from concept_erase.core.config import NON_NEGATIVE, check_numbers
from concept_erase.core.errors import ConfigError, EmptyDataError, TrainingError
from concept_erase.core.trainer import Trainer, TrainerConfig

__all__ = [
    "TrainConfig",
    "UnlearningConfig",
    "train_classifier",
    "train_recipe",
    "fresh_model",
    "reinitialise",
    "fit",
    "fit_method",
    "fit_summary",
    "check_schedule",
    "schedule_steps",
    "cross_entropy",
]


@dataclass
class TrainConfig:
    """Recipe for training a classifier from scratch on a dataset's training split."""

    dataset: str = "digits"
    test_size: float = 0.25
    data_seed: int = 0  # seed of the train/test split (keep it fixed across original, retrain and evaluation)
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    max_train_steps: int | None = None  # overrides epochs when set
    batch_size: int = 64
    learning_rate: float = 3e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.0
    exclude_classes: list[int] = field(default_factory=list)  # train without these classes (the retrain oracle)
    checkpointing_steps: int | None = None  # checkpoint into the work directory, when one is given
    seed: int = 0

    NUMBER_RANGES: ClassVar[dict] = {"exclude_classes": NON_NEGATIVE}

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ConfigError(f"max_train_steps must be >= 1 or null, got {self.max_train_steps}")


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    inputs, labels = batch
    return nn.functional.cross_entropy(model(inputs), labels)


def fit(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    max_train_steps: int | None = None,
    min_steps: int = 0,
    work_dir: str | Path | None = None,
    checkpointing_steps: int | None = None,
    loss_fn=cross_entropy,
    after_step=None,
    extra_state: dict | None = None,
    max_grad_norm: float | None = 1.0,
    name: str = "training",
):
    """Train ``model`` in place on ``dataset`` with the shared :class:`~concept_erase.core.trainer.Trainer`.

    With a ``work_dir`` and ``checkpointing_steps`` the run checkpoints there and resumes from the latest
    checkpoint when restarted (the pipeline runner keeps the work directory across failures). A NaN or infinite
    loss stops the run with :class:`~concept_erase.core.errors.TrainingError` naming ``name``, the step and the
    learning rate. ``loss_fn(model, batch)`` may be any loss over the batches of ``dataset``.

    The run takes ``max_train_steps`` optimiser steps when given, else ``epochs`` passes over ``dataset`` but at least
    ``min_steps`` (:func:`schedule_steps`): a schedule counted in epochs of a small set (the forget set of a small
    data set) would otherwise shrink to a handful of steps.
    """

    if len(dataset) == 0:
        raise EmptyDataError("the training set is empty: there is nothing to train on")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    checkpointing = work_dir is not None and checkpointing_steps is not None
    config = TrainerConfig(
        output_dir=str(work_dir) if checkpointing else None,
        max_train_steps=schedule_steps(len(loader), epochs, max_train_steps, min_steps),
        learning_rate=learning_rate,
        optimizer=optimizer,
        adam_weight_decay=weight_decay,
        sgd_momentum=momentum,
        checkpointing_steps=checkpointing_steps if checkpointing else None,
        checkpoints_total_limit=2 if checkpointing else None,
        resume_from_checkpoint="latest" if checkpointing else None,
        seed=seed,
        max_grad_norm=max_grad_norm,
        show_progress=sys.stderr.isatty(),
    )
    trainer = None
    loss = _finite_loss(loss_fn, name, learning_rate, step=lambda: trainer.global_step + 1)
    trainer = Trainer(model, config, loader, compute_loss=loss, after_step=after_step, extra_state=extra_state)
    return trainer.train()


def schedule_steps(batches: int, epochs: int, max_train_steps: int | None = None, min_steps: int = 0) -> int:
    """The optimiser steps of a run: ``max_train_steps`` when set, else ``epochs * batches`` (batches per epoch) but
    at least ``min_steps``."""
    if max_train_steps:
        return max_train_steps
    return max(epochs * batches, min_steps)


def _finite_loss(loss_fn, name: str, learning_rate: float, step: Callable[[], int]):
    """``loss_fn`` that stops the run with :class:`~concept_erase.core.errors.TrainingError` on a NaN or infinite
    loss, naming ``name``, the step (``step()``) and the learning rate."""

    def guarded(module, batch):
        loss = loss_fn(module, batch)
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(
                f"{name}: the loss became {float(loss.detach())} at step {step()}; "
                f"lower learning_rate (now {learning_rate:g})"
            )
        return loss

    return guarded


def check_schedule(config) -> None:
    """The checks every method config's training schedule shares: ``epochs``, ``batch_size`` >= 1,
    ``max_train_steps`` >= 1 or None, ``min_steps`` >= 0, ``learning_rate`` > 0 (fields a config lacks are skipped)."""
    epochs, batch_size = getattr(config, "epochs", 1), getattr(config, "batch_size", 1)
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    steps = getattr(config, "max_train_steps", None)
    if steps is not None and steps < 1:
        raise ConfigError(f"max_train_steps must be >= 1 or null, got {steps}")
    if getattr(config, "min_steps", 0) < 0:
        raise ConfigError(f"min_steps must be >= 0 (0: epochs alone decide), got {config.min_steps}")
    if getattr(config, "learning_rate", 1.0) <= 0:
        raise ConfigError(f"learning_rate must be > 0, got {config.learning_rate}")


@dataclass
class UnlearningConfig:
    """The optimiser and schedule block every classifier method that trains with :func:`fit` shares.

    A method's config subclasses it and redeclares a key where its paper's default differs from these (the
    original model's recipe, :class:`TrainConfig`'s). A config that masks lists
    :class:`~classifiers.masking.MaskOptions` second (``class FinetuneConfig(UnlearningConfig, MaskOptions)``), so
    the mask keys come first and are checked first. A setting a method fixes instead of exposing is redeclared as a
    ``ClassVar`` holding the value it always uses (boundary unlearning's SGD), which takes the key away;
    ``max_grad_norm`` is such a fixed setting here (the toolkit's clipping) and a key where a method declares it.

    ``min_steps`` makes the schedule scale with the data: ``epochs`` passes over the method's training set, but at
    least ``min_steps`` optimiser steps. A method whose defaults were tuned on mnist5k sets it to the steps its
    ``epochs`` give there, so the same defaults give the same number of updates on a smaller data set (digits'
    forget class has 137 samples, 3 batches of 64, where mnist5k's 375 give 6) and are unchanged on mnist5k.
    """

    epochs: int = TrainConfig.epochs
    max_train_steps: int | None = TrainConfig.max_train_steps  # overrides epochs (and min_steps) when set
    min_steps: int = 0  # at least this many optimiser steps however few batches an epoch has (0: epochs alone)
    batch_size: int = TrainConfig.batch_size
    learning_rate: float = TrainConfig.learning_rate
    optimizer: Literal["adamw", "adam", "sgd"] = TrainConfig.optimizer
    momentum: float = 0.9  # sgd only
    weight_decay: float = TrainConfig.weight_decay
    checkpointing_steps: int | None = TrainConfig.checkpointing_steps  # into the work directory (pipelines resume)
    seed: int = TrainConfig.seed
    max_grad_norm: ClassVar[float | None] = 1.0

    def __post_init__(self) -> None:
        check_numbers(self)
        checks = getattr(super(), "__post_init__", None)
        if checks is not None:  # MaskOptions'
            checks()
        check_schedule(self)

    def fit_options(self, **overrides: Any) -> dict:
        """The keyword arguments of :func:`fit` for this schedule, updated with ``overrides``."""
        values = dict(
            epochs=self.epochs,
            max_train_steps=self.max_train_steps,
            min_steps=self.min_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            checkpointing_steps=self.checkpointing_steps,
            seed=self.seed,
            max_grad_norm=self.max_grad_norm,
        )
        values.update(overrides)
        return values

    def recipe(self) -> TrainConfig:
        """These keys as a :class:`TrainConfig`: the original's recipe that ``retrain`` and ``amnesiac`` re-run."""
        return TrainConfig(
            epochs=self.epochs,
            max_train_steps=self.max_train_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            seed=self.seed,
            checkpointing_steps=self.checkpointing_steps,
        )


def fit_method(
    model: nn.Module, dataset: TensorDataset, config: UnlearningConfig, *, name: str, applier=None, **kwargs
):
    """:func:`fit` with a method config's schedule (:meth:`UnlearningConfig.fit_options`; ``kwargs`` are further
    arguments of :func:`fit`) and its saliency-mask applier (restoring the frozen weights after every step and
    checkpointed with them)."""
    extra_state = {**({"saliency": applier} if applier is not None else {}), **(kwargs.pop("extra_state", None) or {})}
    after_step = kwargs.pop("after_step", applier)
    options = config.fit_options(after_step=after_step, extra_state=extra_state or None, name=name, **kwargs)
    return fit(model, dataset, **options)


def fit_summary(name: str, result, **extra) -> dict:
    """The JSON-serialisable summary a method returns after a run of :func:`fit`."""
    return {
        "method": name,
        "global_step": result.global_step,
        "final_loss": result.final_loss,
        "seconds": round(result.seconds, 4),
        "trained_parameters": result.trained_parameters,
        "resumed_from": result.resumed_from,
        **extra,
    }


def train_recipe(model: nn.Module, dataset: TensorDataset, config: TrainConfig, work_dir: str | Path | None = None):
    """Train ``model`` in place on ``dataset`` with ``config``'s recipe (epochs, batch size, optimizer, seed...).

    The original model, the retrain oracle and the ``retrain`` method all train through here, so the same recipe and
    seed give the same weights.
    """
    return fit(
        model,
        dataset,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        seed=config.seed,
        max_train_steps=config.max_train_steps,
        work_dir=work_dir,
        checkpointing_steps=config.checkpointing_steps,
    )


def fresh_model(model_config: ModelConfig, num_classes: int, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """A newly initialised model (weights drawn with ``seed``)."""
    torch.manual_seed(seed)
    return build_model(replace(model_config, num_classes=num_classes, input_shape=tuple(input_shape)))


def reinitialise(model: nn.Module, seed: int) -> str:
    """Give ``model`` fresh weights drawn with ``seed``, in place; returns how (``model_config`` or
    ``reset_parameters``). Models built here are rebuilt from ``model.config`` exactly as :func:`fresh_model` builds
    them; other modules have ``reset_parameters()`` called on every submodule that has one."""
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig) and config.num_classes is not None and config.input_shape is not None:
        model.load_state_dict(fresh_model(config, config.num_classes, config.input_shape, seed=seed).state_dict())
        return "model_config"
    torch.manual_seed(seed)
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return "reset_parameters"


def train_classifier(config: TrainConfig, work_dir: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Build and train the model ``config`` describes; return it and a JSON-serialisable summary."""
    splits = load_dataset(config.dataset, config.data_seed, config.test_size)
    train_set = (
        subset_by_class(splits.train, config.exclude_classes, keep=False) if config.exclude_classes else splits.train
    )
    model = fresh_model(config.model, splits.num_classes, splits.input_shape, config.seed)
    result = train_recipe(model, train_set, config, work_dir)
    info = {
        "train_samples": len(train_set),
        "global_step": result.global_step,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 4),
        "resumed_from": result.resumed_from,
    }
    return model.eval(), info


def warm_up() -> None:
    """One tiny training run before the clock matters: the first run in a process pays one-off costs (imports,
    Accelerate's setup, about a second) that would otherwise inflate whichever model is timed first (the method in
    ``concept-erase unlearn``, usually the oracle in a benchmark) and so its cost relative to retraining."""
    data = TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
    fit(nn.Linear(4, 2), data, epochs=1, batch_size=4, learning_rate=1e-3, name="warm-up")
