"""Boundary Shrink: relabel each forget sample with its nearest wrong class and fine-tune toward it.

Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision Space", CVPR 2023,
section 4.1. The forget class's decision region shrinks when its samples are pushed across the nearest decision
boundary. The *neighbour search* finds that boundary with one FGSM step on a frozen copy of the original model:
``x_adv = clamp(x + bound * sign(d CE(f(x), y) / dx), 0, 1)`` rounded to 1/255 (the authors' ``FGSM`` with
``random_start=False``: the step, a projection onto the ``bound`` ball, the valid pixel range and 8-bit discretisation).
The neighbour label is the frozen model's prediction on ``x_adv``. Then the model is fine-tuned on the forget samples
only, with cross-entropy toward those labels (paper and code: SGD, momentum 0.9, no weight decay, no clipping,
10 epochs, batch 64, learning rate 1e-5).

Defaults are the paper's except ``learning_rate: 1e-4``. The paper's 1e-5 was set for CIFAR-10, whose forget class
gives ~790 steps in 10 epochs; a forget class of mnist5k (375 samples) gives 60, and at 1e-5 the small CNN keeps
5-22% of it (UA 78-95 over seeds 0-2). 3e-5 to 1e-3 all reach UA 100 with the retain accuracy of the retrained
oracle (class:3, seeds 0-4); 1e-4 sits inside that range. ``learning_rate=1e-5`` reproduces the paper.

Two points where this differs in form, not in result, from the authors' code:

* The code runs the search per training batch; here it runs once up front. The frozen copy never changes, it is in
  eval mode (no batch statistics) and the search is deterministic, so each sample gets the same label either way.
* When FGSM does not flip the prediction, the code keeps the prediction, i.e. the *true* label, and so reinforces the
  sample. ``fallback: next_best`` (default) takes the highest-scoring other class on ``x_adv`` instead, so that every
  forget sample is moved toward a wrong class; ``fallback: prediction`` reproduces the code.

``min_steps`` 60 (10 epochs of mnist5k's forget class, 6 batches of 64): at least that many steps on a smaller
forget set (digits' class 3 gives 3 batches per epoch).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import UnlearningTask
from classifiers.masking import MaskOptions, prepare_mask
from classifiers.training import UnlearningConfig, fit_method, fit_summary
from concept_erase.core.config import POSITIVE
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.registry import register_method

__all__ = ["BoundaryShrinkConfig", "boundary_shrink", "fgsm", "neighbour_labels"]


@dataclass
class BoundaryShrinkConfig(UnlearningConfig, MaskOptions):
    """Batches of 64 as in the authors' code."""

    epochs: int = 10  # paper: 10
    min_steps: int = 60  # 10 epochs of mnist5k's forget class (375 samples, 6 batches): see the module docstring
    learning_rate: float = 1e-4  # paper: 1e-5 (CIFAR-10); tuned for our models, see the module docstring
    optimizer: ClassVar[str] = "sgd"  # the paper's, always (not a key)
    max_grad_norm: float | None = None  # the authors' code does not clip
    bound: float = 0.1  # L-inf radius of the FGSM neighbour search, in [0, 1] pixel units (paper: 0.1)
    fallback: Literal["next_best", "prediction"] = "next_best"  # when FGSM does not flip (see the module docstring)

    NUMBER_RANGES: ClassVar[dict] = {"bound": POSITIVE}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fallback not in ("next_best", "prediction"):
            raise ConfigError(f"fallback must be next_best or prediction, got {excerpt(self.fallback)}")


def fgsm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, bound: float) -> torch.Tensor:
    """One untargeted FGSM step of size ``bound`` (L-inf), clamped to [0, 1] and rounded to 1/255 as in the code."""
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
    x_adv = (x.detach() + bound * grad.sign()).clamp(0.0, 1.0)
    return torch.round(x_adv * 255) / 255


def neighbour_labels(
    model: nn.Module,
    dataset: TensorDataset,
    bound: float = 0.1,
    fallback: str = "next_best",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighbour label, FGSM flipped the prediction)`` per sample of ``dataset``, on a frozen copy of ``model``.

    With ``fallback="next_best"`` a sample whose prediction FGSM did not flip gets the best-scoring other class on its
    perturbed input, so no neighbour label equals the true label.
    """
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    device = next(frozen.parameters()).device
    inputs, labels = dataset.tensors
    found, flipped = [], []
    for start in range(0, len(labels), batch_size):
        x, y = inputs[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        with torch.no_grad():
            logits = frozen(fgsm(frozen, x, y, bound))
        pred = logits.argmax(dim=1)
        hit = pred != y
        if fallback == "next_best":
            others = logits.scatter(1, y[:, None], float("-inf"))
            pred = torch.where(hit, pred, others.argmax(dim=1))
        found.append(pred.cpu())
        flipped.append(hit.cpu())
    return torch.cat(found), torch.cat(flipped)


@register_method("boundary_shrink", BoundaryShrinkConfig, tags=("classifier",))
def boundary_shrink(
    model: nn.Module, task: UnlearningTask, config: BoundaryShrinkConfig, *, work_dir: Path | None = None
) -> dict:
    """Boundary Shrink (Chen et al., CVPR 2023): fine-tune the forget samples toward their FGSM neighbour labels."""
    start = time.perf_counter()
    applier, mask_info = prepare_mask(model, task, config, seed=config.seed)
    targets, flipped = neighbour_labels(model, task.forget, config.bound, config.fallback)
    search_seconds = time.perf_counter() - start
    model.train()  # as the authors' code (matters for batch norm / dropout only)
    result = fit_method(
        model,
        TensorDataset(task.forget.tensors[0], targets),
        config,
        name="boundary_shrink",
        applier=applier,
        work_dir=work_dir,
    )
    model.eval()
    return fit_summary(
        "boundary_shrink",
        result,
        neighbour_labels={str(k): v for k, v in sorted(Counter(targets.tolist()).items())},
        fgsm_flip_fraction=round(float(flipped.float().mean()), 4),
        search_seconds=round(search_seconds, 4),
        seconds=round(time.perf_counter() - start, 4),
        mask=mask_info,
    )
