"""Evaluating a classifier on an unlearning task.

Two APIs live here.

**Unlearning metrics** (:func:`unlearning_metrics`), in percent (0-100), the quantities of Unlearn-Sparse / SalUn:

- ``ua`` (unlearning accuracy): 100 - accuracy on the forget set (the training samples to forget);
- ``ra`` (remaining accuracy): accuracy on the retain set;
- ``ta`` (testing accuracy): accuracy on the whole test split;
- ``ta_remaining``: accuracy on ``task.test_retain``, the test split without the forgotten classes for class-wise
  scenarios (the TA that SalUn reports for class-wise forgetting); equal to ``ta`` for random / index scenarios;
- ``ua_test``: 100 - accuracy on ``task.test_forget`` (the forgotten classes' test samples; None when there are none);
- ``mia_efficacy``: :func:`classifiers.mia.mia_efficacy`: an ``SVC(C=3, gamma="auto", kernel="rbf")`` on the
  true-class softmax probability, fit on retain samples (members, as many as test samples, drawn with ``seed``)
  against the test samples of ``task.test_retain`` (non-members), scored as the % of forget samples it calls
  non-members. Higher means the forget set looks less like training data;
- ``mia_loss`` / ``mia_loss_auc``: :func:`classifiers.mia.loss_mia`: a logistic-regression attack on the per-sample
  loss fit the same way; the % of forget samples called non-members, and the ROC AUC (%) of forget vs test samples;
- ``l2_to_original`` / ``l2_to_oracle``: :func:`l2_distance` of the weights to the original / retrained model (None
  when the architectures differ, e.g. a distilled student of another architecture);
- ``kl_to_oracle_forget`` / ``kl_to_oracle_test``: :func:`mean_kl`, the mean KL(oracle || model) of the predicted
  distributions on the forget set / the whole test split, in nats;
- ``seconds`` (the method's run time, given by the caller) and ``cost_ratio`` = seconds / oracle seconds;
- ``avg_gap``: mean of |model - oracle| over :data:`AVG_GAP_KEYS` (UA, MIA-efficacy, RA, TA), SalUn's "Avg. Gap";
- ``per_class_accuracy``: test accuracy per class (``str(class) -> %`` or None for a class without test samples);
- ``oracle``: the same numbers for the retrain oracle (its ``avg_gap`` is 0 and ``cost_ratio`` 1).

Each metric is computed in one place (the functions named above); reference values (None) mean "not available":
no oracle, no original model, no timing. The numbers depend on the dataset, architecture, training recipe and set
sizes, and the MIA on its exact protocol, so values published for other setups (e.g. CIFAR-10 ResNet-18) are not
comparable with these: the reference is always the retrain oracle on the same task.

**Legacy accuracies** (:func:`evaluate_classifier`, used by the ``evaluate`` pipeline step), fractions in [0, 1]:

- ``forget_accuracy``: on the training samples of the forgotten classes (the data the model must forget);
- ``retain_accuracy``: on the remaining training samples;
- ``test_accuracy``: on the test samples of the remaining classes;
- ``forget_test_accuracy``: on the test samples of the forgotten classes;
- ``per_class_accuracy``: on the test set, per class.

A model retrained without the forgotten data scores 0 on both forget accuracies for full-class forgetting; compare
every method with it (the pipeline's ``report`` step prints the gaps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend state
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import UnlearningTask, load_dataset, make_class_task
from classifiers.mia import loss_mia, mia_efficacy
from classifiers.models import load_model, predict_logits
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError
from concept_erase.core.io import write_json

__all__ = [
    "AVG_GAP_KEYS",
    "HEADLINE_KEYS",
    "ORACLE_KEYS",
    "EvaluateConfig",
    "accuracy",
    "predict",
    "predict_logits",
    "per_class_accuracy",
    "l2_distance",
    "mean_kl",
    "unlearning_metrics",
    "evaluate_classifier",
    "evaluate_model_dir",
    "plot_per_class",
    "plot_per_class_comparison",
    "plot_metric_bars",
]

# The metrics SalUn's "Avg. Gap" averages the absolute difference to the retrain oracle over.
AVG_GAP_KEYS = ("ua", "mia_efficacy", "ra", "ta")
# The numbers a summary table shows first.
HEADLINE_KEYS = ("ua", "ra", "ta", "mia_efficacy", "avg_gap", "cost_ratio", "seconds")
# The keys of the oracle's own entry (``unlearning_metrics(...)["oracle"]``).
ORACLE_KEYS = (
    "ua",
    "ra",
    "ta",
    "ta_remaining",
    "ua_test",
    "mia_efficacy",
    "mia_loss",
    "mia_loss_auc",
    "l2_to_original",
    "seconds",
    "cost_ratio",
    "avg_gap",
    "per_class_accuracy",
)


def predict(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels of ``dataset`` (model in eval mode; its training mode is restored)."""
    if len(dataset) == 0:
        return torch.empty(0, dtype=torch.long)
    return predict_logits(model, dataset, batch_size).argmax(dim=1)


