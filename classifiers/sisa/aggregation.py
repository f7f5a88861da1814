"""Aggregating the shard models' predictions, the data a SISA estimator accepts, and the ensemble as a module."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import DatasetSplits
from concept_erase.core.errors import ConfigError

__all__ = ["AGGREGATIONS", "aggregate", "as_inputs", "training_data", "Ensemble"]

AGGREGATIONS = ("vote", "mean", "weighted")


def as_inputs(X) -> torch.Tensor:
    """Inputs as a float32 tensor from a tensor, an array, a TensorDataset or DatasetSplits (its test split)."""

    if isinstance(X, DatasetSplits):
        X = X.test
    if isinstance(X, TensorDataset):
        X = X.tensors[0]
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise ConfigError(f"expected a tensor, an array or a TensorDataset of inputs, got {type(X).__name__}")
    return X.float()


def training_data(X, y) -> tuple[torch.Tensor, torch.Tensor, dict]:

    info: dict = {"dataset": "tensors", "split": None, "num_classes": None}
    if isinstance(X, DatasetSplits):
        info = {"dataset": X.name, "split": X.split, "num_classes": X.num_classes}
        X = X.train
    if isinstance(X, TensorDataset):
        X, y = X.tensors[0], X.tensors[1]
    if y is None:
        raise ConfigError("fit needs labels: pass a TensorDataset, DatasetSplits, or X and y")
    inputs, labels = as_inputs(X), torch.as_tensor(np.asarray(y)).long().reshape(-1)
    if len(inputs) != len(labels):
        raise ConfigError(f"fit got {len(inputs)} inputs but {len(labels)} labels")
    if len(labels) and labels.min() < 0:
        raise ConfigError("labels must be integers 0..num_classes-1")
    info["num_classes"] = info["num_classes"] or (int(labels.max()) + 1 if len(labels) else 0)
    return inputs, labels, info


@torch.no_grad()
def _probabilities(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    parts = [model(x.to(device)).float().softmax(dim=1).cpu() for x in inputs.split(batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, 0)


def aggregate(models: list[nn.Module], weights: list[float], inputs: torch.Tensor, how: str) -> torch.Tensor:
    """Class probabilities ``(N, num_classes)`` of the ensemble; shards with weight 0 (no data left) are left out.

    ``vote``: the fraction of shard models predicting each class; ``mean``: the mean of their softmax outputs;
    ``weighted``: the mean weighted by each shard's number of (surviving) training samples.
    """
    if how not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {how!r}; accepted: {', '.join(AGGREGATIONS)}")
    active = [(m, w) for m, w in zip(models, weights) if w > 0]
    if not active:
        raise ConfigError("every shard has lost all its training data: the ensemble cannot predict")
    total, weight_sum = None, 0.0
    for model, weight in active:
        p = _probabilities(model, inputs)
        if how == "vote":
            p = nn.functional.one_hot(p.argmax(dim=1), p.shape[1]).float()
        w = weight if how == "weighted" else 1.0
        total = p * w if total is None else total + p * w
        weight_sum += w
    return total / weight_sum


class Ensemble(nn.Module):
    """The fitted ensemble as a module whose ``forward`` returns log-probabilities (so softmax gives the aggregated
    probabilities): the harness metrics (``unlearning_metrics``) score it like any classifier."""

    def __init__(self, models: list[nn.Module], weights: list[float], how: str):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.weights = list(weights)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aggregate(list(self.members), self.weights, x, self.how).clamp_min(1e-12).log()
