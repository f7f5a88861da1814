"""Evaluating a classifier on an unlearning task.

Accuracies are fractions in [0, 1]:

- ``forget_accuracy``: on the training samples of the forgotten classes (the data the model must forget);
- ``retain_accuracy``: on the remaining training samples;
- ``test_accuracy``: on the test samples of the remaining classes;
- ``forget_test_accuracy``: on the test samples of the forgotten classes;
- ``per_class_accuracy``: on the test set, per class.

A model retrained without the forgotten data scores 0 on both forget accuracies for full-class forgetting; compare
every method with it (the pipeline's ``report`` step prints the gaps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from classifiers.data import UnlearningTask, load_dataset, make_class_task

__all__ = ["EvaluateConfig", "accuracy", "predict", "evaluate_classifier", "evaluate_model_dir", "plot_per_class"]


@torch.no_grad()
def predict(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels of ``dataset`` (model in eval mode; its training mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        preds = [model(x).argmax(dim=1) for x, _ in DataLoader(dataset, batch_size=batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float | None:
    """Fraction of correct predictions; None for an empty dataset."""
    if len(dataset) == 0:
        return None
    return float((predict(model, dataset, batch_size) == dataset.tensors[1]).float().mean())


def evaluate_classifier(model: nn.Module, task: UnlearningTask, batch_size: int = 512) -> dict:
    """The accuracies described in the module docstring, as a JSON-serialisable dict."""
    preds = predict(model, task.test, batch_size)
    labels = task.test.tensors[1]
    per_class = {}
    for c in range(task.num_classes):
        member = labels == c
        per_class[str(c)] = float((preds[member] == c).float().mean()) if member.any() else None
    return {
        "dataset": task.dataset,
        "forget_classes": list(task.forget_classes),
        "forget_accuracy": accuracy(model, task.forget, batch_size),
        "retain_accuracy": accuracy(model, task.retain, batch_size),
        "test_accuracy": accuracy(model, task.test_retain, batch_size),
        "forget_test_accuracy": accuracy(model, task.test_forget, batch_size),
        "overall_test_accuracy": float((preds == labels).float().mean()),
        "per_class_accuracy": per_class,
        "num_samples": {
            "forget": len(task.forget),
            "retain": len(task.retain),
            "test_retain": len(task.test_retain),
            "test_forget": len(task.test_forget),
        },
    }


def plot_per_class(metrics: dict, path: str | Path, title: str | None = None) -> Path:
    """Bar chart of per-class test accuracy, forgotten classes in red."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    classes = list(metrics["per_class_accuracy"])
    values = [v if v is not None else 0.0 for v in metrics["per_class_accuracy"].values()]
    forget = {str(c) for c in metrics["forget_classes"]}
    colors = ["tab:red" if c in forget else "tab:blue" for c in classes]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.bar(classes, values, color=colors)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class (red: forgotten)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or f"per-class test accuracy ({metrics['dataset']})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_per_class_comparison(runs: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars of per-class test accuracy, one colour per run (e.g. original, unlearned, retrained); the
    forgotten classes' ticks are marked in red."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    first = next(iter(runs.values()))
    classes = list(first["per_class_accuracy"])
    forget = {str(c) for c in first["forget_classes"]}
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * max(len(runs), 1) ** 0.5), 3.2), dpi=100)
    x = np.arange(len(classes))
    for i, (label, metrics) in enumerate(runs.items()):
        values = [metrics["per_class_accuracy"].get(c) or 0.0 for c in classes]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, classes)
    for tick, cls in zip(ax.get_xticklabels(), classes):
        if cls in forget:
            tick.set_color("tab:red")
            tick.set_fontweight("bold")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class (red: forgotten)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "per-class test accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


@dataclass
class EvaluateConfig:
    """Evaluate a saved classifier (a model directory) on a full-class forgetting task."""

    model_dir: str = ""
    forget_classes: list[int] = field(default_factory=lambda: [7])
    dataset: str = "digits"
    test_size: float = 0.25
    data_seed: int = 0
    batch_size: int = 512


def evaluate_model_dir(config: EvaluateConfig, out_dir: str | Path) -> dict:
    """Load ``config.model_dir``, evaluate it and write ``metrics.json`` and ``per_class_accuracy.png``."""
    from classifiers.models import load_model
    from concept_erase.errors import ConfigError
    from concept_erase.io import write_json

    if not config.model_dir:
        raise ConfigError("model_dir is empty: name the classifier model directory to evaluate")
    model = load_model(config.model_dir)
    task = make_class_task(load_dataset(config.dataset, config.data_seed, config.test_size), config.forget_classes)
    metrics = {
        "model_dir": str(Path(config.model_dir).absolute()),
        **evaluate_classifier(model, task, config.batch_size),
    }
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    plot_per_class(metrics, out_dir / "per_class_accuracy.png")
    return metrics
