"""The saliency-mask switch every classifier method has: ``mask: none | saliency | random`` (plus ``mask_ratio``,
``mask_path``), so any method can be restricted to the weights that matter for the forget set.

    @dataclass
    class GradAscentConfig(UnlearningConfig, MaskOptions):   # the mask keys first, then the training schedule
        epochs: int = 5
    applier, mask_info = prepare_mask(model, task, config)     # (None, None) without a mask
    fit_method(model, data, config, name="grad_ascent", applier=applier)   # restores the frozen weights every step

The mask is SalUn's: the top ``mask_ratio`` of ``|d CE(forget set) / d w|`` over all weights (``saliency``), or as many
weights per tensor at random positions (``random``, SalUn's ablation), computed on the model before unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn
from torch.utils.data import DataLoader

from classifiers.data import UnlearningTask
from classifiers.training import cross_entropy
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.saliency import SaliencyMask, compute_saliency

__all__ = ["MASK_MODES", "MaskOptions", "prepare_mask"]

MASK_MODES = ("none", "saliency", "random")


@dataclass
class MaskOptions:
    """Mixin of a method config: restrict updates to a saliency mask."""

    mask: Literal["none", "saliency", "random"] = "none"
    mask_ratio: float = 0.5  # fraction of weights that may change (SalUn's default: the top half)
    mask_path: str | None = None  # a saved mask (mask.safetensors) instead of computing one

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.mask not in MASK_MODES:
            raise ConfigError(f"mask must be one of {', '.join(MASK_MODES)}, got {excerpt(self.mask)}")
        if self.mask_path == "":
            self.mask_path = None


def prepare_mask(model: nn.Module, task: UnlearningTask, options: MaskOptions, seed: int = 0, batch_size: int = 256):
    """``(MaskApplier, summary)`` for ``options`` on ``model`` (``(None, None)`` when no mask is asked for).

    The applier restores frozen weights after every optimizer step (momentum and weight decay cannot move them).
    """

    if options.mask_path is not None:
        mask = SaliencyMask.load(options.mask_path, model)
        source = str(Path(options.mask_path).absolute())
    elif options.mask == "none":
        return None, None
    else:
        loader = DataLoader(task.forget, batch_size=batch_size)
        scores = compute_saliency(model, loader, cross_entropy, show_progress=False)
        mask = SaliencyMask.from_scores(scores, ratio=options.mask_ratio, loss_name="forget_ce")
        if options.mask == "random":
            mask = SaliencyMask.random_like(mask, seed=seed)
        source = options.mask
    stats = mask.summary()
    info = {
        "source": source,
        **{k: stats[k] for k in ("total", "kept", "fraction_kept")},
        **{k: mask.metadata.get(k) for k in ("mode", "ratio", "loss_name")},
    }
    return mask.applier(model), info