def accuracy(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float | None:
    """Fraction of correct predictions; None for an empty dataset."""
    if len(dataset) == 0:
        return None
    return float((predict(model, dataset, batch_size) == dataset.tensors[1]).float().mean())


def per_class_accuracy(
    model: nn.Module, dataset: TensorDataset, num_classes: int, batch_size: int = 512
) -> dict[str, float | None]:
    """Accuracy in percent per class, ``str(class) -> %``; None for a class with no sample in ``dataset``."""
    preds, labels = predict(model, dataset, batch_size), dataset.tensors[1]
    out: dict[str, float | None] = {}
    for c in range(num_classes):
        member = labels == c
        out[str(c)] = 100.0 * float((preds[member] == c).float().mean()) if member.any() else None
    return out


def _percent(model: nn.Module, dataset: TensorDataset, batch_size: int) -> float | None:
    value = accuracy(model, dataset, batch_size)
    return None if value is None else 100.0 * value


def _error(model: nn.Module, dataset: TensorDataset, batch_size: int) -> float | None:
    value = _percent(model, dataset, batch_size)
    return None if value is None else 100.0 - value


def l2_distance(model_a: nn.Module, model_b: nn.Module) -> float:
    """Euclidean distance between the floating-point parameters of two models of the same architecture.

    The sum of squared differences runs over the parameters (not buffers) matched by name, in float64.

    Raises:
        ConfigError: the models differ in architecture (the first parameter missing in one or of another shape).
    """
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    for name in [*params_a, *(n for n in params_b if n not in params_a)]:
        a, b = params_a.get(name), params_b.get(name)
        if a is None or b is None or a.shape != b.shape:
            shapes = " vs ".join("missing" if t is None else str(tuple(t.shape)) for t in (a, b))
            raise ConfigError(f"l2_distance needs two models of the same architecture: parameter {name!r} is {shapes}")
    total = torch.zeros((), dtype=torch.float64)
    for name, a in params_a.items():
        if a.is_floating_point():
            diff = a.detach().double().cpu() - params_b[name].detach().double().cpu()
            total += diff.pow(2).sum()
    return float(total.sqrt())


def _l2_if_comparable(model: nn.Module, reference: nn.Module | None) -> float | None:
    """:func:`l2_distance`, or None without a reference or when the architectures differ (a method whose result is
    a model of another architecture, such as a distilled student: weight distances do not apply)."""
    if reference is None:
        return None
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    return l2_distance(model, reference) if shapes(model) == shapes(reference) else None


def mean_kl(model: nn.Module, reference: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float | None:
    """Mean over ``dataset`` of KL(p_reference || p_model) of the softmax outputs, in nats; None when it is empty."""
    if len(dataset) == 0:
        return None
    log_p = predict_logits(reference, dataset, batch_size).double().log_softmax(dim=1)
    log_q = predict_logits(model, dataset, batch_size).double().log_softmax(dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return max(0.0, float(kl.mean()))  # >= 0 in exact arithmetic; clip rounding noise


def _model_metrics(
    model: nn.Module, task: UnlearningTask, original: nn.Module | None, seed: int, batch_size: int
) -> dict:
    """The metrics of ``model`` alone (no oracle): accuracies, both attacks, distance to the original."""

    sets = (task.retain, task.test_retain, task.forget)  # SalUn's MIA: test = the test split without forgotten classes
    loss_attack = loss_mia(model, *sets, seed=seed, batch_size=batch_size)
    return {
        "ua": _error(model, task.forget, batch_size),
        "ra": _percent(model, task.retain, batch_size),
        "ta": _percent(model, task.test, batch_size),
        "ta_remaining": _percent(model, task.test_retain, batch_size),
        "ua_test": _error(model, task.test_forget, batch_size),
        "mia_efficacy": mia_efficacy(model, *sets, seed=seed, batch_size=batch_size),
        "mia_loss": loss_attack["non_member_rate"],
        "mia_loss_auc": loss_attack["auc"],
        "l2_to_original": _l2_if_comparable(model, original),
        "per_class_accuracy": per_class_accuracy(model, task.test, task.num_classes, batch_size),
    }


def _oracle_entry(
    oracle: nn.Module | None,
    oracle_metrics: dict | None,
    task: UnlearningTask,
    original: nn.Module | None,
    seed: int,
    batch_size: int,
) -> dict | None:
    """The oracle's own metrics (:data:`ORACLE_KEYS`): given precomputed, computed from the model, or None."""
    if oracle_metrics is not None:
        missing = [k for k in AVG_GAP_KEYS if oracle_metrics.get(k) is None]
        if missing:
            raise ConfigError(f"oracle_metrics lacks {', '.join(missing)}: pass a dict made by unlearning_metrics")
        given = {k: oracle_metrics[k] for k in ORACLE_KEYS if k in oracle_metrics}
        return {**given, "cost_ratio": 1.0, "avg_gap": 0.0}
    if oracle is None:
        return None
    return {
        **_model_metrics(oracle, task, original, seed, batch_size),
        "seconds": None,
        "cost_ratio": 1.0,
        "avg_gap": 0.0,
    }


def _avg_gap(metrics: dict, reference: dict | None) -> float | None:
    """Mean |metrics - reference| over :data:`AVG_GAP_KEYS`; None without a reference or with a missing value."""
    if reference is None:
        return None
    pairs = [(metrics.get(k), reference.get(k)) for k in AVG_GAP_KEYS]
    if any(a is None or b is None for a, b in pairs):
        return None
    return sum(abs(a - b) for a, b in pairs) / len(pairs)


def _ratio(seconds: float | None, reference_seconds: float | None) -> float | None:
    """``seconds / reference_seconds``; None when either is unknown (None or NaN) or the reference is not > 0."""
    if seconds is None or reference_seconds is None:
        return None
    if not (math.isfinite(seconds) and math.isfinite(reference_seconds)) or reference_seconds <= 0:
        return None
    return seconds / reference_seconds


def unlearning_metrics(
    model: nn.Module,
    task: UnlearningTask,
    *,
    original: nn.Module | None = None,
    oracle: nn.Module | None = None,
    seconds: float | None = None,
    oracle_seconds: float | None = None,
    oracle_metrics: dict | None = None,
    seed: int = 0,
    batch_size: int = 512,
) -> dict:
    """The unlearning metrics of the module docstring for ``model`` on ``task``, in percent, JSON-serialisable.

    ``original`` (the model before unlearning) and ``oracle`` (retrained without the forget set) enable the distance
    and oracle metrics. ``oracle_metrics``, the oracle's own numbers computed earlier (the ``["oracle"]`` entry of an
    earlier result, or ``unlearning_metrics(oracle, task)``), replaces computing them; ``oracle_seconds`` then
    defaults to its ``seconds``. ``cost_ratio`` is None unless both times are known (finite, oracle's > 0).
    ``seed`` draws the attacks' shadow members: the same inputs give identical numbers.
    """
    reference = _oracle_entry(oracle, oracle_metrics, task, original, seed, batch_size)
    if reference is not None:
        oracle_seconds = oracle_seconds if oracle_seconds is not None else reference.get("seconds")
        reference["seconds"] = oracle_seconds
    metrics = _model_metrics(model, task, original, seed, batch_size)
    per_class = metrics.pop("per_class_accuracy")
    has_oracle = oracle is not None
    metrics.update(
        l2_to_oracle=_l2_if_comparable(model, oracle),
        kl_to_oracle_forget=mean_kl(model, oracle, task.forget, batch_size) if has_oracle else None,
        kl_to_oracle_test=mean_kl(model, oracle, task.test, batch_size) if has_oracle else None,
        seconds=seconds,
        cost_ratio=_ratio(seconds, oracle_seconds),
        avg_gap=_avg_gap(metrics, reference),
        per_class_accuracy=per_class,
        oracle=reference,
    )
    context = {"dataset": task.dataset, "scenario": task.scenario, "forget_classes": list(task.forget_classes)}
    sizes = {"forget": len(task.forget), "retain": len(task.retain), "test": len(task.test)}
    return {**context, **metrics, "num_samples": sizes}


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
    classes = list(metrics["per_class_accuracy"])
    values = [v if v is not None else 0.0 for v in metrics["per_class_accuracy"].values()]
    forget = {str(c) for c in metrics["forget_classes"]}
    colors = ["tab:red" if c in forget else "tab:blue" for c in classes]
    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.subplots()
    ax.bar(classes, values, color=colors)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class (red: forgotten)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or f"per-class test accuracy ({metrics['dataset']})")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_per_class_comparison(runs: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars of per-class test accuracy, one colour per run (e.g. original, unlearned, retrained); the
    forgotten classes' ticks are marked in red."""
    first = next(iter(runs.values()))
    classes = list(first["per_class_accuracy"])
    forget = {str(c) for c in first["forget_classes"]}
    width = 0.8 / max(len(runs), 1)
    fig = Figure(figsize=(max(6, 0.6 * len(classes) * max(len(runs), 1) ** 0.5), 3.2), dpi=100)
    ax = fig.subplots()
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
    return Path(path)


_BAR_PANELS = (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia_efficacy", "MIA-efficacy"))


def _oracle_reference(rows: dict[str, dict]) -> dict | None:
    """The row named ``oracle`` if there is one, else the ``"oracle"`` entry of the first row that has one."""
    if "oracle" in rows:
        return rows["oracle"]
    return next((row["oracle"] for row in rows.values() if isinstance(row.get("oracle"), dict)), None)


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def plot_metric_bars(rows: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Four panels (UA, RA, TA, MIA-efficacy, in %), one bar per method, the oracle as a dashed line.

    ``rows`` maps a method name to its metrics (e.g. :func:`unlearning_metrics` output or a mean over seeds); a
    ``"<key>_std"`` entry (e.g. ``"ua_std"``) draws an error bar. The oracle line comes from the row named
    ``"oracle"`` when there is one (it is also drawn as a bar), otherwise from the ``"oracle"`` entry of the first
    row that has one; without either there is no line. A missing value leaves its bar out.
    """
    if not rows:
        raise ConfigError("plot_metric_bars needs at least one row of metrics")
    names, reference = list(rows), _oracle_reference(rows)
    x = np.arange(len(names))
    width = len(_BAR_PANELS) * (1.2 + 0.35 * len(names))
    fig = Figure(figsize=(width, 3.4), dpi=100)
    axes = fig.subplots(1, len(_BAR_PANELS))
    for ax, (key, label) in zip(axes, _BAR_PANELS):
        values = [_number(rows[n].get(key)) for n in names]
        errors = np.array([_number(rows[n].get(f"{key}_std")) for n in names])
        errors = None if np.isnan(errors).all() else np.nan_to_num(errors)
        ax.bar(x, values, yerr=errors, capsize=3, color=[f"C{i % 10}" for i in range(len(names))])
        if reference is not None and reference.get(key) is not None:
            ax.axhline(float(reference[key]), color="black", linestyle="--", linewidth=1, label="oracle")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title(f"{label} (%)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
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

    def __post_init__(self) -> None:
        check_numbers(self)


def evaluate_model_dir(config: EvaluateConfig, out_dir: str | Path) -> dict:
    """Load ``config.model_dir``, evaluate it and write ``metrics.json`` and ``per_class_accuracy.png``."""

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
