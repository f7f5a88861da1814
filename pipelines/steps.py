"""Pipeline steps for classifier unlearning, registered with :func:`concept_erase.core.registry.register_step`.

Each step is ``fn(context, config) -> dict`` of outputs and writes only into ``context.step_dir``. The logic lives in
:mod:`classifiers`; a step only connects it to files. Step types:

- ``train_classifier``: train a model from scratch (``exclude_classes`` gives the retrain oracle) -> ``model_dir``;
- ``saliency_mask``: SalUn saliency of the cross-entropy on the forget set -> ``mask_path``;
- ``unlearn``: run a registered classifier method on a model directory -> ``model_dir``;
- ``evaluate_classifier``: forget / retain / test accuracies -> ``metrics_path``;
- ``bench_classifiers``: a benchmark grid of methods x scenarios x seeds against the retrain oracle -> ``report_path``;
- ``report``: a table of every evaluation (with gaps to a reference, normally the retrained model) -> ``report_path``.

The diffusion steps (``erase``, ``evaluate_erasure``, ``erasure_report``) live in :mod:`pipelines.diffusion_steps`,
a plugin of its own (both are announced in ``pyproject.toml``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader

from classifiers.bench import BenchConfig, bench_inputs, run_bench
from classifiers.data import dataset_path, load_dataset, make_class_task
from classifiers.harness import make_method_config
from classifiers.methods import get_classifier_method
from classifiers.metrics import EvaluateConfig, accuracy, evaluate_model_dir, plot_per_class_comparison
from classifiers.models import load_model, save_model
from classifiers.training import TrainConfig, cross_entropy, train_classifier
from concept_erase.core.config import check_numbers, config_to_dict, merge_dicts, parse_overrides
from concept_erase.core.errors import ConfigError
from concept_erase.core.io import config_paths, write_json
from concept_erase.core.registry import register_step
from concept_erase.core.saliency import SaliencyMask, compute_saliency

__all__ = ["SaliencyMaskConfig", "UnlearnStepConfig", "ReportConfig", "method_config"]


def _need(value: str, key: str) -> str:
    if not value:
        raise ConfigError(f"{key} is empty: name a directory (usually ${{steps.<id>.{key}}})")
    return value


# ---------------------------------------------------------------------------------------------------- train


@register_step(
    "train_classifier",
    TrainConfig,
    outputs=(
        "model_dir",
        "test_accuracy",
        "train_samples",
        "global_step",
        "final_loss",
        "train_seconds",
        "resumed_from",
    ),
)
def train_classifier_step(context, config: TrainConfig) -> dict:
    """Train a classifier from scratch; with exclude_classes, the retrained-without-the-forget-set oracle."""
    context.check_inputs(dataset_path(config.dataset), *config_paths(config_to_dict(config)))
    work_dir = context.work_dir() if config.checkpointing_steps else None
    model, info = train_classifier(config, work_dir=work_dir)
    save_model(model, context.step_dir)
    splits = load_dataset(config.dataset, config.data_seed, config.test_size)
    seen = make_class_task(splits, config.exclude_classes).test_retain if config.exclude_classes else splits.test
    # accuracy on the test samples of the classes the model was trained on
    return {"model_dir": str(context.step_dir), "test_accuracy": accuracy(model, seen), **info}


# ---------------------------------------------------------------------------------------------------- saliency


@dataclass
class SaliencyMaskConfig:
    """SalUn weight saliency: |gradient| of the cross-entropy on the forget classes' training samples."""

    model_dir: str = ""
    forget_classes: list[int] = field(default_factory=lambda: [7])
    ratio: float = 0.5  # fraction of weights kept (trainable)
    mode: Literal["global", "per_layer"] = "global"  # top `ratio` of all weights (SalUn) or of each tensor
    dataset: str = "digits"
    test_size: float = 0.25
    data_seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_numbers(self)  # ratio in (0, 1], test_size in (0, 1), seeds >= 0, batch_size >= 1, all finite


