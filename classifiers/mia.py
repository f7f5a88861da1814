"""Membership-inference attacks (MIA) that measure whether a classifier still "remembers" its forget set.

Both attacks follow the forget-efficacy protocol of Unlearn-Sparse (Jia et al., NeurIPS 2023) and SalUn (Fan et al.,
ICLR 2024): an attacker learns to tell the model's training samples from unseen samples using the retain set, then
judges the forget set. An unlearned model should make its forget samples look unseen.

- **shadow members** (label 1): a subset of the retain set of the size of the test set (their code takes the first
  ``len(test)`` retain samples, ``Subset(retain, range(len(test)))``; here a random subset drawn with ``seed``, which
  is the same thing for a retain set in random order and lets the subset vary across seeds). When the retain set is
  smaller than the test set, all of it is used. Classes are not rebalanced: the attacker is fit on the two sets as
  they are (equal sizes in the usual case), with the estimators' default, unweighted loss;
- **shadow non-members** (label 0): the test set given (``unlearning_metrics`` passes ``task.test_retain``: the test
  split without the forgotten classes for class-wise scenarios, as their loaders drop those classes' test images;
  the whole test split otherwise);
- **target**: the forget set; the score is the percentage of forget samples the attacker calls non-members.

:func:`mia_efficacy` is their "MIA-Efficacy" (the ``confidence`` entry of their ``SVC_MIA``, with ``target_train``
None): the feature is the softmax probability of each sample's true label, one scalar per sample, and the attacker
is ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")``. Higher is better forgetting; a model retrained without a
forgotten class scores about 100 on it, a model that still fits a random forget set as well as its retain set scores
low (roughly the share of test samples that look like training samples to the attacker, e.g. ~5-20).

:func:`loss_mia` is a second, simpler attack: the feature is the per-sample cross-entropy loss (seen by the attacker
through its logarithm, which only rescales it) and the attacker ``sklearn.linear_model.LogisticRegression()``.
Its ``non_member_rate`` reads like MIA-efficacy; its ``auc`` is the ROC AUC (in percent) of the attacker's member
probability separating forget samples (positives) from the test samples (negatives): 50 means the forget set looks
like unseen data, 100 that it looks entirely like training data, below 50 that it looks less familiar than unseen data
(what a forgotten class does).

Every number depends on the dataset, the model, the size of the sets and the attacker, so values from other papers
(CIFAR-10 ResNet-18 in SalUn) are not comparable with these: compare methods with the retrain oracle on the same task.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.models import predict_logits
from concept_erase.core.errors import EmptyDataError

__all__ = ["true_class_confidence", "per_sample_loss", "shadow_members", "mia_efficacy", "loss_mia"]


def true_class_confidence(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> np.ndarray:
    """Softmax probability of each sample's label, shape ``(N, 1)`` (the feature of :func:`mia_efficacy`)."""
    probs = torch.softmax(predict_logits(model, dataset, batch_size), dim=1)
    return probs.gather(1, dataset.tensors[1][:, None]).double().numpy()


def per_sample_loss(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> np.ndarray:
    """Cross-entropy loss of each sample in nats (float64), shape ``(N,)``."""
    logits = predict_logits(model, dataset, batch_size).double()
    return nn.functional.cross_entropy(logits, dataset.tensors[1], reduction="none").numpy()


def shadow_members(retain: TensorDataset, size: int, seed: int = 0) -> TensorDataset:
    """``size`` retain samples drawn without replacement with ``seed`` (all of ``retain`` when it is smaller)."""
    if size >= len(retain):
        return retain
    order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed))[:size]
    index = order.sort().values
    return TensorDataset(*(tensor[index] for tensor in retain.tensors))


def _check_sets(retain: TensorDataset, test: TensorDataset, forget: TensorDataset) -> None:
    empty = [name for name, data in (("retain", retain), ("test", test), ("forget", forget)) if len(data) == 0]
    if empty:
        raise EmptyDataError(f"a membership-inference attack needs samples in the {' and '.join(empty)} set")


def _fit_attacker(attacker, members: np.ndarray, non_members: np.ndarray):
    """Fit ``attacker`` on members (label 1) and non-members (label 0); features are ``(N, d)`` arrays."""
    features = np.concatenate([members, non_members]).reshape(len(members) + len(non_members), -1)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    return attacker.fit(features, labels)


def mia_efficacy(
    model: nn.Module,
    retain: TensorDataset,
    test: TensorDataset,
    forget: TensorDataset,
    *,
    seed: int = 0,
    batch_size: int = 512,
) -> float:
    """MIA-efficacy in percent: the share of ``forget`` that an SVC on true-class confidence calls non-members.

    The attacker is fit on :func:`shadow_members` of ``retain`` (``len(test)`` samples drawn with ``seed``; label 1)
    and on ``test`` (label 0); see the module docstring. Raises EmptyDataError when a set is empty.
    """

    _check_sets(retain, test, forget)
    members = shadow_members(retain, len(test), seed)
    feature = lambda data: true_class_confidence(model, data, batch_size)  # noqa: E731
    attacker = _fit_attacker(SVC(C=3, gamma="auto", kernel="rbf"), feature(members), feature(test))
    return float(100.0 * np.mean(attacker.predict(feature(forget)) == 0))


def loss_mia(
    model: nn.Module,
    retain: TensorDataset,
    test: TensorDataset,
    forget: TensorDataset,
    *,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, float]:
    """A logistic-regression attack on the per-sample loss, fit like :func:`mia_efficacy`.

    Returns ``{"non_member_rate": % of forget called non-members, "auc": % ROC AUC of the attacker's member
    probability, forget samples (positive) against test samples (negative)}``.
    """

    _check_sets(retain, test, forget)
    members = shadow_members(retain, len(test), seed)
    feature = lambda data: np.log(np.maximum(per_sample_loss(model, data, batch_size), 1e-12))  # noqa: E731
    test_feature, forget_feature = feature(test), feature(forget)
    attacker = _fit_attacker(LogisticRegression(), feature(members), test_feature)
    non_member_rate = 100.0 * np.mean(attacker.predict(forget_feature[:, None]) == 0)
    scores = attacker.predict_proba(np.concatenate([forget_feature, test_feature])[:, None])[:, 1]
    truth = np.concatenate([np.ones(len(forget_feature)), np.zeros(len(test_feature))])
    return {"non_member_rate": float(non_member_rate), "auc": float(100.0 * roc_auc_score(truth, scores))}
