"""The ``concept-erase`` command line.

    concept-erase unlearn --method salun --dataset digits --model cnn --forget class:3 --output out/salun
    concept-erase bench classifiers --dataset mnist5k --scenarios class:3 random:0.1 --seeds 3 --output out/bench
    concept-erase evaluate --model out/ft --output_dir out/ft-eval
    concept-erase erase --method fmn --concept seven --output_dir out/fmn-seven
    concept-erase evaluate --model out/fmn-seven --output_dir out/fmn-seven-eval
    concept-erase demo --output_dir outputs/demo
    concept-erase run quickstart --output_dir out/quickstart
    concept-erase list

Errors the user can fix exit with status 2 and one line on stderr; an unexpected exception exits with status 1 and
one line (``--debug`` prints the traceback). Every command writes its output directory atomically and refuses an
existing non-empty one unless ``--overwrite`` is given (``run`` resumes its own earlier output instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from pathlib import Path

from concept_erase import __version__
from concept_erase.core.errors import ConceptEraseError, ConfigError, InputNotFoundError, UnknownNameError

PROG = "concept-erase"
CONFIGS_DIR = Path(__file__).parent / "configs"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (status 2), like every other error of the command."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------------------- helpers


def _say(text: str) -> None:
    print(text, flush=True)


def _has_field(config_cls: type | None, name: str) -> bool:
    return config_cls is not None and name in {f.name for f in dataclasses.fields(config_cls)}


def _method_config(entry, args: argparse.Namespace):
    """The method's config from ``--config`` YAML and ``--set`` overrides; ``--seed`` sets its ``seed`` field."""
    from concept_erase.core.config import load_config

    overrides = list(args.set or [])
    if args.seed is not None and _has_field(entry.config_cls, "seed"):
        overrides.append(f"seed={args.seed}")
    if entry.config_cls is None:
        return entry.make_config(None, overrides)
    return load_config(entry.config_cls, args.config, overrides)


def _check_output(args: argparse.Namespace) -> Path:
    from concept_erase.core.io import check_output_dir

    return check_output_dir(args.output_dir, args.overwrite)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


# ---------------------------------------------------------------------------------------------------- unlearn


def _config_values(args: argparse.Namespace) -> dict:
    """``--config`` YAML merged with ``--set`` overrides, as a plain mapping (validated by whoever builds from it)."""
    from concept_erase.core.config import merge_dicts, parse_overrides, read_yaml

    values = read_yaml(args.config) if args.config else {}
    return merge_dicts(values, parse_overrides(args.set)) if args.set else values


def _superclasses(spec: str | None) -> list[list[int]] | None:
    """``"0,1;2,3;4,5"`` -> ``[[0, 1], [2, 3], [4, 5]]``."""
    if not spec:
        return None
    try:
        return [[int(c) for c in group.split(",") if c.strip()] for group in spec.split(";") if group.strip()]
    except ValueError:
        raise ConfigError(f"--superclasses takes groups like '0,1;2,3;4,5', got {spec!r}") from None


def _unlearn_job(args: argparse.Namespace):
    from classifiers.harness import UnlearnJob
    from classifiers.models import MODELS, is_model_dir
    from concept_erase.core.config import parse_overrides

    model, weights = args.model, args.weights
    if model not in MODELS:  # a model directory (its own architecture), as earlier releases took
        if not Path(model).is_dir():
            if "/" in model or Path(model).exists():
                raise InputNotFoundError(f"model directory not found: {model}")
            raise ConfigError(
                f"unknown model {model!r}; accepted models: {', '.join(sorted(MODELS))}, or a model directory"
            )
        if not is_model_dir(model):
            raise ConfigError(f"{model} is not a classifier model directory (model.safetensors + model_config.json)")
        model, weights = json.loads((Path(model) / "model_config.json").read_text()).get("name", "cnn"), model
    forget = args.forget
    if args.forget_classes:
        forget = "class:" + ",".join(map(str, args.forget_classes))
    return UnlearnJob(
        method=args.method,
        method_config=_config_values(args),
        dataset=args.dataset,
        model=model,
        forget=forget,
        superclasses=_superclasses(args.superclasses),
        seed=args.seed if args.seed is not None else 0,
        recipe=parse_overrides(args.recipe) if args.recipe else {},
        weights=weights,
        oracle=not args.no_oracle,
    )


def _vs_oracle(metrics: dict, key: str) -> str:
    value, oracle = metrics.get(key), (metrics.get("oracle") or {}).get(key)
    text = "n/a" if value is None else f"{value:.2f}"
    return text + (f" (oracle {oracle:.2f})" if oracle is not None else "")


