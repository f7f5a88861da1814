"""Pipeline steps for concept erasure on diffusion models (imported by :mod:`pipelines.steps`).

- ``erase``: run a registered diffusion method (``fmn``, ``salun``, ``esd``) -> ``output_dir`` (an erasure directory);
- ``evaluate_erasure``: the harness on a pipeline or an erasure directory -> ``erasure_metrics_path``;
- ``attack_erasure``: attack an erasure (and the original and the oracle) -> ``attack_metrics_path`` and the ASRs;
- ``sequential_erasure``: erasure requests one after another, each on the previous result, evaluated after each
  -> ``sequence_path`` (sequence.json / .md / .png) and ``final_dir`` (the last erasure directory);
- ``erasure_report``: compare several evaluated (and attacked) erasures -> ``report_path`` (report.md,
  comparison.png, grid.png).

The logic lives in :mod:`concept_erase.diffusion.erasure`, :mod:`concept_erase.diffusion.evaluation`,
:mod:`concept_erase.diffusion.attack` and :mod:`concept_erase.diffusion.report`; a step only connects it to files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from concept_erase.core.errors import ConfigError
from concept_erase.core.io import config_paths
from concept_erase.core.registry import get_method, register_step
from concept_erase.diffusion.attack import AttackConfig, attack_erasure
from concept_erase.diffusion.erasure import erase, erasure_base, erasure_inputs
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, judge_inputs
from concept_erase.diffusion.presets import resolve_settings
from concept_erase.diffusion.report import attach_attacks, summarize_attack, summarize_evaluation, write_erasure_report
from concept_erase.diffusion.sequential import ORACLE_CHOICES, erase_sequence, normalize_requests
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, resolve_model

__all__ = [
    "EraseStepConfig",
    "EvaluateErasureStepConfig",
    "AttackErasureStepConfig",
    "ErasureReportStepConfig",
    "SequentialErasureStepConfig",
]


@dataclass
class EraseStepConfig:
    """Erase concepts from a diffusion model with a registered method; the erasure directory is the step's output."""

    method: str = ""
    concepts: list[str] = field(default_factory=list)
    model: str = ""  # diffusers pipeline directory, hub id or shipped asset name; empty: the embedded tiny SD
    config: dict[str, Any] = field(default_factory=dict)  # the method's config keys (concept-erase list shows methods)
    presets: bool = True  # apply the model's erasure_presets.json (or its family's defaults) under these keys

    def __post_init__(self) -> None:
        if not self.method:
            raise ConfigError("method is empty: name a diffusion method (fmn, salun, esd)")
        if not [c for c in self.concepts if str(c).strip()]:
            raise ConfigError("concepts is empty: name at least one concept to erase")
        # validate the method, its config and the model's presets now; the user's keys stay as given, so that the
        # presets fill only the others (erasure.json records each key's source)
        entry = get_method(self.method, tag="diffusion")
        resolve_settings(entry, resolve_model(self.model or DEFAULT_MODEL), self.config, self.presets)


@register_step("erase", EraseStepConfig, outputs=("output_dir", "seconds", "artifact_bytes"))
def erase_step(context, config: EraseStepConfig) -> dict:
    """Erase concepts from a diffusion model (artifact + erasure.json in the step directory)."""
    context.check_inputs(resolve_model(config.model or DEFAULT_MODEL), *config_paths(config.config))
    record = erase(
        config.model or None,
        config.method,
        config.concepts,
        dict(config.config),
        context.step_dir,
        atomic=False,
        presets=config.presets,
    )
    artifact = record["artifact"]
    return {"output_dir": str(context.step_dir), "seconds": record["seconds"], "artifact_bytes": artifact["bytes"]}


def _check_scored_inputs(context, config, evaluation: EvaluationConfig) -> None:
    """Refuse a step directory overlapping what an evaluate or attack step reads: the model (an erasure directory
    and its base model), the adapter, the original, a given oracle directory, a local judge and the prompt file."""
    oracle = resolve_model(config.oracle) if config.oracle not in (None, "auto", "none") else None
    model = resolve_model(config.model or DEFAULT_MODEL)
    local = judge_inputs(config.judge, config.clip_model, evaluation)
    context.check_inputs(*erasure_inputs(model), config.adapter, resolve_model(config.original), oracle, *local)


