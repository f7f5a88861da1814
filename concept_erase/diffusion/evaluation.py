"""Scoring a concept erasure against the original model and the retrain oracle.

    config = EvaluationConfig(forget=["seven"], num_images=64)
    metrics = evaluate_erasure("concept_erase/diffusion/assets/tiny-sd", config, adapter="out/erase-seven", output_dir="out/ev")

For every concept the model generates ``num_images`` images, spread evenly over the held-out prompt templates, with
fixed per-image seeds (``seed + j``: the same seeds for every concept and every model, so comparisons are paired).
The evaluation classifier labels each image; images are quantised to 8 bits first, as a saved PNG would be.

- ``forget_accuracy``: share of the forgotten concepts' images labelled as that concept (lower is better);
- ``retain_accuracy``: the same share for every other concept (higher is better), and ``per_concept``;
- ``frechet_to_real`` / ``frechet_to_original``: Frechet distance between the classifier's penultimate features of the
  retained concepts' images and those of real images of the same classes / of the original model's images;
- the same for the original model (``original``) and the retrain oracle (``oracle``), and ``gaps_to_oracle``.

The original model's and the oracle's generations are cached on disk (keyed by model content and settings), so
scoring many erasures of one model pays for them once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend state
from safetensors.torch import load_file
from scipy import linalg
from tqdm.auto import tqdm

from concept_erase.core.config import COUNT, check_numbers
from concept_erase.core.digits import concept_index, load_digit_arrays
from concept_erase.core.errors import ConfigError, InputNotFoundError, ModelLoadError
from concept_erase.core.io import (
    RunRecorder,
    atomic_file,
    atomic_output_dir,
    cache_dir,
    check_output_dir,
    peak_memory_bytes,
    write_json,
)
from concept_erase.core.tensorfile import save_tensors
from concept_erase.diffusion.erasure import read_erasure, resolve_erasure
from concept_erase.diffusion.judge import load_judge
from concept_erase.diffusion.loading import apply_adapter, concept_token_ids, load_pipeline
from concept_erase.diffusion.oracle import resolve_oracle
from concept_erase.diffusion.tiny_sd import EVAL_TEMPLATES, UNSEEN_WORDS, resolve_model

__all__ = ["EvaluationConfig", "evaluate_erasure", "frechet_distance", "generate", "model_fingerprint"]


@dataclass
class EvaluationConfig:
    forget: list[str] = field(default_factory=list)  # concepts erased; empty: every concept is a retain concept
    retain: list[str] | None = None  # default: every judge label not forgotten
    templates: list[str] = field(default_factory=lambda: list(EVAL_TEMPLATES))  # held-out paraphrases
    num_images: int = 64  # per concept, spread evenly over the templates
    seed: int = 0
    num_inference_steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 128
    unseen_words: list[str] = field(default_factory=lambda: list(UNSEEN_WORDS))  # the forget baseline's words
    grid_seeds: int = 8  # columns of the image grid

    NUMBER_RANGES: ClassVar[dict] = {"grid_seeds": COUNT}

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.num_images < 1:
            raise ConfigError(f"num_images must be >= 1 (images generated per concept), got {self.num_images}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("templates must be a non-empty list of prompt templates, each containing '{}'")
        if self.num_inference_steps < 1 or self.batch_size < 1:
            raise ConfigError("num_inference_steps and batch_size must be >= 1")
        self.forget = [c.strip().lower() for c in self.forget]
        if self.retain is not None:
            self.retain = [c.strip().lower() for c in self.retain]

    def prompts(self, concept: str) -> tuple[list[str], list[int]]:
        """The prompts and seeds of one concept's ``num_images`` images (templates take turns)."""
        prompts, seeds = [], []
        for j in range(self.num_images):
            prompts.append(self.templates[j % len(self.templates)].format(concept))
            seeds.append(self.seed + j // len(self.templates))
        return prompts, seeds

    def generation_key(self) -> dict[str, Any]:
        keys = ("templates", "num_images", "seed", "num_inference_steps", "guidance_scale")
        return {k: getattr(self, k) for k in keys}


# ---------------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], config: EvaluationConfig, desc: str = "generating"):
    """Images ``(N, C, H, W)`` uint8 for ``prompts[i]`` with seed ``seeds[i]``, in batches, with a progress bar.

    Every image has its own generator, so an image does not depend on the batch it was generated in.
    """
    out = []
    with tqdm(total=len(prompts), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(prompts), config.batch_size):
            chunk = slice(start, start + config.batch_size)
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[chunk]]
            images = pipe(
                prompt=prompts[chunk],
                generator=generators,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                output_type="pt",
            ).images
            out.append((images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
            bar.update(len(generators))
    return torch.cat(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows are samples); None when a set
    has fewer than two samples (no covariance: the distance is undefined, and JSON has no NaN).

    Like FID it is biased for small samples: compare values computed with the same number of images, ideally more
    images than feature dimensions (the judge's features have 32).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer samples than feature dimensions give singular covariances
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # regularise as the FID reference code does
            eye = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
    covmean = np.real(covmean)
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean), 0.0))


