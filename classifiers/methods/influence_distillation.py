"""Influence distillation (seed 002, the project's own method): distil a fresh student from the trained model while
an influence term pushes the student away from the forget set.

The teacher ``t`` is the trained model (frozen, ``eval()`` mode); the student ``s`` is a freshly initialised network,
by default of the teacher's architecture (``student: null``), or any :class:`~classifiers.models.ModelConfig` that
takes the teacher's inputs and has its number of outputs (a smaller one: ``student: {name: cnn, channels: [16]}``).
The student minimises, per step, over a batch ``B_r`` of the retain set ``D_r`` and a batch ``B_f`` of the forget set
``D_f`` of the same size::

    L(s) = 1/|B_r| sum_{x in B_r} match(s(x), t(x))                       (logit matching on the kept training data)
           - influence_weight * 1/|B_f| sum_{(x, y) in B_f} min(CE(s(x), y), forget_loss_cap)   (the influence term)

* ``match`` is the mean squared difference of the logits (``matching: mse``, logit matching in Ba and Caruana's
  sense) or ``T^2 KL(softmax(t / T) || softmax(s / T))`` (``matching: kl``, Hinton et al.'s soft targets at
  ``temperature`` T).
* The influence term is the negative of the teacher's training loss (the cross-entropy with the true labels)
  on the forget set, evaluated on the student: minimising ``L`` raises the student's loss on ``D_f``. Uncapped, the
  term is unbounded below and the run diverges (the student drives the forget samples' true-class logits to minus
  infinity); each sample's loss is therefore capped at ``forget_loss_cap``, by default ``log(num_classes)``, the loss
  of a uniform guess: once a forget sample is predicted no better than chance it exerts no more pull.
  ``influence_weight: 0`` is plain distillation on the retain set (comparison (b) of the seed).
* The logit matching runs on the retain set only: matching the teacher on ``D_f`` would teach the student exactly
  what it must forget. The teacher's retain logits are computed once, before training.
* Each retain sample is paired with a forget sample (the forget set repeated, in an order drawn with ``seed``, as
  often as needed to cover the retain set), so a batch holds ``batch_size`` of each and an epoch is one pass over
  the retain set.

Training: Adam at 3e-3, batch size 64, 10 epochs from scratch (the original recipe's optimiser settings at half its
20 epochs), gradient norm clipped to 1 like every method here. The student is drawn with ``seed`` (the teacher's
architecture: :func:`~classifiers.training.reinitialise`; another one: built from its config after
``torch.manual_seed(seed)``). Distillation trains a network from scratch, so its cost is of the order of retraining
(measured: ``scripts/bench_influence_distillation.py``, docs/classifiers.md).

The method changes ``model`` in place like every method: with the teacher's architecture its weights are replaced
by the student's; with another architecture the module itself becomes the student (its class and submodules are
replaced, so ``model.config`` and a saved model directory describe the student). A student that cannot take the
task's inputs or does not output one score per class is refused, before training, with a
:class:`~concept_erase.core.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import UnlearningTask
from classifiers.models import ModelConfig, build_model, check_fits, predict_logits
from classifiers.training import UnlearningConfig, fit_method, fit_summary, reinitialise
from concept_erase.core.config import POSITIVE
from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import register_method

__all__ = [
    "InfluenceDistillationConfig",
    "influence_distillation",
    "influence_distillation_loss",
    "build_student",
    "forget_loss",
]


@dataclass
class InfluenceDistillationConfig(UnlearningConfig):
    """``seed`` draws the student's initialisation, the pairing of retain and forget samples and the batch order."""

    student: ModelConfig | None = None  # null: the teacher's architecture, re-initialised
    influence_weight: float = 1.0  # 0: plain distillation on the retain set (no influence term)
    forget_loss_cap: float | None = None  # per-sample cap of the forget loss; null: log(num_classes)
    matching: Literal["mse", "kl"] = "mse"  # logit matching: mean squared logit difference, or KL of soft targets
    temperature: float = 1.0  # matching: kl only
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"

    NUMBER_RANGES: ClassVar[dict] = {"forget_loss_cap": POSITIVE, "temperature": POSITIVE}


def forget_loss(logits: torch.Tensor, labels: torch.Tensor, cap: float) -> torch.Tensor:
    """Mean over the batch of ``min(CE(logits, labels), cap)`` (per sample)."""
    return nn.functional.cross_entropy(logits, labels, reduction="none").clamp(max=cap).mean()


def influence_distillation_loss(
    student_retain: torch.Tensor,
    teacher_retain: torch.Tensor,
    student_forget: torch.Tensor | None,
    forget_labels: torch.Tensor | None,
    *,
    influence_weight: float,
    cap: float,
    matching: str = "mse",
    temperature: float = 1.0,
) -> torch.Tensor:
    """The loss of the module docstring: logit matching on the retain batch minus ``influence_weight`` times the
    capped cross-entropy of the student on the forget batch (no forget term when ``student_forget`` is None)."""
    if matching == "mse":
        loss = nn.functional.mse_loss(student_retain, teacher_retain)
    else:
        target = torch.softmax(teacher_retain / temperature, dim=1)
        student = torch.log_softmax(student_retain / temperature, dim=1)
        loss = nn.functional.kl_div(student, target, reduction="batchmean") * temperature**2
    if student_forget is not None and influence_weight > 0:
        loss = loss - influence_weight * forget_loss(student_forget, forget_labels, cap)
    return loss