def cmd_unlearn(args: argparse.Namespace) -> int:
    from classifiers.harness import run_job, write_job
    from classifiers.training import warm_up
    from concept_erase.core.io import RunRecorder, atomic_output_dir

    job = _unlearn_job(args)
    out = _check_output(args)
    warm_up()  # the method's timing (cost relative to retraining) should not include one-off setup
    with RunRecorder("unlearn", job, seed=job.seed, method=job.method) as recorder:
        result = run_job(job)
    with atomic_output_dir(out, args.overwrite) as tmp:
        write_job(result, tmp)
        recorder.write(tmp)
    m = result.metrics
    _say(f"unlearned {m['scenario']} from {job.model} on {m['dataset']} with {job.method} ({m['seconds']:.2f} s)")
    for key, label in (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia_efficacy", "MIA-efficacy")):
        _say(f"  {label:<13} {_vs_oracle(m, key)}")
    if m.get("avg_gap") is not None:
        _say(f"  Avg. Gap      {m['avg_gap']:.2f} (time: {m['cost_ratio']:.3f} of retraining)")
    _say(f"wrote {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from classifiers.bench import BenchConfig, run_bench
    from concept_erase.core.config import from_dict
    from concept_erase.core.io import atomic_output_dir

    values = _config_values(args)
    given = {
        "dataset": args.dataset,
        "model": args.model,
        "scenarios": args.scenarios,
        "methods": args.methods,
        "seeds": list(range(args.seeds)) if args.seeds is not None else None,
    }
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    values.update({k: v for k, v in given.items() if v is not None})
    config = from_dict(BenchConfig, values)
    out = _check_output(args)
    with atomic_output_dir(out, args.overwrite) as tmp:
        run_bench(config, tmp, log=_say)
    _say("")
    _say((out / "report.md").read_text().rstrip())
    _say(f"wrote {out} (results.csv, summary.json, report.md, plots)")
    return 0


# ---------------------------------------------------------------------------------------------------- erase


def cmd_erase(args: argparse.Namespace) -> int:
    from concept_erase.core.registry import get_method, list_methods
    from concept_erase.diffusion.erasure import erase

    try:
        entry = get_method(args.method, tag="diffusion")
    except UnknownNameError as exc:
        hint = (
            "; classifier methods run with `concept-erase unlearn`" if args.method in list_methods("classifier") else ""
        )
        raise UnknownNameError(f"{exc}{hint}") from None
    if args.mixed_precision is not None:
        args.set = [*args.set, f"mixed_precision={args.mixed_precision}"]
    if args.quiet:
        args.set = [*args.set, "show_progress=false"]
    config = _method_config(entry, args)
    concepts = [c.strip() for c in args.concept if c.strip()]
    if not concepts:
        raise ConfigError("--concept is empty: name the concept(s) to erase")
    model = args.pretrained_model_name_or_path
    if model and (model.startswith((".", "/", "~")) or Path(model).exists()) and not Path(model).expanduser().is_dir():
        raise InputNotFoundError(f"model directory not found: {model}")
    out = _check_output(args)
    record = erase(model, entry.name, concepts, config, output_dir=out, overwrite=args.overwrite)
    artifact = record["artifact"]
    _say(f"erased {', '.join(record['concepts'])} from {record['base_model']} with {entry.name}")
    _say(
        f"  {record['steps']} steps in {record['seconds']:.1f} s; loss {record['loss_first']:.4g} -> "
        f"{record['loss_last']:.4g}"
    )
    _say(
        f"  artifact: {artifact['format']} ({artifact['path']}, {artifact['bytes'] / 1024:.0f} KiB, "
        f"{100 * artifact['fraction_of_unet']:.1f}% of the UNet)"
    )
    _say(f"wrote {out}; score it with: {PROG} evaluate --model {out} --output_dir {out}-eval")
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


def cmd_evaluate_diffusion(args: argparse.Namespace) -> int:
    from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure

    if args.forget_classes is not None:
        raise ConfigError(
            "--forget_classes is for classifiers; name the erased concepts of a diffusion model with --forget"
        )
    fields = ("num_images", "num_inference_steps", "guidance_scale", "batch_size", "seed")
    settings = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    config = EvaluationConfig(forget=list(args.forget or []), retain=args.retain, **settings)
    out = _check_output(args)
    metrics = evaluate_erasure(
        args.model,
        config,
        adapter=args.adapter,
        original=args.original,
        oracle=args.oracle,
        judge=args.judge,
        output_dir=out,
        overwrite=args.overwrite,
    )
    rows = [("model", metrics), ("original", metrics["original"]), ("oracle", metrics["oracle"])]
    for name, m in rows:
        if m is not None:
            _say(
                f"{name:>8}: forget accuracy {_pct(m['forget_accuracy'])}, retain accuracy {_pct(m['retain_accuracy'])}"
            )
    if metrics["oracle"] is None:
        _say(f"  oracle: {metrics['oracle_source']}")
    _say(f"evaluated {metrics['images_per_model']} images per model in {metrics['seconds']:.1f} s")
    _say(f"wrote {out} (metrics.json, grid.png, report.md)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from classifiers.metrics import EvaluateConfig, evaluate_model_dir
    from classifiers.models import is_model_dir
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
    out = _check_output(args)
    forget = args.forget_classes
    if forget is None:
        record = model_dir / "unlearn.json"
        forget = json.loads(record.read_text()).get("forget_classes", [7]) if record.is_file() else [7]
    config = EvaluateConfig(model_dir=str(model_dir), forget_classes=list(forget), dataset=args.dataset)
    with atomic_output_dir(out, args.overwrite) as tmp:
        with RunRecorder("evaluate", config) as recorder:
            metrics = evaluate_model_dir(config, tmp)
        recorder.write(tmp)
    classes = ", ".join(map(str, metrics["forget_classes"]))
    _say(
        f"forget accuracy (class {classes}): {_pct(metrics['forget_accuracy'])}, retain accuracy: "
        f"{_pct(metrics['retain_accuracy'])}, test accuracy (remaining classes): {_pct(metrics['test_accuracy'])}"
    )
    _say(f"wrote {out}")
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
    load_pipeline(model)  # a clear error for anything that is not a complete pipeline
    concepts = [c.strip().lower() for c in args.concept]
    judge = load_judge(args.judge)
    for concept in concepts:
        concept_index(concept, judge.labels)
    oracle_recipe(model, concepts)
    out = _check_output(args) if args.output_dir else None
    cached = find_oracle(model, concepts)
    path = cached or get_oracle(model, concepts)
    _say(
        f"retrain oracle without {', '.join(sorted(set(concepts)))}: {path}" + (" (found)" if cached else " (trained)")
    )
    if out is not None:
        with atomic_output_dir(out, args.overwrite) as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        _say(f"copied to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- run / list


def _find_pipeline(spec: str) -> Path:
    """A pipeline file path, or the name of a bundled pipeline (``quickstart``)."""
    path = Path(spec)
    if path.exists() or "/" in spec or spec.endswith((".yaml", ".yml")):
        return path
    bundled = CONFIGS_DIR / f"{spec}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"pipeline config not found: {spec!r} is neither a file nor a bundled pipeline ({names})")


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.runner import load_pipeline

    pipeline = load_pipeline(_find_pipeline(args.config), args.set, output_dir=args.output_dir)
    manifest = pipeline.run(overwrite=args.overwrite, log=_say)
    ran, skipped = manifest["last_run"]["ran"], manifest["last_run"]["skipped"]
    for record in manifest["steps"].values():
        report = (record.get("outputs") or {}).get("report_path")
        if report and str(report).endswith(".md") and Path(report).is_file():
            _say("")
            _say(Path(report).read_text().rstrip())
    _say("")
    _say(f"pipeline {manifest['pipeline']!r} completed: {len(ran)} step(s) ran, {len(skipped)} skipped")
    _say(f"wrote {manifest['output_dir']} (manifest.json lists every step)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the bundled ``demo`` pipeline (erase "seven" with every method, evaluate, report)."""
    args.config = "demo"
    return cmd_run(args)


def cmd_list(args: argparse.Namespace) -> int:
    from concept_erase.core.registry import METHODS, STEPS

    _say("methods:")
    for entry in METHODS:
        _say(f"  {entry.name:<22} [{', '.join(entry.tags) or '-'}] {entry.description}")
    _say("pipeline steps:")
    for entry in STEPS:
        _say(f"  {entry.name:<22} {entry.description}")
    _say("bundled pipelines (concept-erase run NAME):")
    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        _say(f"  {path.stem}")
    return 0


# ---------------------------------------------------------------------------------------------------- parser


def _add_common(p: argparse.ArgumentParser, *, config_help: str) -> None:
    p.add_argument("--config", metavar="YAML", help=config_help)
    p.add_argument(
        "--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override config keys (dotted)"
    )
    p.add_argument("--output_dir", "--output", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--seed", type=int, default=None, help="random seed (sets the method config's seed)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Make trained models forget: concept erasure and classifier unlearning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("unlearn", parents=[debug], help="unlearn data from a classifier; scored against retraining")
    p.add_argument("--method", required=True, help="a registered classifier method (concept-erase list)")
    p.add_argument("--dataset", default="digits", help="digits, mnist5k, an image folder or an .npz (default: digits)")
    p.add_argument(
        "--model", default="cnn", help="architecture: mlp, cnn, vit (default: cnn), or a saved model directory"
    )
    p.add_argument("--weights", default=None, help="your trained model (.safetensors of --model, or a model directory)")
    p.add_argument(
        "--forget",
        default="class:3",
        help="scenario: class:C[,C..], subclass:C, random[:FRACTION], indices:FILE (default: class:3)",
    )
    p.add_argument("--forget_classes", type=int, nargs="+", default=None, help=argparse.SUPPRESS)  # = class:C,..
    p.add_argument("--superclasses", default=None, help="subclass scenarios: groups like '0,1;2,3' (default: pairs)")
    p.add_argument(
        "--recipe", metavar="KEY=VALUE", nargs="+", default=[], help="training recipe of original and oracle"
    )
    p.add_argument("--no_oracle", action="store_true", help="skip the retrain oracle (no gaps to it)")
    _add_common(p, config_help="method config (YAML mapping of the method's config keys)")
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("bench", parents=[debug], help="benchmark grids: methods x scenarios x seeds vs the oracle")
    p.add_argument("suite", choices=["classifiers"], help="what to benchmark (classifiers)")
    p.add_argument("--dataset", default=None, help="dataset (default: mnist5k)")
    p.add_argument("--model", default=None, help="architecture: mlp, cnn, vit (default: cnn)")
    p.add_argument("--scenarios", nargs="+", default=None, help="scenarios (default: class:3 random:0.1)")
    p.add_argument("--methods", nargs="+", default=None, help="method entries NAME[:key=value,...] (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default: 3)")
    p.add_argument("--config", metavar="YAML", help="BenchConfig YAML (keys: dataset, methods, method_configs, ...)")
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override config keys")
    p.add_argument("--output_dir", "--output", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("erase", parents=[debug], help="erase a concept from a text-to-image diffusion model")
    p.add_argument("--method", required=True, help="a registered diffusion method: fmn, salun, esd")
    p.add_argument("--concept", required=True, nargs="+", action="extend", help="concept(s) to erase")
    p.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        default=None,
        help="diffusers pipeline: local dir, hub id or shipped asset name (default: the embedded tiny SD)",
    )
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="autocast precision")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p, config_help="method config (YAML mapping of the method's config keys)")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser(
        "evaluate",
        parents=[debug],
        help="evaluate a classifier or a diffusion model (with --forget / --adapter); writes metrics.json",
    )
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
    p.add_argument("--judge", default=None, help="diffusion: evaluation classifier directory (default: embedded)")
    p.add_argument("--num_images", type=int, default=None, help="diffusion: images per concept (default 64)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="diffusion: sampler steps (default 20)")
    p.add_argument("--guidance_scale", type=float, default=None, help="diffusion: CFG scale (default 3.0)")
    p.add_argument("--batch_size", type=int, default=None, help="diffusion: images per pipeline call (default 128)")
    p.add_argument("--seed", type=int, default=None, help="diffusion: first seed (default 0)")
    p.add_argument("--output_dir", "--output", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "oracle", parents=[debug], help="the retrain oracle of a tiny-SD model without the given concepts (cached)"
    )
    p.add_argument("--concept", required=True, nargs="+", action="extend", help="concept(s) removed from training")
    p.add_argument("--model", default=None, help="the model trained with the full data (default: embedded tiny SD)")
    p.add_argument("--judge", default=None, help="evaluation classifier whose labels are the concepts")
    p.add_argument("--output_dir", default=None, help="also copy the oracle here (default: print the cached path)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=cmd_oracle)

    p = sub.add_parser("run", parents=[debug], help="run a pipeline config (resumable)")
    p.add_argument("config", metavar="CONFIG", help="pipeline YAML, or the name of a bundled pipeline (quickstart)")
    p.add_argument("--output_dir", default=None, help="output directory (default: the config's output_dir)")
    p.add_argument(
        "--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override: steps.<id>.<key>=value"
    )
    p.add_argument("--overwrite", action="store_true", help="start again, replacing the output directory")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        parents=[debug],
        help="the main job: erase 'seven' from the embedded tiny SD with fmn, salun and esd; evaluate; report",
    )
    p.add_argument("--output_dir", "--output", default="outputs/demo", help="report directory (default: outputs/demo)")
    p.add_argument(
        "--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override: steps.<id>.<key>=value"
    )
    p.add_argument("--overwrite", action="store_true", help="start again, replacing the output directory")
    p.set_defaults(func=cmd_demo)

    from classifiers.sisa.cli import add_sisa_parser

    add_sisa_parser(sub, [debug])  # concept-erase sisa train | forget | evaluate

    from classifiers.vbu.cli import add_vbu_parser  # concept-erase vbu moons|digits

    add_vbu_parser(sub, [debug])

    from classifiers.distruction_cli import add_distruction_parser  # concept-erase distruction prepare

    add_distruction_parser(sub, [debug])

    p = sub.add_parser("list", parents=[debug], help="list registered methods, pipeline steps and bundled pipelines")
    p.set_defaults(func=cmd_list)
    return parser


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 unexpected error, 2 usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else 0
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except (ConceptEraseError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
