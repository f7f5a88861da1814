"""Amnesiac relabelling: train on the forget samples under random wrong labels together with the whole retain set.

This is NOT the amnesiac unlearning of Graves et al. (AAAI 2021), which subtracts recorded training updates (that is
:mod:`classifiers.methods.amnesiac`, registered as ``amnesiac``). It is the variant that public code and the tables
of later papers call "amnesiac" (Chundawat et al., "Can Bad Teaching Induce Forgetting?", AAAI 2023, code
github.com/vikram2000b/bad-teaching-unlearning; reused by the SSD authors, Foster et al., AAAI 2024, and by
DiStruction's tables): every forget sample gets a label drawn uniformly from the classes that are not forgotten
(full-class and sub-class forgetting; for random or explicit samples, from the classes other than its own), drawn
once with ``seed``, and the model is fine-tuned on those relabelled samples shuffled together with the whole retain
set under its true labels.

Defaults are the public code's: 3 epochs, Adam, learning rate 1e-4, batch 128, no weight decay; gradients are
clipped to norm 1 as in every method here (the public code does not clip). Unlike :mod:`random_label` (SalUn's RL,
driven by the forget set with a retain batch per step), one epoch here is a pass over retain + forget: the cost of an
epoch of retraining.

``min_steps`` 90 (3 epochs of mnist5k's training set, 30 batches of 128): at least that many steps on a
smaller data set (digits gives 11 batches per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import UnlearningTask
from classifiers.masking import MaskOptions, prepare_mask
from classifiers.training import UnlearningConfig, fit_method, fit_summary
from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import register_method

__all__ = ["AmnesiacRelabelConfig", "amnesiac_relabel", "relabel_away"]


@dataclass
class AmnesiacRelabelConfig(UnlearningConfig, MaskOptions):
    epochs: int = 3  # passes over retain + relabelled forget (public code: 3)
    min_steps: int = 90  # 3 epochs of mnist5k's train set (3750 samples, 30 batches of 128): see above
    batch_size: int = 128  # public code: 128
    learning_rate: float = 1e-4  # public code: Adam, 1e-4
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"


def relabel_away(labels: torch.Tensor, num_classes: int, excluded: list[int] | None, seed: int) -> torch.Tensor:
    """Random labels drawn with ``seed``: uniform over the classes not in ``excluded`` (class-wise forgetting), or,
    with ``excluded=None``, uniform over the classes other than each sample's own."""
    generator = torch.Generator().manual_seed(seed)
    if excluded is None:
        shift = torch.randint(1, num_classes, labels.shape, generator=generator)
        return (labels + shift) % num_classes
    allowed = torch.tensor([c for c in range(num_classes) if c not in set(excluded)], dtype=torch.int64)
    if len(allowed) == 0:
        raise ConfigError("amnesiac_relabel: every class is forgotten, no label is left to relabel with")
    return allowed[torch.randint(len(allowed), labels.shape, generator=generator)]


@register_method("amnesiac_relabel", AmnesiacRelabelConfig, tags=("classifier",))
def amnesiac_relabel(
    model: nn.Module, task: UnlearningTask, config: AmnesiacRelabelConfig, *, work_dir: Path | None = None
) -> dict:
    """Amnesiac relabelling (the public code's "amnesiac"): fine-tune on randomly relabelled forget samples plus the
    whole retain set."""
    forget_x, forget_y = task.forget.tensors
    excluded = sorted(set(forget_y.tolist())) if task.classwise else None
    labels = relabel_away(forget_y, task.num_classes, excluded, config.seed)
    retain_x, retain_y = task.retain.tensors
    data = TensorDataset(torch.cat([forget_x, retain_x]), torch.cat([labels, retain_y]))
    applier, mask_info = prepare_mask(model, task, config, seed=config.seed)
    model.train()
    result = fit_method(model, data, config, name="amnesiac_relabel", applier=applier, work_dir=work_dir)
    model.eval()
    return fit_summary("amnesiac_relabel", result, excluded_labels=excluded, train_samples=len(data), mask=mask_info)