# ---------------------------------------------------------------------------------------------------- caching


def model_fingerprint(model: str | Path) -> str:
    """Content hash of a local pipeline directory (weights, configs, tokenizer), or the hub id itself."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(path)).encode())
        if file.stat().st_size <= 256 * 2**20:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        else:  # multi-GB weights: size and modification time stand in for the content
            digest.update(f"{file.stat().st_size}:{file.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _cache_file(fingerprint: str, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps([fingerprint, settings], sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "generations" / f"{key}.safetensors"


def cached_generate(model: str | Path, prompts: list[str], seeds: list[int], config: EvaluationConfig, desc: str):
    """:func:`generate` for a reference model (original, oracle), cached on disk by content and settings."""

    settings = {**config.generation_key(), "prompts": prompts, "seeds": seeds}
    file = _cache_file(model_fingerprint(model), settings)
    if file.is_file():
        return load_file(str(file))["images"]
    images = generate(load_pipeline(model), prompts, seeds, config, desc)
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(file) as tmp:
        save_tensors({"images": images.contiguous()}, str(tmp))
    return images


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass
class _Generations:
    """Images of one model, concept by concept, with the judge's labels and features."""

    images: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def judge_with(self, judge) -> _Generations:
        for concept, images in self.images.items():
            logits, feats = judge.classify(images.float() / 255)
            self.labels[concept] = logits.argmax(1).numpy()
            self.features[concept] = feats.numpy().astype(np.float64)
        return self


def _real_features(judge, concepts: list[str]) -> dict[str, np.ndarray]:
    images, labels = load_digit_arrays(judge.config.dataset, judge.config.resolution)
    _, feats = judge.classify(torch.from_numpy(images))
    feats = feats.numpy().astype(np.float64)
    return {c: feats[labels == judge.labels.index(c)] for c in concepts}


def _score(gen: _Generations, judge, forget: list[str], retain: list[str], real, original) -> dict[str, Any]:
    per_concept = {}
    for concept in forget + retain:
        entry = {
            "role": "forget" if concept in forget else "retain",
            "accuracy": float((gen.labels[concept] == judge.labels.index(concept)).mean()),
        }
        if concept in retain:
            entry["frechet_to_real"] = frechet_distance(gen.features[concept], real[concept])
            if original is not None:
                entry["frechet_to_original"] = frechet_distance(gen.features[concept], original.features[concept])
        per_concept[concept] = entry

    def pooled(source) -> np.ndarray:
        return np.concatenate([source[c] for c in retain]) if retain else np.empty((0, 1))

    metrics = {
        "forget_accuracy": _mean([per_concept[c]["accuracy"] for c in forget]),
        "retain_accuracy": _mean([per_concept[c]["accuracy"] for c in retain]),
        "frechet_to_real": frechet_distance(pooled(gen.features), pooled(real)) if retain else None,
    }
    if original is not None and retain:
        metrics["frechet_to_original"] = frechet_distance(pooled(gen.features), pooled(original.features))
    metrics["per_concept"] = per_concept
    return metrics


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _concepts(config: EvaluationConfig, judge, tokenizer) -> tuple[list[str], list[str]]:

    forget = list(dict.fromkeys(config.forget))
    retain = config.retain if config.retain is not None else [c for c in judge.labels if c not in forget]
    retain = [c for c in dict.fromkeys(retain) if c not in forget]
    for concept in forget + retain:
        concept_token_ids(tokenizer, concept)
        concept_index(concept, judge.labels)
    for word in config.unseen_words if forget else []:
        concept_token_ids(tokenizer, word)
    if not forget and not retain:
        raise ConfigError("nothing to evaluate: give at least one concept to forget or retain")
    return forget, retain


