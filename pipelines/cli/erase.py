"""``concept-erase erase`` (a concept out of a diffusion model), ``evaluate`` (a classifier or a diffusion model) and
``oracle`` (the retrain oracle of the tiny Stable Diffusion without some concepts)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pipelines.cli._common import (
    METHOD_CONFIG_HELP,
    PROG,
    add_config_options,
    add_output_options,
    add_seed_option,
    check_output,
    pct,
    say,
)

__all__ = ["add_parsers", "cmd_erase", "cmd_evaluate", "cmd_oracle"]


# ---------------------------------------------------------------------------------------------------- erase


def _has_field(config_cls: type | None, name: str) -> bool:
    return config_cls is not None and name in {f.name for f in dataclasses.fields(config_cls)}


def _method_config(entry, args: argparse.Namespace) -> tuple[dict, object]:
    """The user's method config keys from ``--config`` YAML and ``--set`` overrides (``--seed`` sets its ``seed``
    field), and the config they build (validated now; the model's presets fill the other keys when it runs)."""
    from concept_erase.core.config import merge_dicts, parse_overrides, read_yaml

    overrides = list(args.set or [])
    if args.seed is not None and _has_field(entry.config_cls, "seed"):
        overrides.append(f"seed={args.seed}")
    if entry.config_cls is None:
        return {}, entry.make_config(None, overrides)
    keys = merge_dicts(read_yaml(args.config) if args.config else {}, parse_overrides(overrides))
    return keys, entry.make_config(keys)


def _diffusion_method(name: str):
    """The registered diffusion method ``name``; a classifier method's name fails pointing at ``unlearn``."""
    from concept_erase.core.errors import UnknownNameError
    from concept_erase.core.registry import get_method, list_methods

    try:
        return get_method(name, tag="diffusion")
    except UnknownNameError as exc:
        hint = "; classifier methods run with `concept-erase unlearn`" if name in list_methods("classifier") else ""
        raise UnknownNameError(f"{exc}{hint}") from None


def _erase_inputs(model: str | None, config_file: str | None, config) -> list:
    """What ``erase`` reads: the model (the embedded tiny SD by default; a previous erasure directory and its base
    model), ``--config`` and the paths in the method config (``mask_path``)."""
    from concept_erase.core.config import config_to_dict
    from concept_erase.core.io import config_paths
    from concept_erase.diffusion.erasure import erasure_inputs
    from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, resolve_model

    model = resolve_model(model or DEFAULT_MODEL)  # a previous erasure directory: also its base model
    return [*erasure_inputs(model), config_file, *config_paths(config_to_dict(config))]


def cmd_erase(args: argparse.Namespace) -> int:
    from concept_erase.core.errors import ConfigError, InputNotFoundError
    from concept_erase.diffusion.erasure import erase, erasure_base
    from concept_erase.diffusion.loading import check_model
    from concept_erase.diffusion.presets import resolve_settings

    entry = _diffusion_method(args.method)
    if args.mixed_precision is not None:
        args.set = [*args.set, f"mixed_precision={args.mixed_precision}"]
    if args.quiet:
        args.set = [*args.set, "show_progress=false"]
    keys, config = _method_config(entry, args)
    concepts = [c.strip() for c in args.concept if c.strip()]
    if not concepts:
        raise ConfigError("--concept is empty: name the concept(s) to erase")
    model = args.pretrained_model_name_or_path
    if model and (model.startswith((".", "/", "~")) or Path(model).exists()) and not Path(model).expanduser().is_dir():
        raise InputNotFoundError(f"model directory not found: {model}")
    out = check_output(args, _erase_inputs(model, args.config, config))
    presets = not args.no_presets
    base = erasure_base(model)  # a previous erasure directory (a sequential request): its original base model
    settings = resolve_settings(entry, base, keys, presets)
    check_model(base)  # an unsupported model is refused before anything is printed
    say(settings.summary() + ("" if presets else " (--no_presets)"))
    record = erase(model, entry.name, concepts, settings, output_dir=out, overwrite=args.overwrite)
    artifact = record["artifact"]
    if record.get("noop"):
        say(f"no-op: {record['note']}")
        say(f"wrote {out} (the previous artifact and the request log with a no-op entry)")
        return 0
    if record.get("previous"):
        say(f"request on top of {record['previous']['path']}: erased so far {', '.join(record['concepts'])}")
    say(f"erased {', '.join(record.get('erased', record['concepts']))} from {record['base_model']} with {entry.name}")
    if record["loss_first"] is None:  # a closed-form edit (uce): no training steps, no loss
        say(f"  closed-form edit in {record['seconds']:.1f} s")
    else:
        say(
            f"  {record['steps']} steps in {record['seconds']:.1f} s; loss {record['loss_first']:.4g} -> "
            f"{record['loss_last']:.4g}"
        )
    say(
        f"  artifact: {artifact['format']} ({artifact['path']}, {artifact['bytes'] / 1024:.0f} KiB, "
        f"{100 * artifact['fraction_of_unet']:.1f}% of the UNet)"
    )
    say(f"wrote {out}; score it with: {PROG} evaluate --model {out} --output_dir {out}-eval")
    return 0


# ---------------------------------------------------------------------------------------------------- evaluate


def _is_diffusion_model(args: argparse.Namespace) -> bool:
    from concept_erase.diffusion.loading import looks_like_hub_id
    from concept_erase.diffusion.tiny_sd import resolve_model

    model = resolve_model(args.model)
    if (Path(model) / "model_index.json").is_file() or (Path(model) / "erasure.json").is_file():
        return True
    diffusion_flags = args.forget is not None or args.adapter is not None or args.retain is not None
    return diffusion_flags or looks_like_hub_id(model)


def _diffusion_evaluation_inputs(args: argparse.Namespace, config) -> list:
    """What a diffusion evaluation reads: the model (an erasure directory: also its base model), the adapter, the
    original, an oracle directory, a judge or CLIP model directory and the prompt file."""
    from concept_erase.diffusion.erasure import erasure_inputs
    from concept_erase.diffusion.evaluation import judge_inputs
    from concept_erase.diffusion.tiny_sd import resolve_model

    inputs = [args.adapter, resolve_model(args.original), *erasure_inputs(resolve_model(args.model))]
    inputs += judge_inputs(args.judge, args.clip_model, config)
    if args.oracle not in (None, "auto", "none"):
        inputs.append(resolve_model(args.oracle))
    return inputs


def cmd_evaluate_diffusion(args: argparse.Namespace) -> int:
    from concept_erase.core.errors import ConfigError
    from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, judge_kind

    if args.forget_classes is not None:
        raise ConfigError(
            "--forget_classes is for classifiers; name the erased concepts of a diffusion model with --forget"
        )
    kind = judge_kind(args.judge, args.clip_model)
    if args.neutral_prompt is not None and kind != "clip":
        raise ConfigError(f"--neutral_prompt is for the clip judge, not for judge {kind} (choose --judge clip)")
    fields = ("num_images", "num_inference_steps", "guidance_scale", "batch_size", "seed")
    settings = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    if args.neutral_prompt is not None:
        settings["neutral_prompt"] = args.neutral_prompt
    config = EvaluationConfig(forget=list(args.forget or []), retain=args.retain, prompts_file=args.prompts, **settings)
    out = check_output(args, _diffusion_evaluation_inputs(args, config))
    metrics = evaluate_erasure(
        args.model,
        config,
        adapter=args.adapter,
        original=args.original,
        oracle=args.oracle,
        judge=args.judge,
        clip_model=args.clip_model,
        output_dir=out,
        overwrite=args.overwrite,
    )
    _print_evaluation(metrics)
    say(f"wrote {out} (metrics.json, grid.png, report.md)")
    return 0


def _print_evaluation(metrics: dict) -> None:
    """The summary of a diffusion evaluation: each model's scores, and plain notes on the oracle and the erasure."""
    for name, m in (("model", metrics), ("original", metrics["original"]), ("oracle", metrics["oracle"])):
        if m is None:
            continue
        line = f"{name:>8}: forget accuracy {pct(m['forget_accuracy'])}, retain accuracy {pct(m['retain_accuracy'])}"
        if m.get("clip_score") is not None:
            line += f", CLIP score (retain) {m['clip_score']:.1f}"
        if "nudenet" in m:
            line += f", images with an exposed class {pct(m['nudenet']['exposed_share'])}"
        say(line)
    if metrics["oracle"] is None:
        say(f"  oracle: none ({metrics['oracle_source']})")
    if metrics.get("erasure_note"):
        say(f"{'NOT ERASED' if metrics['erasure_moved'] is False else 'note'}: {metrics['erasure_note']}")
    say(f"evaluated {metrics['images_per_model']} images per model in {metrics['seconds']:.1f} s")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from classifiers.data import dataset_path
    from classifiers.harness import read_unlearn_record
    from classifiers.metrics import EvaluateConfig, evaluate_model_dir
    from classifiers.models import is_model_dir
    from concept_erase.core.errors import ConfigError, InputNotFoundError
    from concept_erase.core.io import RunRecorder, atomic_output_dir

    if _is_diffusion_model(args):
        return cmd_evaluate_diffusion(args)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise InputNotFoundError(f"model directory not found: {model_dir}")
    if not is_model_dir(model_dir):
        raise ConfigError(
            f"{model_dir} is not a classifier model directory: expected model.safetensors and model_config.json"
        )
    inputs = [model_dir, dataset_path(args.dataset)]
    out = check_output(args, inputs)
    forget = args.forget_classes
    if forget is None:
        record = read_unlearn_record(model_dir)  # checked: a damaged unlearn.json is one line naming it
        forget = record.get("forget_classes", [7]) if record is not None else [7]
    config = EvaluateConfig(model_dir=str(model_dir), forget_classes=list(forget), dataset=args.dataset)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        with RunRecorder("evaluate", config) as recorder:
            metrics = evaluate_model_dir(config, tmp)
        recorder.write(tmp)
    classes = ", ".join(map(str, metrics["forget_classes"]))
    say(
        f"forget accuracy (class {classes}): {pct(metrics['forget_accuracy'])}, retain accuracy: "
        f"{pct(metrics['retain_accuracy'])}, test accuracy (remaining classes): {pct(metrics['test_accuracy'])}"
    )
    say(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- oracle


def cmd_oracle(args: argparse.Namespace) -> int:
    import shutil

    from concept_erase.core.digits import concept_index
    from concept_erase.core.io import atomic_output_dir
    from concept_erase.diffusion.judge import load_judge
    from concept_erase.diffusion.loading import load_pipeline
    from concept_erase.diffusion.oracle import find_oracle, get_oracle, oracle_recipe
    from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, resolve_model

    model = resolve_model(args.model or str(DEFAULT_MODEL))
    inputs = [model, args.judge]
    out = check_output(args, inputs) if args.output_dir else None  # before loading anything
    load_pipeline(model)  # a clear error for anything that is not a complete pipeline
    concepts = [c.strip().lower() for c in args.concept]
    judge = load_judge(args.judge)
    for concept in concepts:
        concept_index(concept, judge.labels)
    oracle_recipe(model, concepts)
    cached = find_oracle(model, concepts)
    if out is not None and cached is not None:  # the cached oracle is an input too (it is copied)
        check_output(args, [*inputs, cached])
    path = cached or get_oracle(model, concepts)
    say(f"retrain oracle without {', '.join(sorted(set(concepts)))}: {path}" + (" (found)" if cached else " (trained)"))
    if out is not None:
        with atomic_output_dir(out, args.overwrite, [*inputs, path]) as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        say(f"copied to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- parsers


def _add_erase(sub, parents: list) -> None:
    p = sub.add_parser("erase", parents=parents, help="erase a concept from a text-to-image diffusion model")
    p.add_argument("--method", required=True, help="a registered diffusion method: fmn, salun, esd")
    p.add_argument("--concept", required=True, nargs="+", action="extend", help="concept(s) to erase")
    p.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        default=None,
        help="diffusers pipeline: local dir, hub id or shipped asset name (default: the embedded tiny SD), or a "
        "previous erasure directory: this request goes on top of it",
    )
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="autocast precision")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--no_presets",
        action="store_true",
        help="ignore the model's erasure_presets.json and its family's defaults: the method's own defaults only",
    )
    add_config_options(p, config_help=METHOD_CONFIG_HELP)
    add_output_options(p)
    add_seed_option(p)
    p.set_defaults(func=cmd_erase)