@register_step("saliency_mask", SaliencyMaskConfig, outputs=("mask_path", "fraction_kept"))
def saliency_mask_step(context, config: SaliencyMaskConfig) -> dict:
    """Compute a saliency mask for forgetting the given classes."""
    context.check_inputs(config.model_dir, dataset_path(config.dataset))
    model = load_model(_need(config.model_dir, "model_dir"))
    task = make_class_task(load_dataset(config.dataset, config.data_seed, config.test_size), config.forget_classes)
    loader = DataLoader(task.forget, batch_size=config.batch_size)
    scores = compute_saliency(model, loader, cross_entropy, show_progress=sys.stderr.isatty())
    mask = SaliencyMask.from_scores(scores, ratio=config.ratio, mode=config.mode, loss_name="forget_ce")
    mask_path = context.step_dir / "mask.safetensors"
    mask.save(mask_path)
    mask.plot_summary(context.step_dir / "mask_summary.png")
    return {"mask_path": str(mask_path), "fraction_kept": mask.fraction_kept}


# ---------------------------------------------------------------------------------------------------- unlearn


def method_config(method: str, values: dict | None, seed: int | None = None, overrides: list[str] | None = None):
    """Build a classifier method's config; its ``seed`` defaults to ``seed`` when the method has one."""

    values = merge_dicts(values or {}, parse_overrides(overrides)) if overrides else values
    return make_method_config(method, values, seed)


@dataclass
class UnlearnStepConfig:
    """Run a registered classifier method on a saved model; the unlearned model is saved in the step directory."""

    method: str = "finetune"
    method_config: dict = field(default_factory=dict)
    model_dir: str = ""
    forget_classes: list[int] = field(default_factory=lambda: [7])
    dataset: str = "digits"
    test_size: float = 0.25
    data_seed: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_numbers(self)
        # validate the method name and its config, and record the method's defaults (they enter the config hash)
        self.method_config = config_to_dict(method_config(self.method, self.method_config, self.seed)) or {}


def run_unlearning(model, task, method: str, config: Any, out_dir: Path, work_dir: Path | None = None) -> dict:
    """Unlearn ``model`` in place with ``method`` and save it (and ``unlearn.json``) into ``out_dir``."""
    info = get_classifier_method(method).target(model, task, config, work_dir=work_dir)
    save_model(model, out_dir)
    summary = {"method": method, "config": config_to_dict(config), "forget_classes": list(task.forget_classes), **info}
    write_json(out_dir / "unlearn.json", summary)
    return summary


@register_step("unlearn", UnlearnStepConfig, outputs=("model_dir", "global_step", "seconds"))
def unlearn_step(context, config: UnlearnStepConfig) -> dict:
    """Unlearn the forget classes from a model directory with a registered classifier method."""
    context.check_inputs(config.model_dir, dataset_path(config.dataset), *config_paths(config.method_config))
    cfg = method_config(config.method, config.method_config, config.seed)
    model = load_model(_need(config.model_dir, "model_dir"))
    task = make_class_task(load_dataset(config.dataset, config.data_seed, config.test_size), config.forget_classes)
    info = run_unlearning(model, task, config.method, cfg, context.step_dir, context.work_dir())
    return {"model_dir": str(context.step_dir), "global_step": info.get("global_step"), "seconds": info.get("seconds")}


# ---------------------------------------------------------------------------------------------------- bench


@register_step("bench_classifiers", BenchConfig, outputs=("report_path", "results_csv", "summary_path"))
def bench_classifiers_step(context, config: BenchConfig) -> dict:
    """A benchmark grid (methods x scenarios x seeds) scored against the retrain oracle: tables, CSV, plots."""
    context.check_inputs(*bench_inputs(config))
    run_bench(config, context.step_dir, log=context.log)
    return {
        "report_path": str(context.step_dir / "report.md"),
        "results_csv": str(context.step_dir / "results.csv"),
        "summary_path": str(context.step_dir / "summary.json"),
    }


# ---------------------------------------------------------------------------------------------------- evaluate


