"""The feature-injection test of Izzo et al. (AISTATS 2021): does a deletion remove what only the deleted points taught?

An input coordinate that is zero on every sample (the first pixel: a corner, blank in digits and MNIST) is set to
``value`` on the points to be deleted only, before the original model is trained. The original learns to use it
(it identifies those points); a model retrained without them gets no gradient from it, so with weight decay or an
L2 penalty its weight is zero (without one, it stays at its initial value). How much weight the model puts on the
feature after a deletion measures how much of the deleted points is left.

    splits = inject_feature(splits, task.forget_indices, value=1.0)
    injected_feature_weight(model)          # ||W[:, 0]|| of the first linear layer on the flattened input

In the harness: ``UnlearnJob(inject_feature=1.0)`` trains the original and the oracle on the injected data and
reports ``injected_feature`` (the weight of the unlearned model, the original, the oracle, and the ratio
unlearned / original). Models with a linear first layer on the flattened input can be measured: the ``mlp`` family
(``hidden_sizes: []`` is a linear model, whose read-out weight this is).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import DatasetSplits
from classifiers.models import MLP
from concept_erase.core.errors import ConfigError

__all__ = ["INJECTED_INDEX", "inject_feature", "injected_feature_weight", "injection_metrics"]

INJECTED_INDEX = 0  # the flattened input coordinate that carries the injected feature (channel 0, row 0, column 0)


def inject_feature(splits: DatasetSplits, rows, value: float = 1.0) -> DatasetSplits:
    """A copy of ``splits`` whose training samples ``rows`` carry ``value`` in the first input coordinate.

    Raises:
        ConfigError: the coordinate is not zero on every sample (it would not be a feature of the deleted points
            only), ``value`` is zero or not finite, or a row is out of range.
    """
    value = float(value)
    if value == 0 or value != value or abs(value) == float("inf"):
        raise ConfigError(f"inject_feature needs a finite non-zero value, got {value}")
    x_train, y_train = splits.train.tensors
    rows = torch.as_tensor(rows, dtype=torch.long).flatten()
    if rows.numel() == 0:
        raise ConfigError("inject_feature needs at least one training sample to inject the feature into")
    if int(rows.min()) < 0 or int(rows.max()) >= len(x_train):
        raise ConfigError(f"inject_feature: rows must be training indices 0..{len(x_train) - 1}")
    used = [name for name, x in (("training", x_train), ("test", splits.test.tensors[0])) if x.flatten(1)[:, 0].any()]
    if used:
        raise ConfigError(
            f"feature injection needs an input coordinate that is zero everywhere; the first one is not zero on the "
            f"{' and '.join(used)} samples of {splits.name!r}"
        )
    x = x_train.clone()  # the caller's splits stay as they are
    flat = x.view(len(x), -1)
    flat[rows, INJECTED_INDEX] = value
    return dataclasses.replace(splits, train=TensorDataset(x, y_train), name=f"{splits.name}+injected")


def injected_feature_weight(model: nn.Module) -> float:
    """The L2 norm over outputs of the first linear layer's weights on the injected coordinate.

    Raises:
        ConfigError: the model's first layer is not linear on the flattened input (not an ``mlp``).
    """
    if not isinstance(model, MLP):
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise ConfigError(
            f"the feature-injection metric needs a model whose first layer is linear on the inputs: model 'mlp' "
            f"(hidden_sizes [] for a linear model), got {name!r}"
        )
    first = next(m for m in model.net if isinstance(m, nn.Linear))
    return float(first.weight.detach()[:, INJECTED_INDEX].double().norm())


def injection_metrics(model: nn.Module, original: nn.Module, oracle: nn.Module | None, value: float) -> dict:
    """The ``injected_feature`` entry of a job's metrics."""
    weight, before = injected_feature_weight(model), injected_feature_weight(original)
    return {
        "value": float(value),
        "index": INJECTED_INDEX,
        "weight": weight,
        "original": before,
        "oracle": None if oracle is None else injected_feature_weight(oracle),
        "ratio_to_original": weight / before if before > 0 else None,
    }