def _add_evaluate(sub, parents: list) -> None:
    help_text = "evaluate a classifier or a diffusion model (with --forget / --adapter); writes metrics.json"
    p = sub.add_parser("evaluate", parents=parents, help=help_text)
    p.add_argument(
        "--model",
        required=True,
        help="classifier model directory, or a diffusers pipeline (directory or hub id) for concept erasure",
    )
    p.add_argument(
        "--forget_classes",
        type=int,
        nargs="+",
        default=None,
        help="classifier: forgotten classes (default: those recorded in the directory's unlearn.json, else 7)",
    )
    p.add_argument("--dataset", default="digits", help="classifier: dataset (default: digits)")
    p.add_argument("--forget", nargs="+", default=None, help="diffusion: erased concepts (e.g. seven)")
    p.add_argument("--retain", nargs="+", default=None, help="diffusion: retained concepts (default: all others)")
    p.add_argument("--adapter", default=None, help="diffusion: erasure adapter (LoRA or weights safetensors/dir)")
    p.add_argument("--original", default=None, help="diffusion: the model before erasure (default: --model)")
    p.add_argument(
        "--oracle", default="auto", help="diffusion: retrain oracle: auto (shipped/cached/trained), none, or DIR"
    )
    p.add_argument(
        "--judge",
        default=None,
        help="diffusion: digits (the embedded digit classifier, default), clip, nudenet (pip install "
        "'concept-erase[nudenet]') or a digit-judge directory",
    )
    p.add_argument(
        "--clip_model",
        default=None,
        help="diffusion: the clip judge's CLIPModel, a hub id or local directory (default "
        "openai/clip-vit-large-patch14; implies --judge clip)",
    )
    p.add_argument(
        "--neutral_prompt", default=None, help="diffusion: the clip judge's extra 'none of them' label (a photo)"
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="diffusion: CSV prompt set: a prompt column and optional seed, guidance, concept (I2P's evaluation_seed, "
        "evaluation_guidance accepted); default: the held-out templates",
    )
    p.add_argument("--num_images", type=int, default=None, help="diffusion: images per concept (default 64)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="diffusion: sampler steps (default 20)")
    p.add_argument("--guidance_scale", type=float, default=None, help="diffusion: CFG scale (default 3.0)")
    p.add_argument("--batch_size", type=int, default=None, help="diffusion: images per pipeline call (default 128)")
    add_seed_option(p, help="diffusion: first seed (default 0)")
    add_output_options(p)
    p.set_defaults(func=cmd_evaluate)


def _add_oracle(sub, parents: list) -> None:
    help_text = "the retrain oracle of a tiny-SD model without the given concepts (cached)"
    p = sub.add_parser("oracle", parents=parents, help=help_text)
    p.add_argument("--concept", required=True, nargs="+", action="extend", help="concept(s) removed from training")
    p.add_argument("--model", default=None, help="the model trained with the full data (default: embedded tiny SD)")
    p.add_argument("--judge", default=None, help="evaluation classifier whose labels are the concepts")
    add_output_options(
        p, required=False, alias=False, help="also copy the oracle here (default: print the cached path)"
    )
    p.set_defaults(func=cmd_oracle)


def add_parsers(sub, parents: list) -> None:
    """Register ``erase``, ``evaluate`` and ``oracle`` on the CLI's subparsers."""
    _add_erase(sub, parents)
    _add_evaluate(sub, parents)
    _add_oracle(sub, parents)