@register_step(
    "evaluate_classifier",
    EvaluateConfig,
    outputs=("metrics_path", "forget_accuracy", "retain_accuracy", "test_accuracy", "forget_test_accuracy"),
)
def evaluate_classifier_step(context, config: EvaluateConfig) -> dict:
    """Forget / retain / test accuracies of a model directory, with a per-class bar chart."""
    context.check_inputs(config.model_dir, dataset_path(config.dataset))
    metrics = evaluate_model_dir(config, context.step_dir)
    keys = ("forget_accuracy", "retain_accuracy", "test_accuracy", "forget_test_accuracy")
    return {"metrics_path": str(context.step_dir / "metrics.json"), **{k: metrics[k] for k in keys}}


# ---------------------------------------------------------------------------------------------------- report

_COLUMNS = ("forget_accuracy", "forget_test_accuracy", "retain_accuracy", "test_accuracy")


@dataclass
class ReportConfig:
    """Collect the metrics of earlier evaluation steps into report.md and report.json."""

    title: str = ""
    evaluations: list[str] = field(default_factory=list)  # step ids; empty: every earlier step with a metrics_path
    reference: str | None = None  # step id of the retrained model's evaluation: adds gaps to it

    def __post_init__(self) -> None:
        if self.reference is not None and self.evaluations and self.reference not in self.evaluations:
            raise ConfigError(f"reference {self.reference!r} must be one of evaluations: {', '.join(self.evaluations)}")


@register_step("report", ReportConfig, outputs=("report_path", "report_json", "plot_path"))
def report_step(context, config: ReportConfig) -> dict:
    """Tabulate earlier evaluations (accuracies in %, and the average gap to the reference)."""
    ids = context.outputs_with("metrics_path", config.evaluations)
    if config.reference is not None and config.reference not in ids:
        raise ConfigError(f"reference {config.reference!r} is not an evaluation step; evaluations: {', '.join(ids)}")
    rows = {s: json.loads(Path(context.outputs[s]["metrics_path"]).read_text()) for s in ids}
    ref = rows.get(config.reference) if config.reference else None
    table = []
    for step_id, metrics in rows.items():
        row = {"step": step_id, "model_dir": metrics.get("model_dir"), **{k: metrics.get(k) for k in _COLUMNS}}
        if ref is not None:
            gaps = [abs(metrics[k] - ref[k]) for k in _COLUMNS if metrics.get(k) is not None and ref.get(k) is not None]
            row["avg_gap_to_reference"] = sum(gaps) / len(gaps) if gaps else None
        table.append(row)
    report = {"title": config.title or context.pipeline, "reference": config.reference, "rows": table}
    write_json(context.step_dir / "report.json", report)
    (context.step_dir / "report.md").write_text(_markdown(report, context.output_dir))
    plot = context.step_dir / "per_class_accuracy.png"
    plot_per_class_comparison(rows, plot, title=report["title"])
    return {
        "report_path": str(context.step_dir / "report.md"),
        "report_json": str(context.step_dir / "report.json"),
        "plot_path": str(plot),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _markdown(report: dict, root: Path) -> str:
    has_gap = report["reference"] is not None
    head = ["step", "forget acc (train)", "forget acc (test)", "retain acc", "test acc (remaining)"]
    head += [f"avg gap to {report['reference']}"] if has_gap else []
    lines = [f"# {report['title']}", "", "Accuracies in %. Forget: the forgotten classes' samples.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["step"], *(_pct(row[k]) for k in _COLUMNS)]
        cells += [_pct(row.get("avg_gap_to_reference"))] if has_gap else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Models:"]
    for row in report["rows"]:
        model_dir = row.get("model_dir") or ""
        try:
            model_dir = str(Path(model_dir).relative_to(root))
        except ValueError:
            pass
        lines.append(f"- {row['step']}: `{model_dir}`")
    lines += ["", "![per-class test accuracy](per_class_accuracy.png)"]
    return "\n".join(lines) + "\n"