@dataclass
class EvaluateErasureStepConfig:
    """Score a diffusion model (plus an erasure adapter) against the original and the retrain oracle."""

    model: str = ""  # pipeline directory, hub id, shipped asset name or erasure directory; empty: the embedded tiny SD
    adapter: str | None = None
    original: str | None = None  # the model before erasure (default: model, or an erasure's base model)
    oracle: str | None = "auto"  # auto | none | a pipeline directory
    judge: str | None = None  # digits (default), clip, nudenet or a digit-judge directory
    clip_model: str | None = None  # the clip judge's CLIPModel: hub id or directory (default: CLIP ViT-L/14)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)  # prompts_file: a CSV prompt set


@register_step(
    "evaluate_erasure",
    EvaluateErasureStepConfig,
    outputs=(
        "erasure_metrics_path",
        "forget_accuracy",
        "retain_accuracy",
        "frechet_to_real",
        "erasure_moved",
        "seconds",
    ),
)
def evaluate_erasure_step(context, config: EvaluateErasureStepConfig) -> dict:
    """Forget / retain accuracy, Frechet distances, gaps to the oracle (the judge's own metrics: CLIP score,
    NudeNet counts), whether the erasure moved forget accuracy; metrics.json, grid.png, report.md."""
    _check_scored_inputs(context, config, config.evaluation)
    metrics = evaluate_erasure(
        config.model or str(DEFAULT_MODEL),
        config.evaluation,
        adapter=config.adapter,
        original=config.original,
        oracle=config.oracle,
        judge=config.judge,
        clip_model=config.clip_model,
        output_dir=context.step_dir,
        atomic=False,  # the step directory is already written atomically by the runner
    )
    keys = ("forget_accuracy", "retain_accuracy", "frechet_to_real", "erasure_moved", "seconds")
    return {"erasure_metrics_path": str(context.step_dir / "metrics.json"), **{k: metrics.get(k) for k in keys}}


@dataclass
class AttackErasureStepConfig:
    """Attack an erasure (an erasure directory, or a pipeline plus an adapter), the original and the retrain oracle
    with one attack and budget; the attack success rates are the step's outputs."""

    model: str = ""  # erasure directory or pipeline directory (with adapter); empty: the embedded tiny SD
    concept: str | None = None  # the erased concept to attack (default: the one erasure.json records)
    adapter: str | None = None
    original: str | None = None  # the model before erasure (default: an erasure's base model, or model)
    oracle: str | None = "auto"  # auto | none | a pipeline directory
    judge: str | None = None  # digits (default), clip, nudenet or a digit-judge directory
    clip_model: str | None = None  # the clip judge's CLIPModel: hub id or directory
    attack: AttackConfig = field(default_factory=AttackConfig)  # attack: ti | prompt, and its budget


@register_step(
    "attack_erasure",
    AttackErasureStepConfig,
    outputs=("attack_metrics_path", "asr", "asr_original", "asr_oracle", "seconds"),
)
def attack_erasure_step(context, config: AttackErasureStepConfig) -> dict:
    """Attack success rate on the erased model, the original and the oracle; attack.json, grid.png, loss.png,
    report.md, found.json (and embeddings.safetensors for ti)."""
    _check_scored_inputs(context, config, EvaluationConfig())
    metrics = attack_erasure(
        config.model or str(DEFAULT_MODEL),
        config.attack,
        concept=config.concept,
        adapter=config.adapter,
        original=config.original,
        oracle=config.oracle,
        judge=config.judge,
        clip_model=config.clip_model,
        output_dir=context.step_dir,
        atomic=False,  # the step directory is already written atomically by the runner
    )
    asr = metrics["asr"]
    return {
        "attack_metrics_path": str(context.step_dir / "attack.json"),
        "asr": asr["erased"],
        "asr_original": asr["original"],
        "asr_oracle": asr["oracle"],
        "seconds": metrics["seconds"],
    }


@dataclass
class ErasureReportStepConfig:
    """Compare evaluated erasures: a table against the original and the oracle, a plot and one image grid; with
    attack steps, each erasure's attack success rate under every attack beside the original's and the oracle's."""

    title: str = ""
    evaluations: list[str] = field(default_factory=list)  # evaluate_erasure step ids; empty: every earlier one
    # attack_erasure step ids, matched to the evaluations by the erasure they attacked; empty: every earlier one
    # that attacked an evaluated erasure
    attacks: list[str] = field(default_factory=list)


