"""Retrain from scratch: the exact-unlearning reference every approximate method is measured against.

The model is re-initialised in place and trained on the retain set only, with the same recipe as the original model
(:func:`~classifiers.training.train_recipe`): with the same recipe and seed it reproduces, bit for bit, the oracle
that :func:`~classifiers.training.fresh_model` + ``train_recipe`` on the retain set gives (the "Retrain" row of
Golatkar et al., 2020; Thudi et al., 2022; Fan et al., 2024). It is exact and the most expensive: the cost the other
methods are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from classifiers.data import UnlearningTask
from classifiers.training import UnlearningConfig, fit_summary, reinitialise, train_recipe
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import register_method

__all__ = ["RetrainConfig", "retrain"]


@dataclass
class RetrainConfig(UnlearningConfig):
    """The training recipe (defaults: :class:`~classifiers.training.TrainConfig`'s, i.e. the original model's);
    ``seed`` draws the initialisation and the data order."""

    takes_recipe: ClassVar[bool] = True  # the harness fills these keys from the job's recipe: retrain = the oracle
    momentum: ClassVar[float] = 0.9  # not a key: the recipe's (train_recipe's)
    min_steps: ClassVar[int] = 0  # not a key: the recipe's epochs alone, as the oracle's

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.learning_rate <= 0:  # this one first, then the schedule's other checks
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        super().__post_init__()


@register_method("retrain", RetrainConfig, tags=("classifier",))
def retrain(model: nn.Module, task: UnlearningTask, config: RetrainConfig, *, work_dir: Path | None = None) -> dict:
    """Retrain from scratch on the retain set (exact unlearning; the reference for every other method)."""
    how = reinitialise(model, config.seed)
    result = train_recipe(model, task.retain, config.recipe(), work_dir=work_dir)
    model.eval()
    return fit_summary("retrain", result, reinitialised=how, train_samples=len(task.retain), mask=None)