def build_student(model: nn.Module, task: UnlearningTask, config: InfluenceDistillationConfig) -> tuple[nn.Module, str]:
    """A freshly initialised student (drawn with ``config.seed``) and how it was made.

    Raises:
        ConfigError: the student's ``num_classes`` / ``input_shape`` differ from the task's (the teacher's), its
            config is invalid for these inputs, or it cannot take them or gives another number of outputs.
    """
    if config.student is None:
        student = copy.deepcopy(model)
        return student, f"teacher architecture, {reinitialise(student, config.seed)}"
    spec = config.student
    expected = {"num_classes": task.num_classes, "input_shape": tuple(task.input_shape)}
    for key, value in expected.items():
        given = getattr(spec, key)
        if given is not None and given != value:
            raise ConfigError(
                f"student: {key} {given} cannot distil the teacher on {task.dataset!r} (it has {key} {value}); "
                f"leave it null to take the teacher's"
            )
    try:
        torch.manual_seed(config.seed)
        student = build_model(replace(spec, **expected))
    except ConfigError as exc:
        raise ConfigError(f"student {spec.name!r} cannot take the teacher's inputs: {exc}") from None
    check_fits(student, task.retain.tensors[0][:2], task.num_classes, task.dataset, who=f"student {spec.name!r}")
    return student, "student config"


def _paired_data(task: UnlearningTask, teacher_logits: torch.Tensor, with_forget: bool, seed: int) -> TensorDataset:
    """(retain input, teacher logits[, a forget input, its label]) per retain sample; the forget set is repeated in
    an order drawn with ``seed``."""
    retain_x = task.retain.tensors[0]
    if not with_forget:
        return TensorDataset(retain_x, teacher_logits)
    forget_x, forget_y = task.forget.tensors
    generator = torch.Generator().manual_seed(seed)
    repeats = -(-len(retain_x) // len(forget_x))
    order = torch.cat([torch.randperm(len(forget_x), generator=generator) for _ in range(repeats)])[: len(retain_x)]
    return TensorDataset(retain_x, teacher_logits, forget_x[order], forget_y[order])


def _loss(config: InfluenceDistillationConfig, cap: float):
    def loss_fn(student: nn.Module, batch) -> torch.Tensor:
        if len(batch) == 2:
            inputs, teacher = batch
            return influence_distillation_loss(
                student(inputs), teacher, None, None, influence_weight=0.0, cap=cap, matching=config.matching,
                temperature=config.temperature,
            )  # fmt: skip
        inputs, teacher, forget_x, forget_y = batch
        logits = student(torch.cat([inputs, forget_x]))
        return influence_distillation_loss(
            logits[: len(inputs)], teacher, logits[len(inputs) :], forget_y, influence_weight=config.influence_weight,
            cap=cap, matching=config.matching, temperature=config.temperature,
        )  # fmt: skip

    return loss_fn


@torch.no_grad()
def _mean_forget_loss(model: nn.Module, data: TensorDataset) -> float:
    logits = predict_logits(model, data)
    return float(nn.functional.cross_entropy(logits, data.tensors[1]))


def _become(model: nn.Module, student: nn.Module) -> None:
    """Make ``model`` the student, in place: load its weights when the architectures match, else take over its
    class and submodules."""
    own, theirs = model.state_dict(), student.state_dict()
    same = type(model) is type(student) and own.keys() == theirs.keys()
    if same and all(own[k].shape == theirs[k].shape for k in own):
        model.load_state_dict(theirs)
        return
    model.__class__ = type(student)
    model.__dict__.clear()
    model.__dict__.update(student.__dict__)


@register_method(
    "influence_distillation",
    InfluenceDistillationConfig,
    tags=("classifier",),
    description="Influence distillation (seed 002): distil a fresh student on the retain set, minus its capped "
    "loss on the forget set",
)
def influence_distillation(
    model: nn.Module, task: UnlearningTask, config: InfluenceDistillationConfig, *, work_dir: Path | None = None
) -> dict:
    """Distil a fresh student from ``model`` by logit matching on the retain set while the influence term (minus the
    student's capped cross-entropy on the forget set) pushes it away from the forget set; ``model`` becomes the
    student."""
    student, how = build_student(model, task, config)
    teacher_logits = predict_logits(model, task.retain)
    teacher_forget_loss = _mean_forget_loss(model, task.forget)
    cap = config.forget_loss_cap if config.forget_loss_cap is not None else math.log(task.num_classes)
    with_forget = config.influence_weight > 0
    data = _paired_data(task, teacher_logits, with_forget, config.seed)
    student.train()
    result = fit_method(
        student, data, config, name="influence_distillation", work_dir=work_dir, loss_fn=_loss(config, cap)
    )
    student.eval()
    teacher_parameters = sum(p.numel() for p in model.parameters())
    _become(model, student)
    model.eval()
    return fit_summary(
        "influence_distillation",
        result,
        student=how,
        student_parameters=sum(p.numel() for p in model.parameters()),
        teacher_parameters=teacher_parameters,
        forget_loss_cap=cap,
        teacher_forget_loss=teacher_forget_loss,
        student_forget_loss=_mean_forget_loss(model, task.forget),
    )