def _generate_all(source, concepts: list[str], config: EvaluationConfig, desc: str) -> _Generations:
    """One flat, fully batched generation of every concept's images; ``source`` is a pipeline or a model path."""
    prompts, seeds = [], []
    for concept in concepts:
        p, s = config.prompts(concept)
        prompts += p
        seeds += s
    if isinstance(source, (str, Path)):
        images = cached_generate(source, prompts, seeds, config, desc)
    else:
        images = generate(source, prompts, seeds, config, desc)
    n = config.num_images
    return _Generations({c: images[i * n : (i + 1) * n] for i, c in enumerate(concepts)})


def _unseen_baseline(gen: _Generations, judge, forget: list[str]) -> dict[str, float]:
    """Share of the unseen-word prompts' images labelled as each forgotten concept."""
    labels = np.concatenate(list(gen.labels.values()))
    return {c: float((labels == judge.labels.index(c)).mean()) for c in forget}


def _gaps(metrics: dict[str, Any], oracle: dict[str, Any] | None) -> dict[str, float | None] | None:
    if oracle is None:
        return None
    keys = ("forget_accuracy", "retain_accuracy", "frechet_to_real")
    return {k: None if metrics.get(k) is None or oracle.get(k) is None else metrics[k] - oracle[k] for k in keys}


def evaluate_erasure(
    model: str | Path,
    config: EvaluationConfig,
    adapter: str | Path | None = None,
    original: str | Path | None = None,
    oracle: str | Path | None = "auto",
    judge: str | Path | None = None,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    atomic: bool = True,
) -> dict[str, Any]:
    """Score ``model`` (plus ``adapter``) against ``original`` (default: ``model`` without the adapter) and the
    retrain oracle; with ``output_dir`` also write ``metrics.json``, ``grid.png``, ``report.md`` and ``run.json``
    (atomically; ``atomic=False`` writes into an existing directory that its owner already made atomic).

    ``oracle``: ``"auto"`` finds the shipped or cached oracle of the original model's recipe (training and caching
    it if needed), a path uses that pipeline, ``None`` or ``"none"`` skips it. Everything is validated before anything
    is generated.
    """
    model, original = resolve_model(model), resolve_model(original)
    model, adapter, original, config, erasure_dir = _unpack_erasure(model, adapter, original, config)
    if oracle not in (None, "auto", "none"):
        oracle = resolve_model(oracle)
        _check_oracle_dir(oracle)  # now, not after the original's and the erased model's images were generated
    # every path read: an output overlapping one of them is refused before anything is generated
    inputs = [model, adapter, original, erasure_dir, judge, oracle if oracle not in (None, "auto", "none") else None]
    if output_dir is not None and atomic:
        check_output_dir(output_dir, overwrite, inputs)
    start = time.perf_counter()
    with RunRecorder("evaluate-erasure", config, seed=config.seed, model=str(model), adapter=str(adapter)) as record:
        judge_model = load_judge(judge)
        pipe = load_pipeline(model)
        forget, retain = _concepts(config, judge_model, pipe.tokenizer)
        adapter_info = apply_adapter(pipe, adapter) if adapter is not None else None
        original = original if original is not None else model
        oracle_path, oracle_note = resolve_oracle(original, forget, oracle)
        inputs.append(oracle_path)  # the shipped or cached oracle "auto" found
        sources = {"original": original, "erased": pipe, "oracle": oracle_path}
        if adapter is None and Path(str(original)) == Path(str(model)):
            sources["erased"] = original  # the model under test is the original: generate (or load) once
        metrics, panels = _score_sources(sources, judge_model, forget, retain, config)
        metrics["oracle_source"] = oracle_note
        paths = {"model": model, "original": original, "erasure": erasure_dir, "oracle": oracle_path}
        metrics["settings"] = {
            **config.generation_key(),
            **{key: str(value) if value is not None else None for key, value in paths.items()},
            "adapter": adapter_info,
            "judge": str(judge or "embedded digit judge"),
            "judge_test_accuracy": judge_model.config.test_accuracy,
        }
        metrics["seconds"] = round(time.perf_counter() - start, 3)
        metrics["peak_memory"] = peak_memory_bytes()
    if output_dir is not None:
        target = (
            atomic_output_dir(output_dir, overwrite, inputs) if atomic else contextlib.nullcontext(Path(output_dir))
        )
        with target as tmp:
            _write_evaluation(tmp, metrics, panels, forget, retain, config)
            record.write(tmp)
    return metrics


