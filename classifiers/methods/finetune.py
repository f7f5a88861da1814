"""Fine-tune (FT): continue training on the retain set only, so the forget set fades by catastrophic forgetting.

The classic unlearning baseline (Warnecke et al., 2023; "FT" in Golatkar et al., 2020 and SalUn, Fan et al., 2024):
a few epochs of SGD at a relatively large learning rate on the retained data. With ``mask_path`` (a saliency mask
from :mod:`concept_erase.saliency`) only the salient weights change; every other weight is restored to its value
after each optimizer step, so momentum and weight decay cannot move it either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from classifiers.data import UnlearningTask
from classifiers.training import fit
from concept_erase.errors import ConfigError
from concept_erase.registry import register_method

__all__ = ["FinetuneConfig", "finetune"]


@dataclass
class FinetuneConfig:
    epochs: int = 5
    max_train_steps: int | None = None  # overrides epochs when set
    batch_size: int = 64
    learning_rate: float = 0.01
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    mask_path: str | None = None  # saliency mask (mask.safetensors): only salient weights are updated
    checkpointing_steps: int | None = None  # checkpoint into the work directory (pipelines resume from it)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.mask_path == "":
            self.mask_path = None


@register_method("finetune", FinetuneConfig, tags=("classifier",))
def finetune(model: nn.Module, task: UnlearningTask, config: FinetuneConfig, *, work_dir: Path | None = None) -> dict:
    """Fine-tune on the retain set only (optionally only the salient weights)."""
    applier, mask_info = None, None
    if config.mask_path is not None:
        from concept_erase.saliency import SaliencyMask  # lazy: only masked runs need it

        mask = SaliencyMask.load(config.mask_path, model)
        applier = mask.applier(model)  # restores the frozen weights after every optimizer step
        stats = mask.summary()
        mask_info = {
            "mask_path": str(Path(config.mask_path).absolute()),
            **{k: stats[k] for k in ("total", "kept", "fraction_kept")},
            **{k: mask.metadata.get(k) for k in ("mode", "ratio", "loss_name")},
        }
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
