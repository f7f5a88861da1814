"""Fine-tune (FT): continue training on the retain set only, so the forget set fades by catastrophic forgetting.

The classic unlearning baseline (Warnecke et al., 2023; "FT" in Golatkar et al., 2020 and SalUn, Fan et al., 2024):
a few epochs of SGD at a relatively large learning rate on the retained data. With ``mask: saliency`` (or a saved
``mask_path``) only the salient weights change; every other weight is restored to its value after each optimizer
step, so momentum and weight decay cannot move it either (:mod:`classifiers.masking`).

``min_steps`` 265 (5 epochs of mnist5k's class:3 retain set, 53 batches): at least that many steps on a smaller
data set (digits' retain set gives 19 batches per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from classifiers.data import UnlearningTask
from classifiers.masking import MaskOptions, prepare_mask
from classifiers.training import UnlearningConfig, fit_method, fit_summary
from concept_erase.core.registry import register_method

__all__ = ["FinetuneConfig", "finetune"]


@dataclass
class FinetuneConfig(UnlearningConfig, MaskOptions):
    epochs: int = 5
    min_steps: int = 265  # 5 epochs over mnist5k's class:3 retain set (3375 samples, 53 batches): see above
    learning_rate: float = 0.01
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    weight_decay: float = 5e-4


@register_method("finetune", FinetuneConfig, tags=("classifier",))
def finetune(model: nn.Module, task: UnlearningTask, config: FinetuneConfig, *, work_dir: Path | None = None) -> dict:
    """Fine-tune on the retain set only (optionally only the salient weights)."""
    applier, mask_info = prepare_mask(model, task, config, seed=config.seed)
    result = fit_method(model, task.retain, config, name="finetune", applier=applier, work_dir=work_dir)
    model.eval()
    return fit_summary("finetune", result, mask=mask_info)