def _check_oracle_dir(oracle: str | Path) -> None:
    """A given oracle must be a diffusers pipeline directory (``auto`` / ``none`` are handled by the caller)."""
    path = Path(oracle)
    if not path.exists():
        raise InputNotFoundError(f"oracle {oracle} not found: give a diffusers pipeline directory, auto or none")
    if not path.is_dir():
        raise ModelLoadError(f"oracle {oracle} is a file; an oracle is a diffusers pipeline directory (or auto, none)")
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"oracle {oracle} is not a diffusers pipeline directory: it has no model_index.json")


def _unpack_erasure(model, adapter, original, config: EvaluationConfig):
    """An erasure output directory stands for its artifact on its base model (and names the concepts it erased):
    ``(model, adapter, original, config, erasure directory or None)``."""
    erasure = read_erasure(model) if adapter is None else None
    if erasure is None:
        return model, adapter, original, config, None
    erasure_dir = Path(model)
    model, adapter, base = resolve_erasure(model)  # a full pipeline, or an adapter on its base model
    original = original if original is not None else base
    if not config.forget:
        config = dataclasses.replace(config, forget=list(erasure["concepts"]))
    return model, adapter, original, config, erasure_dir


def _write_evaluation(out: Path, metrics: dict, panels: dict, forget: list[str], retain: list[str], config) -> None:
    write_json(out / "metrics.json", metrics)
    plot_grid(panels, forget + retain, forget, config, out / "grid.png")
    save_samples(panels, out / SAMPLES_FILE)
    (out / "report.md").write_text(render_report(metrics))


def _score_sources(sources: dict[str, Any], judge, forget: list[str], retain: list[str], config: EvaluationConfig):
    """Generate, judge and score the model under test, the original and the oracle; ``(metrics, grid panels)``."""
    concepts = forget + retain
    real = _real_features(judge, retain)
    panels: dict[str, _Generations] = {}
    seconds = {}
    for name, source in sources.items():
        if source is not None:
            begin = time.perf_counter()
            panels[name] = _generate_all(source, concepts, config, name).judge_with(judge)
            seconds[name] = time.perf_counter() - begin
    reference = panels["original"]
    metrics: dict[str, Any] = {"forget": forget, "retain": retain}
    metrics.update(_score(panels["erased"], judge, forget, retain, real, reference))
    metrics["original"] = _score(reference, judge, forget, retain, real, reference)
    metrics["oracle"] = _score(panels["oracle"], judge, forget, retain, real, reference) if "oracle" in panels else None
    metrics["gaps_to_oracle"] = _gaps(metrics, metrics["oracle"])
    if forget:
        unseen = dataclasses.replace(config, forget=[])
        baseline: dict[str, Any] = {"words": list(config.unseen_words)}
        for name in ("original", "oracle"):
            if sources.get(name) is not None:
                gen = _generate_all(sources[name], list(config.unseen_words), unseen, f"unseen words ({name})")
                baseline[name] = _unseen_baseline(gen.judge_with(judge), judge, forget)
        metrics["unseen_word_baseline"] = baseline
    metrics["images_per_model"] = len(concepts) * config.num_images
    metrics["generation_seconds"] = round(seconds["erased"], 3)  # the model under test, generation + judging
    return metrics, panels


# ---------------------------------------------------------------------------------------------------- outputs


