"""UNSIR: learn error-maximising noise for the forget classes, impair the model with it, then repair on retain data.

Tarun, Chundawat, Mandal and Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023 (code:
github.com/vikram2000b/Fast-Machine-Unlearning). Three stages:

1. **Noise**: per forget class ``c``, a batch of ``noise_batch_size`` inputs ``N`` (drawn from a standard normal
   with ``seed``) is optimised with Adam to *maximise* the frozen model's loss on label ``c``:
   minimise ``-CE(f(N), c) + noise_l2 * mean_i ||N_i||^2`` (the authors' lambda 0.1, ``noise_steps`` 40 = their 5
   epochs of 8 steps, Adam learning rate 0.1, noise batch 256).
2. **Impair**: one epoch on the noise, repeated ``noise_repeats`` times (authors: 20 batches per class), labelled
   ``c``, shuffled together with a retain subset of at most ``retain_per_class`` samples per retained class
   (authors: 1000), at a high learning rate.
3. **Repair**: one epoch on the same retain subset at a lower learning rate.

Authors' optimizer and rates are kept: Adam, batch 256, impair 0.02, repair 0.01; gradients are clipped to norm 1 as
in every method here (the authors do not clip).

UNSIR is defined for class-wise forgetting. ``class:C`` learns one noise per forgotten class. ``subclass:C`` learns
the noise for the super-class label the forget samples carry, as the SSD authors' re-implementation does (so the
other sub-classes of that super-class are impaired too and must come back in the repair step). Random and explicit
index scenarios are refused with a ConfigError: their forget samples share every class with the retain set, so there
is no class whose error could be maximised without attacking retained data.

``impair_min_steps`` 34 and ``repair_min_steps`` 14 (one epoch of each phase on mnist5k's class:3): at least that
many steps on a smaller data set (digits gives 25 and 5), so that the repair restores the retained classes there too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import UnlearningTask
from classifiers.masking import MaskOptions, prepare_mask
from classifiers.training import check_schedule, fit
from concept_erase.core.config import COUNT, NON_NEGATIVE, check_numbers
from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import register_method

__all__ = ["UnsirConfig", "error_maximising_noise", "noise_objective", "unsir"]


@dataclass
class UnsirConfig(MaskOptions):
    noise_batch_size: int = 256  # noise samples learned per forget class (authors: 256)
    noise_steps: int = 40  # Adam steps on the noise (authors: 5 epochs x 8 steps)
    noise_learning_rate: float = 0.1  # authors: 0.1
    noise_l2: float = 0.1  # lambda of the L2 regulariser on the noise (authors: 0.1)
    noise_repeats: int = 20  # copies of the noise batch in the impair data (authors: 20 batches per class)
    retain_per_class: int = 1000  # retain samples per retained class used to impair and repair (authors: 1000)
    batch_size: int = 256  # impair and repair batches (authors: 256)
    impair_learning_rate: float = 0.02  # authors: Adam, 0.02
    repair_learning_rate: float = 0.01  # authors: Adam, 0.01
    impair_epochs: int = 1  # authors: 1
    repair_epochs: int = 1  # authors: 1
    impair_min_steps: int = 34  # at least this many impair steps (1 epoch of mnist5k's class:3 impair set)
    repair_min_steps: int = 14  # at least this many repair steps (1 epoch of mnist5k's class:3 retain subset)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    seed: int = 0

    NUMBER_RANGES: ClassVar[dict] = {
        "noise_steps": COUNT,
        "repair_epochs": NON_NEGATIVE,  # 0 epochs: no repair
        "impair_min_steps": NON_NEGATIVE,
        "repair_min_steps": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self)
        check_schedule(self)


def noise_objective(model: nn.Module, noise: torch.Tensor, label: int, l2: float) -> torch.Tensor:
    """``-CE(model(noise), label) + l2 * mean_i ||noise_i||^2``: minimising it maximises the error on ``label``."""
    labels = torch.full((len(noise),), label, dtype=torch.int64, device=noise.device)
    penalty = noise.pow(2).flatten(1).sum(dim=1).mean()
    return -nn.functional.cross_entropy(model(noise), labels) + l2 * penalty


def error_maximising_noise(
    model: nn.Module,
    label: int,
    shape: tuple[int, ...],
    *,
    count: int = 256,
    steps: int = 40,
    learning_rate: float = 0.1,
    l2: float = 0.1,
    seed: int = 0,
) -> tuple[torch.Tensor, list[float]]:
    """``count`` inputs of ``shape`` that maximise the frozen ``model``'s cross-entropy on ``label``; also the
    objective's values before each step and after the last."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, *shape), generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=learning_rate)
    was_training = model.training
    frozen = {p: p.requires_grad for p in model.parameters()}
    model.eval().requires_grad_(False)
    history = []
    try:
        for _ in range(steps):
            loss = noise_objective(model, noise, label, l2)
            history.append(float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            history.append(float(noise_objective(model, noise, label, l2)))
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return noise.detach().cpu(), history


def _noise_classes(task: UnlearningTask) -> list[int]:
    if not task.classwise:
        raise ConfigError(
            f"unsir is defined for class-wise forgetting (class:C or subclass:C), not {task.scenario or 'this task'}: "
            "random or explicit forget samples share their classes with the retain set, so maximising a class's "
            "error would attack retained data; use random_label, bad_teacher or ssd for sample-wise forgetting"
        )
    return sorted(set(task.forget.tensors[1].tolist()))


def _retain_subset(retain: TensorDataset, per_class: int, seed: int) -> TensorDataset:
    """At most ``per_class`` samples of each retained label, drawn with ``seed``."""
    inputs, labels = retain.tensors
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = torch.cat([order[labels[order] == c][:per_class] for c in labels.unique()])
    return TensorDataset(inputs[chosen], labels[chosen])


def _class_noises(model: nn.Module, task: UnlearningTask, classes: list[int], config: UnsirConfig):
    """The error-maximising noise of each class (``(noise, label)`` pairs, drawn with ``seed + i``) and the first and
    last objective values per class."""
    noises, objective = [], {}
    for i, label in enumerate(classes):
        noise, history = error_maximising_noise(
            model,
            label,
            tuple(task.input_shape),
            count=config.noise_batch_size,
            steps=config.noise_steps,
            learning_rate=config.noise_learning_rate,
            l2=config.noise_l2,
            seed=config.seed + i,
        )
        noises.append((noise, label))
        objective[str(label)] = {"first": round(history[0], 4), "last": round(history[-1], 4)}
    return noises, objective


def _impair_set(noises: list[tuple[torch.Tensor, int]], repeats: int, retain: TensorDataset) -> TensorDataset:
    """Each noise batch ``repeats`` times under its class label, then the retain subset."""
    noise_x = torch.cat([n.repeat(repeats, *[1] * (n.ndim - 1)) for n, _ in noises])
    noise_y = torch.cat([torch.full((len(n) * repeats,), c, dtype=torch.int64) for n, c in noises])
    return TensorDataset(torch.cat([noise_x, retain.tensors[0]]), torch.cat([noise_y, retain.tensors[1]]))


@register_method("unsir", UnsirConfig, tags=("classifier",))
def unsir(model: nn.Module, task: UnlearningTask, config: UnsirConfig, *, work_dir: Path | None = None) -> dict:
    """UNSIR (Tarun et al., TNNLS 2023): error-maximising noise for the forget classes, impair, then repair."""
    classes = _noise_classes(task)
    start = time.perf_counter()
    noises, objective = _class_noises(model, task, classes, config)
    noise_seconds = time.perf_counter() - start
    retain = _retain_subset(task.retain, config.retain_per_class, config.seed)
    impair_set = _impair_set(noises, config.noise_repeats, retain)
    applier, mask_info = prepare_mask(model, task, config, seed=config.seed)
    common = dict(
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        seed=config.seed,
        after_step=applier,
    )
    model.train()
    impair = fit(model, impair_set, epochs=config.impair_epochs, learning_rate=config.impair_learning_rate,
                 min_steps=config.impair_min_steps, name="unsir impair", **common)  # fmt: skip
    repair = None
    if config.repair_epochs:
        repair = fit(model, retain, epochs=config.repair_epochs, learning_rate=config.repair_learning_rate,
                     min_steps=config.repair_min_steps, name="unsir repair", **common)  # fmt: skip
    model.eval()
    steps = impair.global_step + (repair.global_step if repair else 0)
    return {
        "method": "unsir",
        "global_step": steps,
        "final_loss": (repair or impair).final_loss,
        "seconds": round(time.perf_counter() - start, 4),
        "trained_parameters": impair.trained_parameters,
        "resumed_from": None,
        "noise_classes": classes,
        "noise_objective": objective,
        "noise_seconds": round(noise_seconds, 4),
        "impair": {"steps": impair.global_step, "samples": len(impair_set), "final_loss": impair.final_loss},
        "repair": {"steps": repair.global_step, "samples": len(retain), "final_loss": repair.final_loss}
        if repair
        else None,
        "mask": mask_info,
    }