@register_step(
    "erasure_report", ErasureReportStepConfig, outputs=("report_path", "report_json", "plot_path", "grid_path")
)
def erasure_report_step(context, config: ErasureReportStepConfig) -> dict:
    """Tabulate forget / retain accuracy, distance, time, memory, artifact size and attack success rates per
    erasure; plot; grid."""

    ids = context.outputs_with("erasure_metrics_path", config.evaluations, what="evaluate_erasure")
    rows = [summarize_evaluation(s.removeprefix("eval_"), context.outputs[s]["erasure_metrics_path"]) for s in ids]
    if config.attacks:
        attack_ids = context.outputs_with("attack_metrics_path", config.attacks, what="attack_erasure")
    else:
        attack_ids = [s for s, out in context.outputs.items() if "attack_metrics_path" in out]
    attacks = [summarize_attack(s, context.outputs[s]["attack_metrics_path"]) for s in attack_ids]
    for skipped in attach_attacks(rows, attacks, strict=bool(config.attacks)):
        context.log(f"report: attack step {skipped['step']!r} attacked no evaluated erasure; left out")
    return write_erasure_report(rows, context.step_dir, config.title)


@dataclass
class SequentialErasureStepConfig:
    """Apply erasure requests one after another, each on top of the previous result (a request log beside every
    artifact), evaluating after each request and optionally comparing with the same set erased in one request."""

    method: str = ""
    requests: list[Any] = field(default_factory=list)  # each a concept or a list of concepts: [seven, [two, five]]
    model: str = ""  # pipeline directory, hub id, asset name or an erasure directory to continue; empty: tiny SD
    config: dict[str, Any] = field(default_factory=dict)  # the method's config keys, the same for every request
    presets: bool = True
    evaluate: bool = True
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)  # forget / retain: set per request
    oracle: str = "cached"  # cached (shipped or cached only) | auto (train missing ones) | none
    compare_single: bool = False  # also erase every concept in one request and compare
    judge: str | None = None

    def __post_init__(self) -> None:
        if not self.method:
            raise ConfigError("method is empty: name a diffusion method (fmn, salun, esd, uce, rece)")
        self.requests = normalize_requests(self.requests)
        if self.oracle not in ORACLE_CHOICES:
            raise ConfigError(f"oracle must be one of {', '.join(ORACLE_CHOICES)}, got {self.oracle!r}")
        if self.evaluation.forget or self.evaluation.retain is not None:
            raise ConfigError(
                "evaluation.forget / retain are set per request (every concept erased so far / the "
                "rest): leave them out"
            )
        entry = get_method(self.method, tag="diffusion")
        resolve_settings(entry, erasure_base(self.model or None), self.config, self.presets)


@register_step(
    "sequential_erasure",
    SequentialErasureStepConfig,
    outputs=("sequence_path", "final_dir", "first_request_goal_met", "retain_accuracy", "seconds"),
)
def sequential_erasure_step(context, config: SequentialErasureStepConfig) -> dict:
    """Erasure requests in sequence: one erasure directory per request (01-seven/, 02-two/, ...), their
    evaluations (eval/), single/ with compare_single, sequence.json / sequence.md / sequence.png."""
    model = resolve_model(config.model or DEFAULT_MODEL)
    local = judge_inputs(config.judge, None, config.evaluation) if config.evaluate else []
    context.check_inputs(*erasure_inputs(model), *config_paths(config.config), *local)
    summary = erase_sequence(
        config.model or None,
        config.method,
        config.requests,
        dict(config.config),
        context.step_dir,
        evaluate=config.evaluate,
        evaluation=config.evaluation,
        oracle=config.oracle,
        compare_single=config.compare_single,
        judge=config.judge,
        atomic=False,  # the step directory is already written atomically by the runner
        presets=config.presets,
        progress=context.log,
    )
    first = summary["first_request"] or {}
    last = summary["steps"][-1]
    return {
        "sequence_path": str(context.step_dir / "sequence.json"),
        "final_dir": str(context.step_dir / summary["final_dir"]),
        "first_request_goal_met": first.get("goal_met"),
        "retain_accuracy": last.get("retain_accuracy"),
        "seconds": summary["seconds"],
    }