def plot_grid(panels: dict[str, _Generations], concepts: list[str], forget: list[str], config, path: Path) -> Path:
    """One panel per model (original | erased | oracle); rows are prompts (one per concept), columns seeds."""
    step = len(config.templates)
    columns = list(range(0, config.num_images, step))[: config.grid_seeds]  # first template, seeds 0, 1, ...
    fig = Figure(figsize=(2.2 + 1.1 * len(panels) * len(columns) / 2, 0.45 * len(concepts) + 1))
    axes = fig.subplots(1, len(panels))
    axes = np.atleast_1d(axes)
    for ax, (name, gen) in zip(axes, panels.items()):
        rows = []
        for concept in concepts:
            tiles = [gen.images[concept][j, 0].numpy() for j in columns]
            rows.append(np.concatenate([np.pad(t, 1, constant_values=128) for t in tiles], axis=1))
        ax.imshow(np.concatenate(rows, axis=0), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks([])
        tile = rows[0].shape[0]
        ax.set_yticks([tile * (i + 0.5) for i in range(len(concepts))])
        ax.set_yticklabels([config.templates[0].format(c) for c in concepts] if ax is axes[0] else [])
        for tick, concept in zip(ax.get_yticklabels(), concepts):
            if concept in forget:
                tick.set_color("tab:red")
    fig.suptitle(f"columns: seeds {config.seed}..{config.seed + len(columns) - 1}; red: erased concepts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


SAMPLES_FILE = "samples.safetensors"


def save_samples(panels: dict[str, _Generations], path: Path) -> None:
    """The generated images (uint8), keyed ``<model>/<concept>``: reports re-plot them without generating again."""

    save_tensors(
        {f"{name}/{c}": img.contiguous() for name, gen in panels.items() for c, img in gen.images.items()}, path
    )


def load_samples(path: str | Path) -> dict[str, _Generations]:
    """Inverse of :func:`save_samples`: ``{model: generations}`` (images only)."""

    panels: dict[str, _Generations] = {}
    for key, images in load_file(str(path)).items():
        name, _, concept = key.partition("/")
        panels.setdefault(name, _Generations({})).images[concept] = images
    return panels


def _fmt(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.2f}"


def render_report(metrics: dict[str, Any]) -> str:
    rows = [("erased (model under test)", metrics), ("original", metrics["original"])]
    if metrics["oracle"] is not None:
        rows.append(("retrain oracle", metrics["oracle"]))
    lines = [
        "# Concept erasure evaluation",
        "",
        f"Forgotten: {', '.join(metrics['forget']) or 'none'}. Retained: {', '.join(metrics['retain']) or 'none'}. "
        f"{metrics['settings']['num_images']} images per concept, {metrics['settings']['num_inference_steps']} "
        f"steps, guidance {metrics['settings']['guidance_scale']}; held-out templates only.",
        "",
        "| model | forget acc (lower is better) | retain acc | FD retain vs real | FD retain vs original |",
        "|---|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {_fmt(m['forget_accuracy'])} | {_fmt(m['retain_accuracy'])} | "
            f"{_fmt(m.get('frechet_to_real'), False)} | {_fmt(m.get('frechet_to_original'), False)} |"
        )
    gaps = metrics["gaps_to_oracle"]
    if gaps:
        lines += [
            "",
            "Gaps to the oracle (model minus oracle): "
            + ", ".join(f"{k} {_fmt(v, k != 'frechet_to_real')}" for k, v in gaps.items()),
        ]
    else:
        lines += ["", f"No retrain oracle: {metrics['oracle_source']}"]
    baseline = metrics.get("unseen_word_baseline")
    if baseline:
        for name in ("original", "oracle"):
            if name in baseline:
                shares = ", ".join(f"{c} {_fmt(v)}" for c, v in baseline[name].items())
                lines.append(f"Unseen-word baseline ({name}, prompts with {', '.join(baseline['words'])}): {shares}.")
    lines += ["", "| concept | role | erased | original | oracle |", "|---|---|---|---|---|"]
    for concept, entry in metrics["per_concept"].items():
        oracle = metrics["oracle"]["per_concept"][concept]["accuracy"] if metrics["oracle"] else None
        original = metrics["original"]["per_concept"][concept]["accuracy"]
        lines.append(f"| {concept} | {entry['role']} | {_fmt(entry['accuracy'])} | {_fmt(original)} | {_fmt(oracle)} |")
    lines += [
        "",
        f"Evaluation wall time {metrics['seconds']:.1f} s ({metrics['images_per_model']} images per model).",
        "",
    ]
    lines.append("![grid](grid.png)")
    return "\n".join(lines) + "\n"
