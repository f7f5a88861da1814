"""SalUn: random labelling restricted to the salient weights.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency" (ICLR 2024). The weight
saliency map is the top ``mask_ratio`` (default: half) of ``|d CE(forget set) / d w|`` over all weights of the model
before unlearning; only those weights are then updated by random labelling (:mod:`classifiers.methods.random_label`:
forget samples with random labels plus retain samples with their true labels). The other weights stay bit-identical:
they are restored after every optimizer step, so momentum and weight decay cannot move them
(:mod:`classifiers.masking`).

``salun_random_mask`` is the paper's ablation: as many trainable weights per tensor, at random positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from classifiers.data import UnlearningTask
from classifiers.methods.random_label import RandomLabelConfig, random_label_unlearn
from concept_erase.core.registry import register_method

__all__ = ["SalunConfig", "SalunRandomMaskConfig", "salun", "salun_random_mask"]


@dataclass
class SalunConfig(RandomLabelConfig):
    mask: Literal["none", "saliency", "random"] = "saliency"
    mask_ratio: float = 0.5


@dataclass
class SalunRandomMaskConfig(SalunConfig):
    mask: Literal["none", "saliency", "random"] = "random"


@register_method("salun", SalunConfig, tags=("classifier",))
def salun(model: nn.Module, task: UnlearningTask, config: SalunConfig, *, work_dir: Path | None = None) -> dict:
    """SalUn (Fan et al., 2024): random labelling of the forget set, updating only the salient weights."""
    return random_label_unlearn(model, task, config, work_dir=work_dir, name="salun")


@register_method("salun_random_mask", SalunRandomMaskConfig, tags=("classifier",))
def salun_random_mask(
    model: nn.Module, task: UnlearningTask, config: SalunRandomMaskConfig, *, work_dir: Path | None = None
) -> dict:
    """SalUn's ablation (Fan et al., 2024): random labelling under a random mask of the same size per tensor."""
    return random_label_unlearn(model, task, config, work_dir=work_dir, name="salun_random_mask")
