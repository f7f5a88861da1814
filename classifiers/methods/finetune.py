"""Fine-tune (FT): continue training on the retain set only, so the forget set fades by catastrophic forgetting.

The classic unlearning baseline (Warnecke et al., 2023; "FT" in Golatkar et al., 2020 and SalUn, Fan et al., 2024):
a few epochs of SGD at a relatively large learning rate on the retained data. With ``mask: saliency`` (or a saved
``mask_path``) only the salient weights change; every other weight is restored to its value after each optimizer
step, so momentum and weight decay cannot move it either (:mod:`classifiers.masking`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from classifiers.data import UnlearningTask
from classifiers.masking import MaskOptions, prepare_mask
from classifiers.training import fit
from concept_erase.errors import ConfigError
from concept_erase.registry import register_method

__all__ = ["FinetuneConfig", "finetune"]


@dataclass
class FinetuneConfig(MaskOptions):
    epochs: int = 5
    max_train_steps: int | None = None  # overrides epochs when set
    batch_size: int = 64
    learning_rate: float = 0.01
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    checkpointing_steps: int | None = None  # checkpoint into the work directory (pipelines resume from it)
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")


@register_method("finetune", FinetuneConfig, tags=("classifier",))
def finetune(model: nn.Module, task: UnlearningTask, config: FinetuneConfig, *, work_dir: Path | None = None) -> dict:
    """Fine-tune on the retain set only (optionally only the salient weights)."""
    applier, mask_info = prepare_mask(model, task, config, seed=config.seed)
    result = fit(
        model,
        task.retain,
        epochs=config.epochs,
        max_train_steps=config.max_train_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        seed=config.seed,
        work_dir=work_dir,
        checkpointing_steps=config.checkpointing_steps,
        after_step=applier,
        extra_state={"saliency": applier} if applier is not None else None,
        name="finetune",
    )
    model.eval()
    return {
        "method": "finetune",
        "global_step": result.global_step,
        "final_loss": result.final_loss,
        "seconds": round(result.seconds, 4),
        "trained_parameters": result.trained_parameters,
        "resumed_from": result.resumed_from,
        "mask": mask_info,
    }
