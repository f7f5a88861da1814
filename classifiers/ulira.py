"""U-LiRA: a per-example membership-inference attack on unlearning (Hayes et al., SaTML 2025).

Population-level attacks (:mod:`classifiers.mia`) fit one threshold for every sample, so a forget sample that was
unusually easy or hard to begin with hides among the others. U-LiRA asks, for each forget sample separately, whether
the model in front of it looks like one that was trained on the sample and then unlearned it, or like one that never
saw it:

1. the **targets** are the forget set of a sample-wise scenario (``random:F``, ``indices:FILE``); class-wise
   scenarios are refused: their targets' classes are missing from training, so no model has "never seen" them in
   the same sense;
2. for each of ``shadows`` shadow runs ``k`` a random half of the targets is drawn as "in"; a shadow model is trained
   from scratch (the job's recipe, seed ``recipe.seed * 1009 + 1 + k``) on the retain set plus the in-targets, and
   the method is applied to it with the in-targets as its forget set. Each target is then, in shadow ``k``, either
   *unlearned* or *never trained on*;
3. the feature is the logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of the target's label;
4. leave-one-out, as in the paper: each shadow in turn is the attacked model; per target, Gaussians of ``phi`` are
   fit over the other shadows where it was unlearned and where it was never trained on (per-example means, one
   variance per group pooled over the targets: LiRA's fixed-variance variant, which holds up with few shadows); the
   score is the log likelihood ratio ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``;
5. over every (shadow, target) pair: ``auc``, the ROC AUC (%) of the score for unlearned (positive) against never
   trained on, and ``balanced_accuracy`` (%) at the best threshold and at 0 (``balanced_accuracy_at_0``).

50 is perfect unlearning: an unlearned sample looks exactly like one never trained on. The retrain oracle sits there
by construction (its shadows never see the in-targets), so its figure checks the attack, not the method: a value far
from 50 means too few shadows. The best-threshold accuracy is chosen on the scores themselves, so it reads a little
above 50 even then; the AUC does not.

The job's own models are also scored with Gaussians fit on all shadows: ``unlearned_called_in`` is the % of the real
unlearned model's forget samples the test calls unlearned (score > 0) and, on the oracle's entry, the same for the
retrain oracle (where every target was never trained on).

Shadow models are trained once and cached like the oracle (safetensors under ``$CONCEPT_ERASE_CACHE/classifiers``,
keyed by the dataset's content and split, the excluded targets, the architecture and the recipe with its seed); only
the method is re-run.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from classifiers.data import DatasetSplits, Scenario, UnlearningTask
from classifiers.models import predict_logits
from classifiers.oracle import _builder, _key, _reference
from classifiers.training import TrainConfig
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError, EmptyDataError

__all__ = ["MIN_SHADOWS", "ULiRAConfig", "check_scenario", "logit_confidence", "shadow_masks", "ulira_attack"]

MIN_SHADOWS = 2  # leave-one-out needs at least one reference shadow per attacked shadow

# unlearn(model, task, seed): apply the method in place to ``model`` for ``task``
Unlearn = Callable[[nn.Module, UnlearningTask, int], object]


@dataclass
class ULiRAConfig:
    """U-LiRA settings: the number of shadow runs, whether to show a progress bar."""

    shadows: int = 8
    progress: bool = True

    NUMBER_RANGES: ClassVar[dict] = {"shadows": None}

    def __post_init__(self) -> None:
        check_numbers(self)
        if isinstance(self.shadows, bool) or not isinstance(self.shadows, int) or self.shadows < MIN_SHADOWS:
            raise ConfigError(f"ulira shadows must be an integer >= {MIN_SHADOWS}, got {self.shadows!r}")


def check_scenario(scenario: str | Scenario) -> None:
    """Refuse a scenario whose targets cannot be held out (class-wise forgetting)."""
    parsed = Scenario.parse(scenario)
    if parsed.kind in ("class", "subclass"):
        raise ConfigError(
            f"U-LiRA needs a sample-wise scenario (random:F or indices:FILE), got {parsed}: the targets of a "
            "class-wise scenario cannot be held out"
        )


def logit_confidence(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> np.ndarray:
    """``phi = log(p_y / (1 - p_y))`` per sample (float64), computed stably from the logits."""
    logits = predict_logits(model, dataset, batch_size).double()
    labels = dataset.tensors[1][:, None]
    own = logits.gather(1, labels).squeeze(1)
    others = logits.scatter(1, labels, float("-inf")).logsumexp(dim=1)
    return (own - others).numpy()


def shadow_masks(num_targets: int, shadows: int, seed: int) -> np.ndarray:
    """``(shadows, num_targets)`` booleans: in each row a random half (rounded down) of the targets is "in"."""
    masks = np.zeros((shadows, num_targets), dtype=bool)
    for k in range(shadows):
        order = torch.randperm(num_targets, generator=torch.Generator().manual_seed(seed * 1009 + k))
        masks[k, order[: num_targets // 2].numpy()] = True
    return masks


def _subset(dataset: TensorDataset, index: torch.Tensor) -> TensorDataset:
    return TensorDataset(*(t[index] for t in dataset.tensors))


def _shadow_keep(task: UnlearningTask, splits: DatasetSplits, inside: np.ndarray) -> torch.Tensor:
    """Which training samples a shadow model is trained on: all but the targets that are "out" in it."""
    keep = torch.ones(len(splits.train), dtype=torch.bool)
    keep[task.forget_indices[torch.as_tensor(~inside)]] = False
    return keep


def _shadow_task(task: UnlearningTask, splits: DatasetSplits, inside: np.ndarray) -> UnlearningTask:
    """The task a shadow model unlearns: its in-targets, with the indices re-numbered into the shadow's own training
    split (retain + in-targets in the training split's order), so that methods which replay or prepare the training
    run (``amnesiac``, ``deltagrad``, ...) see the data the shadow was trained on."""
    forget = task.forget_indices[torch.as_tensor(inside)]
    position = _shadow_keep(task, splits, inside).cumsum(0) - 1  # index in the shadow's training split
    retain = None if task.retain_indices is None else position[task.retain_indices]
    return dataclasses.replace(
        task, forget=_subset(splits.train, forget), forget_indices=position[forget], retain_indices=retain
    )


class _Gaussians:
    """Per-target means of phi over the unlearned / never-trained shadows, one pooled variance per group."""

    def __init__(self, phi: np.ndarray, masks: np.ndarray):
        self.mu, self.var = [], []
        for group in (masks, ~masks):
            count = group.sum(axis=0)
            total = np.where(group, phi, 0.0).sum(axis=0)
            have = count > 0
            fallback = float(phi[group].mean()) if group.any() else 0.0
            mu = np.where(have, total / np.maximum(count, 1), fallback)
            residual = np.where(group, phi - mu, 0.0)
            dof = max(int(group.sum() - have.sum()), 1)
            var = (
                float((residual**2).sum() / dof)
                if group.sum() > have.sum()
                else float(np.var(phi[group]) if group.any() else 1.0)
            )
            self.mu.append(mu)
            self.var.append(max(var, 1e-6))

    def score(self, phi: np.ndarray) -> np.ndarray:
        def log_normal(x, mu, var):
            return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)

        return log_normal(phi, self.mu[0], self.var[0]) - log_normal(phi, self.mu[1], self.var[1])


def _balanced_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> float:
    if threshold is not None:
        called = scores > threshold
        return 0.5 * (called[labels].mean() + (~called[~labels]).mean())
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.max(0.5 * (tpr + 1 - fpr)))


def _shadow_models(
    task: UnlearningTask,
    splits: DatasetSplits,
    template,
    recipe: TrainConfig,
    masks: np.ndarray,
    cache: bool,
    bar,
) -> list[tuple[nn.Module, TrainConfig]]:
    out = []
    for k, inside in enumerate(masks):
        shadow_recipe = dataclasses.replace(recipe, seed=recipe.seed * 1009 + 1 + k)
        excluded = task.forget_indices[torch.as_tensor(~inside)]
        keep = _shadow_keep(task, splits, inside)
        build = _builder(splits, template, shadow_recipe.seed)
        key = _key("ulira-shadow", splits, build(), shadow_recipe, forget=excluded)
        train_set = _subset(splits.train, keep.nonzero().flatten())
        out.append((_reference(key, build, train_set, shadow_recipe, cache).model, shadow_recipe))
        bar.update(1)
    return out


def ulira_attack(
    task: UnlearningTask,
    splits: DatasetSplits,
    template,
    recipe: TrainConfig,
    methods: dict[str, Unlearn],
    config: ULiRAConfig | None = None,
    *,
    targets: dict[str, nn.Module] | None = None,
    cache: bool = True,
    seed: int = 0,
) -> dict[str, dict]:
    """U-LiRA (module docstring) of each named method in ``methods`` on ``task``; shadows shared by all of them.

    ``template`` is the architecture (a :class:`~classifiers.models.ModelConfig` or an ``nn.Module`` to copy and
    re-initialise), ``recipe`` the training recipe of the original. ``methods`` maps a name to
    ``unlearn(model, shadow_task, seed)``, which forgets ``shadow_task.forget`` in place. ``targets`` maps a name in
    ``methods`` to a real model to score with Gaussians fit on every shadow (``unlearned_called_in``).
    Returns ``{name: {"auc", "balanced_accuracy", "balanced_accuracy_at_0", "shadows", "targets", ...}}`` in %.

    Raises:
        ConfigError: a class-wise scenario, a method that cannot run on a shadow model.
        EmptyDataError: fewer than 2 targets.
    """
    config = config or ULiRAConfig()
    check_scenario(task.scenario)
    if task.forget_indices is None or len(task.forget) < 2:
        raise EmptyDataError(f"U-LiRA needs at least 2 forget samples as targets, got {len(task.forget)}")
    masks = shadow_masks(len(task.forget), config.shadows, seed)
    targets = targets or {}
    total = config.shadows * (1 + len(methods))
    with tqdm(total=total, desc="u-lira shadows", unit="model", disable=not config.progress) as bar:
        shadows = _shadow_models(task, splits, template, recipe, masks, cache, bar)
        results = {}
        for name, unlearn in methods.items():
            phi = np.empty(masks.shape)
            for k, (shadow, shadow_recipe) in enumerate(shadows):
                model = copy.deepcopy(shadow)
                try:
                    unlearn(model, _shadow_task(task, splits, masks[k]), shadow_recipe.seed)
                except (ConfigError, EmptyDataError) as exc:
                    raise ConfigError(f"U-LiRA: method {name!r} cannot run on a shadow model: {exc}") from None
                phi[k] = logit_confidence(model.eval(), task.forget)
                bar.update(1)
            results[name] = _summary(phi, masks, targets.get(name), task)
    return results


def _summary(phi: np.ndarray, masks: np.ndarray, target: nn.Module | None, task: UnlearningTask) -> dict:
    scores, labels = [], []
    for k in range(len(masks)):
        rest = np.arange(len(masks)) != k
        scores.append(_Gaussians(phi[rest], masks[rest]).score(phi[k]))
        labels.append(masks[k])
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    out = {
        "auc": 100.0 * float(roc_auc_score(labels, scores)),
        "balanced_accuracy": 100.0 * _balanced_accuracy(scores, labels),
        "balanced_accuracy_at_0": 100.0 * float(_balanced_accuracy(scores, labels, 0.0)),
        "shadows": int(len(masks)),
        "targets": int(masks.shape[1]),
    }
    if target is not None:
        called = _Gaussians(phi, masks).score(logit_confidence(target, task.forget)) > 0
        out["unlearned_called_in"] = 100.0 * float(called.mean())
    return out
