"""The per-stage training loop of SISA: a plain, local, deterministic loop.

Why not the shared :class:`~concept_erase.core.trainer.Trainer`? It is an Accelerate loop: under ``torchrun`` or
``accelerate launch`` it wraps the model in DistributedDataParallel and splits every batch across processes. SISA
distributes over *shards* instead (rank ``k`` trains shards ``k, k+W, ...`` on its own), so each stage must train in
one process, unwrapped. This loop is the same recipe (optimizer, learning rate, weight decay, gradient clipping at
norm 1, cross-entropy) with a data order that is a pure function of the stage seed, so a stage gives the same weights
bit for bit on CPU whichever process, and whichever run, trains it.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from classifiers.models import ModelConfig, build_model
from classifiers.training import reinitialise
from concept_erase.core.errors import ConfigError, TrainingError

__all__ = ["Distribution", "SliceRecipe", "derive_seed", "initial_model", "train_stage"]


@dataclass(frozen=True)
class SliceRecipe:
    """How one stage (one slice of one shard) is trained: ``epochs`` passes over the union of slices 0..r."""

    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 3e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; accepted: adamw, adam, sgd")


class Distribution:
    """Rank and world size from torchrun / accelerate's environment; a gloo group for barriers when needed."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def derive_seed(*parts) -> int:
    """A 31-bit seed that depends only on ``parts`` (e.g. ``(seed, shard, slice)``), never on the data."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def initial_model(template: ModelConfig | nn.Module, seed: int, shard: int) -> nn.Module:
    """Shard ``shard``'s initial weights, drawn with a seed derived from ``(seed, shard)``."""

    init_seed = derive_seed(seed, shard, "init")
    if isinstance(template, ModelConfig):
        torch.manual_seed(init_seed)
        return build_model(template)
    model = copy.deepcopy(template)
    reinitialise(model, init_seed)
    return model


def _optimizer(model: nn.Module, recipe: SliceRecipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.learning_rate, momentum=0.9, weight_decay=recipe.weight_decay)
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)


def train_stage(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, recipe: SliceRecipe, seed: int) -> int:
    """Train ``model`` in place on ``(inputs, labels)`` with a fresh optimizer; returns the number of steps.

    The batch order of every epoch comes from a generator seeded with ``seed``; ``torch.manual_seed(seed)`` also
    fixes any dropout. An empty stage trains nothing (the weights stay as they are).
    """
    n = len(labels)
    if n == 0:
        return 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _optimizer(model, recipe)
    model.train()
    steps = 0
    for _ in range(recipe.epochs):
        for batch in torch.randperm(n, generator=generator).split(recipe.batch_size):
            x, y = inputs[batch].to(device), labels[batch].to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss.detach()):
                raise TrainingError(
                    f"sisa: the loss became {float(loss)} at step {steps + 1}; lower learning_rate "
                    f"(now {recipe.learning_rate:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            steps += 1
    model.eval()
    return steps
