"""Unlearnable examples: error-minimising noise that a model trained on the data learns instead of the data.

Huang, Ma, Erfani, Bailey and Wang, "Unlearnable Examples: Making Personal Data Unexploitable", ICLR 2021 (code:
github.com/HanxunH/Unlearnable-Examples). A data owner adds a small perturbation ``delta`` (``||delta||_inf <=
epsilon``, 8/255 by default) to each of their images, chosen by the **min-min** bi-level problem

    min_theta  E_(x, y)  min_delta  CE(f_theta(x + delta), y)

so that the perturbation itself is an easy, label-correlated shortcut: a model trained on the perturbed images
drives its training loss to zero through the noise and learns little of the images. It is "deletion by never
learning": the owner's examples never need unlearning because nothing was learned from them.

The search (:func:`error_minimising_noise`) follows the authors' ``perturbation.py``: a source model trained on the
perturbed data alternates with the noise, ``train_steps`` (10) mini-batch steps of the model, then one pass over the
data in which each batch's noise takes ``perturb_steps`` signed-gradient steps of size ``step_size`` (0.8/255)
*down* the loss (20 sample-wise, as in the authors' sample-wise scripts), projected onto the epsilon ball and onto
valid pixels [0, 1], starting from zero noise; the search stops when the source model classifies at least
``stop_accuracy`` (99%) of the perturbed data correctly (the authors' ``universal_stop_error`` 0.01), or after
``max_rounds``. **Class-wise** noise (one pattern per class, the authors' ``universal_perturbation``, 1 step per
batch) averages each batch's per-sample steps per class. Differences: the source model is the toolkit's
architecture for the data set (not a ResNet-18) trained with the harness's recipe (AdamW, learning rate 3e-3, not SGD
0.1), and ``max_rounds`` bounds a search the authors let run until it stops.

Three ways in:

- :func:`make_unlearnable` / ``concept-erase unlearnable make``: perturb a data set (all of it, or a share) and write
  it as an ``.npz`` with ``x`` and ``y`` (what ``--dataset`` reads) with the noise and a record;
- :func:`share_study` / ``concept-erase unlearnable study``: the paper's mixture experiment. A share ``s`` of the
  training split is unlearnable (``D_u``, drawn per class, or whole classes with ``split="class"``), the rest clean
  (``D_c``); a model trained on the mixture is compared with one trained on ``D_c`` alone (what the unlearnable
  part should add: nothing), on the clean test set, on ``D_u``'s clean images and classes, and on ``D_c``'s;
- the registered classifier method ``unlearnable``: the forget set is made unlearnable and the model is trained from
  scratch on retain + perturbed forget (the harness scores it on the clean forget images like any method; its cost
  is a retraining plus the noise search, more than retraining).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from classifiers.data import DatasetSplits, UnlearningTask
from classifiers.models import ModelConfig, predict_logits
from classifiers.training import TrainConfig, UnlearningConfig, fresh_model, reinitialise, train_recipe
from concept_erase.core.config import COUNT, FRACTION, Range, check_numbers
from concept_erase.core.errors import ConfigError, EmptyDataError
from concept_erase.core.io import write_json
from concept_erase.core.registry import register_method

__all__ = [
    "DEFAULT_SHARES",
    "MODES",
    "SPLITS",
    "NoiseConfig",
    "NoiseOptions",
    "UnlearnableConfig",
    "apply_noise",
    "error_minimising_noise",
    "make_unlearnable",
    "plot_study",
    "drop_share",
    "share_study",
    "study_table",
    "unlearnable",
    "write_dataset",
    "write_study",
]

MODES = ("samplewise", "classwise")
SPLITS = ("random", "class")
DEFAULT_SHARES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)


@dataclass
class NoiseOptions:
    """The min-min search's keys. ``epsilon``: the L-infinity budget in pixel units (images in [0, 1]; default 8/255);
    ``step_size``: the signed step (default ``epsilon / 10``, the paper's 0.8/255 at 8/255); ``perturb_steps``: steps
    per batch and pass (default 20 sample-wise, 1 class-wise: the authors' scripts)."""

    epsilon: float = 8 / 255
    mode: Literal["samplewise", "classwise"] = "samplewise"
    step_size: float | None = None
    perturb_steps: int | None = None
    train_steps: int = 10
    stop_accuracy: float = 0.99
    max_rounds: int = 30
    noise_batch_size: int = 512
    source_optimizer: Literal["sgd", "adamw"] = "sgd"
    source_learning_rate: float = 0.1

    NUMBER_RANGES: ClassVar[dict] = {
        "epsilon": Range(0, 1, low_open=True, label="the noise budget"),
        "step_size": Range(0, 1, low_open=True),
        "perturb_steps": COUNT,
        "train_steps": COUNT,
        "stop_accuracy": FRACTION,
        "max_rounds": COUNT,
        "noise_batch_size": COUNT,
    }

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.mode not in MODES:
            raise ConfigError(f"mode: invalid value {self.mode!r}; accepted values: {', '.join(MODES)}")
        if self.source_optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"source_optimizer: invalid value {self.source_optimizer!r}; accepted values: sgd, adamw")

    def resolved(self) -> tuple[float, int]:
        """``(step_size, perturb_steps)`` with their defaults filled in."""
        step = self.step_size if self.step_size is not None else self.epsilon / 10
        steps = self.perturb_steps if self.perturb_steps is not None else (20 if self.mode == "samplewise" else 1)
        return step, steps

    def noise_keys(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(NoiseConfig)}


@dataclass
class NoiseConfig(NoiseOptions):
    """:class:`NoiseOptions` and the seed of the source model, its data order and the draws."""

    seed: int = 0


def apply_noise(images: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, mode: str) -> torch.Tensor:
    """``clamp(x + delta, 0, 1)``: ``noise`` is one pattern per image (sample-wise) or per class (class-wise)."""
    delta = noise[labels] if mode == "classwise" else noise
    return (images + delta).clamp(0.0, 1.0)


def _descend(model: nn.Module, images, labels, delta, steps: int, step_size: float, epsilon: float) -> torch.Tensor:
    """``steps`` signed-gradient steps of ``delta`` down the cross-entropy, projected on the ball and on [0, 1]."""
    delta = delta.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model((images + delta).clamp(0.0, 1.0)), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta - step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = (images + delta).clamp(0.0, 1.0) - images
    return delta.detach()


def error_minimising_noise(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    model_config: ModelConfig,
    config: NoiseConfig,
    recipe: TrainConfig | None = None,
    *,
    targets: torch.Tensor | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, dict]:
    """The min-min search on ``(images, labels)``; only the rows ``targets`` (a boolean mask; default: all) get
    noise, the others stay clean (they still train the source model). Returns the noise (``images``' shape
    sample-wise, zero outside ``targets``; ``(num_classes, C, H, W)`` class-wise) and the search's record."""
    if len(labels) == 0:
        raise EmptyDataError("unlearnable: no images to perturb")
    recipe = recipe or TrainConfig()
    targets = torch.ones(len(labels), dtype=torch.bool) if targets is None else targets.bool()
    if not bool(targets.any()):
        raise EmptyDataError("unlearnable: no image is selected for noise")
    step_size, steps = config.resolved()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    model = fresh_model(model_config, num_classes, tuple(images.shape[1:]), seed=config.seed)
    if config.source_optimizer == "sgd":  # the authors' source-model optimiser (their ResNet-18 config)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.source_learning_rate, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.source_learning_rate)
    classwise = config.mode == "classwise"
    noise = torch.zeros(num_classes, *images.shape[1:]) if classwise else torch.zeros_like(images)
    mask = targets.view(-1, *([1] * (images.dim() - 1))).to(images.dtype)

    def perturbed(rows: torch.Tensor) -> torch.Tensor:
        x, y = images[rows], labels[rows]
        delta = noise[y] if classwise else noise[rows]
        return (x + delta * mask[rows]).clamp(0.0, 1.0)

    order, cursor = torch.randperm(len(labels), generator=generator), 0
    history = []
    bar = tqdm(total=config.max_rounds, desc=f"unlearnable noise ({config.mode})",
               disable=None if progress is None else not progress, leave=False)  # fmt: skip
    accuracy = 0.0
    for _round in range(config.max_rounds):
        model.train()
        for _ in range(config.train_steps):
            if cursor + recipe.batch_size > len(order):
                order, cursor = torch.randperm(len(labels), generator=generator), 0
            rows = order[cursor : cursor + recipe.batch_size]
            cursor += recipe.batch_size
            loss = nn.functional.cross_entropy(model(perturbed(rows)), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        selected = torch.nonzero(targets).flatten()
        for chunk in torch.split(selected, config.noise_batch_size):
            x, y = images[chunk], labels[chunk]
            start_delta = noise[y] if classwise else noise[chunk]
            delta = _descend(model, x, y, start_delta, steps, step_size, config.epsilon)
            if classwise:
                for c in y.unique():
                    noise[c] = delta[y == c].mean(0).clamp(-config.epsilon, config.epsilon)
            else:
                noise[chunk] = delta
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            correct = sum(
                int((model(perturbed(rows)).argmax(1) == labels[rows]).sum())
                for rows in torch.split(selected, config.noise_batch_size)
            )
        accuracy = correct / len(selected)
        history.append(round(accuracy, 4))
        bar.update(1)
        bar.set_postfix(accuracy=f"{accuracy:.3f}")
        if accuracy >= config.stop_accuracy:
            break
    bar.close()
    if not classwise:
        noise = noise * mask
    info = {
        "mode": config.mode,
        "epsilon": config.epsilon,
        "step_size": step_size,
        "perturb_steps": steps,
        "train_steps": config.train_steps,
        "rounds": len(history),
        "stopped": accuracy >= config.stop_accuracy,
        "source_accuracy_on_perturbed": round(accuracy, 4),
        "accuracy_per_round": history,
        "perturbed_images": int(targets.sum()),
        "max_abs_noise": round(float(noise.abs().max()), 6),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return noise, info


def _perturb(images, labels, noise, mode, targets) -> torch.Tensor:
    out = images.clone()
    out[targets] = apply_noise(images[targets], labels[targets], noise if mode == "classwise" else noise[targets], mode)
    return out


def _draw_share(labels: torch.Tensor, share: float, split: str, num_classes: int, seed: int) -> torch.Tensor:
    """The rows of D_u: ``share`` of each class drawn with ``seed`` (``random``), or the first
    ``round(share * num_classes)`` classes (``class``)."""
    if split == "class":
        count = int(round(share * num_classes))
        return labels < count
    rng = np.random.default_rng(seed)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten().numpy()
        take = int(round(share * len(rows)))
        if take:
            chosen[torch.from_numpy(rng.choice(rows, size=take, replace=False))] = True
    return chosen


def _check_share(share: float, what: str = "share") -> float:
    share = float(share)
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise ConfigError(f"{what} (the D_u share) must be in [0, 1], got {share:g}")
    return share


def make_unlearnable(
    splits: DatasetSplits,
    model_config: ModelConfig,
    config: NoiseConfig,
    *,
    share: float = 1.0,
    recipe: TrainConfig | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, dict]:
    """Perturb ``share`` of every class of the whole data set (training and test split together: what an owner
    publishes). Returns the images, labels, the noise and a record (which rows are perturbed: ``perturbed_rows``)."""
    share = _check_share(share)
    images = torch.cat([splits.train.tensors[0], splits.test.tensors[0]])
    labels = torch.cat([splits.train.tensors[1], splits.test.tensors[1]])
    targets = _draw_share(labels, share, "random", splits.num_classes, config.seed)
    if not bool(targets.any()):
        raise ConfigError(f"share {share:g} selects no image of the {len(labels)}: use a share > 0")
    noise, info = error_minimising_noise(
        images, labels, splits.num_classes, model_config, config, recipe, targets=targets, progress=progress
    )
    out = _perturb(images, labels, noise, config.mode, targets)
    record = {
        "dataset": splits.name,
        "images": len(labels),
        "share": share,
        "model": model_config.name,
        "noise": config.noise_keys(),
        "search": info,
        "perturbed_rows": torch.nonzero(targets).flatten().tolist(),
    }
    return out.numpy(), labels.numpy(), noise, record


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float | None:
    if len(dataset) == 0:
        return None
    logits = predict_logits(model, dataset)
    return round(100.0 * float((logits.argmax(1) == dataset.tensors[1]).float().mean()), 2)


def share_study(
    splits: DatasetSplits,
    model_config: ModelConfig,
    config: NoiseConfig,
    *,
    shares: Sequence[float] = DEFAULT_SHARES,
    split: str = "random",
    seeds: Sequence[int] = (0,),
    recipe: TrainConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The mixture experiment: per seed, the noise is searched once for the whole training split (seed = the noise
    seed, the draw of ``D_u`` and the models' seed), then for each share a model is trained on ``D_u`` (perturbed)
    + ``D_c`` (clean) and another on ``D_c`` alone. Accuracies (%) are on clean images."""
    if split not in SPLITS:
        raise ConfigError(f"split: invalid value {split!r}; accepted values: {', '.join(SPLITS)}")
    shares = sorted({_check_share(s, "shares") for s in shares})
    if not shares:
        raise ConfigError("shares: give at least one D_u share in [0, 1]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {list(seeds)} repeats a seed")
    recipe = recipe or TrainConfig()
    images, labels = splits.train.tensors
    rows = []
    searches = {}
    for seed in seeds:
        noise_config = dataclasses.replace(config, seed=seed)
        noise, info = error_minimising_noise(images, labels, splits.num_classes, model_config, noise_config, recipe)
        searches[str(seed)] = info
        if log:
            log(
                f"seed {seed}: noise searched in {info['rounds']} rounds ({info['seconds']:.0f} s), source model "
                f"{100 * info['source_accuracy_on_perturbed']:.1f}% on the perturbed data"
            )
        for share in shares:
            chosen = _draw_share(labels, share, split, splits.num_classes, seed)
            mixed = _perturb(images, labels, noise, config.mode, chosen)
            row = {"seed": seed, "share": share, "split": split, "unlearnable": int(chosen.sum())}
            for name, train_set in (
                ("mixture", TensorDataset(mixed, labels)),
                ("clean_only", TensorDataset(images[~chosen], labels[~chosen])),
            ):
                if len(train_set) == 0:
                    row[name] = None
                    continue
                model = fresh_model(model_config, splits.num_classes, splits.input_shape, seed=seed)
                train_recipe(model, train_set, dataclasses.replace(recipe, seed=seed))
                model.eval()
                row[name] = _scores(model, splits, images, labels, chosen, split)
            rows.append(row)
            if log:
                mix, clean = row["mixture"], row["clean_only"]
                clean_text = "n/a" if clean is None else f"{clean['test']:.1f}%"
                log(f"  share {share:.0%}: test {mix['test']:.1f}% (D_c only: {clean_text})")
    return {
        "dataset": splits.name,
        "model": model_config.name,
        "split": split,
        "shares": shares,
        "seeds": list(seeds),
        "noise": config.noise_keys(),
        "recipe": {"epochs": recipe.epochs, "learning_rate": recipe.learning_rate, "batch_size": recipe.batch_size},
        "searches": searches,
        "rows": rows,
        "summary": _summarise(rows, shares),
    }


def _scores(model, splits, images, labels, chosen, split) -> dict:
    test_x, test_y = splits.test.tensors
    scores = {"test": _accuracy(model, splits.test)}
    scores["du_train_clean"] = _accuracy(model, TensorDataset(images[chosen], labels[chosen]))
    scores["dc_train"] = _accuracy(model, TensorDataset(images[~chosen], labels[~chosen]))
    if split == "class":
        du_classes = labels[chosen].unique()
        in_du = torch.isin(test_y, du_classes)
        scores["test_du_classes"] = _accuracy(model, TensorDataset(test_x[in_du], test_y[in_du]))
        scores["test_dc_classes"] = _accuracy(model, TensorDataset(test_x[~in_du], test_y[~in_du]))
    return scores


def _summarise(rows: list[dict], shares: list[float]) -> list[dict]:
    out = []
    for share in shares:
        group = [r for r in rows if r["share"] == share]
        entry = {"share": share, "seeds": len(group)}
        for name in ("mixture", "clean_only"):
            values = [r[name] for r in group if r[name] is not None]
            if not values:
                entry[name] = None
                continue
            entry[name] = {}
            for key in values[0]:
                numbers = [v[key] for v in values if v[key] is not None]
                if numbers:
                    entry[name][key] = round(float(np.mean(numbers)), 2)
                    entry[name][key + "_std"] = round(float(np.std(numbers)), 2)
        out.append(entry)
    return out


def drop_share(summary: list[dict], drop: float = 10.0) -> float | None:
    """The smallest share at which the mixture's test accuracy is ``drop`` points below the clean (share 0) model's."""
    base = next((e["mixture"]["test"] for e in summary if e["share"] == 0.0 and e["mixture"]), None)
    if base is None:
        return None
    for entry in summary:
        if entry["mixture"] and entry["mixture"]["test"] <= base - drop:
            return entry["share"]
    return None


@dataclass
class UnlearnableConfig(UnlearningConfig, NoiseOptions):
    """The noise search (:class:`NoiseOptions`' keys; ``seed`` seeds it too) and the recipe of the training from
    scratch that follows (filled from the original's recipe by the harness)."""

    takes_recipe: ClassVar[bool] = True
    min_steps: ClassVar[int] = 0  # not a key: the training from scratch runs the recipe's epochs, as retrain does

    def noise_config(self) -> NoiseConfig:
        keys = {f.name for f in dataclasses.fields(NoiseConfig)}
        return NoiseConfig(**{k: getattr(self, k) for k in keys})


@register_method("unlearnable", UnlearnableConfig, tags=("classifier",))
def unlearnable(model: nn.Module, task: UnlearningTask, config: UnlearnableConfig, *, work_dir: Path | None = None):
    """Unlearnable examples (Huang et al., ICLR 2021): train from scratch with the forget set made unlearnable."""
    if len(task.forget) == 0:
        raise EmptyDataError("unlearnable: the forget set is empty: there is nothing to make unlearnable")
    start = time.perf_counter()
    data = task.training_data()
    images, labels = data.tensors
    targets = torch.zeros(len(labels), dtype=torch.bool)
    if task.forget_indices is not None and task.retain_indices is not None:
        order = torch.sort(torch.cat([task.retain_indices, task.forget_indices])).values
        targets[torch.searchsorted(order, task.forget_indices)] = True
    else:
        targets[len(task.retain) :] = True
    model_config = getattr(model, "config", None)
    if not isinstance(model_config, ModelConfig):
        raise ConfigError("unlearnable: needs a model built by the toolkit (mlp, cnn or vit) to search the noise with")
    noise_config = config.noise_config()
    noise, info = error_minimising_noise(images, labels, task.num_classes, model_config, noise_config, config.recipe(),
                                         targets=targets)  # fmt: skip
    mixed = _perturb(images, labels, noise, noise_config.mode, targets)
    how = reinitialise(model, config.seed)
    result = train_recipe(model, TensorDataset(mixed, labels), config.recipe(), work_dir=work_dir)
    model.eval()
    return {
        "method": "unlearnable",
        "global_step": result.global_step,
        "final_loss": result.final_loss,
        "seconds": round(time.perf_counter() - start, 4),
        "trained_parameters": result.trained_parameters,
        "resumed_from": result.resumed_from,
        "reinitialised": how,
        "noise_search": info,
    }


def write_dataset(directory: Path, images: np.ndarray, labels: np.ndarray, noise: torch.Tensor, record: dict) -> None:
    """``data.npz`` (``x``, ``y``: what ``--dataset`` reads), ``noise.safetensors`` and ``unlearnable.json``."""
    from concept_erase.core.tensorfile import save_tensors

    directory.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(directory / "data.npz", x=images.astype(np.float32), y=labels.astype(np.int64))
    save_tensors({"noise": noise.contiguous()}, str(directory / "noise.safetensors"))
    write_json(directory / "unlearnable.json", record)


def study_table(result: dict) -> str:
    """The share study as a Markdown table (means over seeds, +- the standard deviation)."""

    def cell(entry: dict | None, key: str) -> str:
        if not entry or entry.get(key) is None:
            return "n/a"
        return f"{entry[key]:.1f} +- {entry[key + '_std']:.1f}" if len(result["seeds"]) > 1 else f"{entry[key]:.1f}"

    class_split = result["split"] == "class"
    head = ["D_u share", "test % (mixture)", "test % (D_c only)", "D_u clean images % (mixture)",
            "D_u clean images % (D_c only)", "D_c % (mixture)"]  # fmt: skip
    if class_split:
        head += ["test, D_u's classes % (mixture)", "test, D_c's classes % (mixture)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in result["summary"]:
        mix, clean = entry["mixture"], entry["clean_only"]
        cells = [f"{100 * entry['share']:.0f}%", cell(mix, "test"), cell(clean, "test"), cell(mix, "du_train_clean"),
                 cell(clean, "du_train_clean"), cell(mix, "dc_train")]  # fmt: skip
        if class_split:
            cells += [cell(mix, "test_du_classes"), cell(mix, "test_dc_classes")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_study(result: dict, path: Path) -> None:
    """Test accuracy and D_u's clean accuracy against the D_u share, mixture vs D_c only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    shares = [100 * e["share"] for e in summary]

    def series(name: str, key: str):
        return [e[name].get(key) if e[name] else None for e in summary]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "test", "clean test accuracy (%)"),
                           (axes[1], "du_train_clean", "accuracy on D_u's clean images (%)")):  # fmt: skip
        for name, style, label in (("mixture", "o-", "trained on D_u + D_c"), ("clean_only", "s--", "D_c only")):
            values = series(name, key)
            xs = [x for x, v in zip(shares, values) if v is not None]
            ys = [v for v in values if v is not None]
            errs = [e[name].get(key + "_std", 0) for e in summary if e[name] and e[name].get(key) is not None]
            ax.errorbar(xs, ys, yerr=errs, fmt=style, capsize=3, label=label)
        ax.set_xlabel("unlearnable share D_u (%)")
        ax.set_title(title)
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend()
    noise = result["noise"]
    fig.suptitle(
        f"unlearnable examples on {result['dataset']} ({result['model']}, {noise['mode']}, epsilon "
        f"{255 * noise['epsilon']:.0f}/255, split {result['split']}, {len(result['seeds'])} seed(s))"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(result: dict, directory: Path) -> list[str]:
    """``study.json``, ``study.md`` and ``study.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "study.json", result)
    threshold = drop_share(result["summary"])
    note = (
        f"\nTest accuracy first falls 10 points below the clean model's at a D_u share of {100 * threshold:.0f}%.\n"
        if threshold is not None
        else "\nTest accuracy never falls 10 points below the clean model's.\n"
    )
    (directory / "study.md").write_text(study_table(result) + note)
    plot_study(result, directory / "study.png")
    return ["study.json", "study.md", "study.png"]
