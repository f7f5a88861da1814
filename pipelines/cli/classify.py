"""``concept-erase unlearn`` (one classifier unlearning job vs the retrain oracle) and ``concept-erase bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli._common import (
    ARCHITECTURE_HELP,
    METHOD_CONFIG_HELP,
    add_config_options,
    add_dataset_option,
    add_output_options,
    add_seed_option,
    check_output,
    say,
)

__all__ = ["add_parsers", "cmd_bench", "cmd_unlearn"]


def _config_values(args: argparse.Namespace) -> dict:
    """``--config`` YAML merged with ``--set`` overrides, as a plain mapping (validated by whoever builds from it)."""
    from concept_erase.core.config import merge_dicts, parse_overrides, read_yaml

    values = read_yaml(args.config) if args.config else {}
    return merge_dicts(values, parse_overrides(args.set)) if args.set else values


def _superclasses(spec: str | None) -> list[list[int]] | None:
    """``"0,1;2,3;4,5"`` -> ``[[0, 1], [2, 3], [4, 5]]``."""
    from concept_erase.core.errors import ConfigError

    if not spec:
        return None
    try:
        return [[int(c) for c in group.split(",") if c.strip()] for group in spec.split(";") if group.strip()]
    except ValueError:
        raise ConfigError(f"--superclasses takes groups like '0,1;2,3;4,5', got {spec!r}") from None


def _model_and_weights(model: str, weights: str | None) -> tuple[str, str | None]:
    """``--model``: an architecture name, or a saved model directory (its own architecture, its weights)."""
    from classifiers.models import MODELS, is_model_dir
    from concept_erase.core.errors import ConfigError, InputNotFoundError

    if model in MODELS:
        return model, weights
    if not Path(model).is_dir():
        if "/" in model or Path(model).exists():
            raise InputNotFoundError(f"model directory not found: {model}")
        raise ConfigError(
            f"unknown model {model!r}; accepted models: {', '.join(sorted(MODELS))}, or a model directory"
        )
    if not is_model_dir(model):
        raise ConfigError(f"{model} is not a classifier model directory (model.safetensors + model_config.json)")
    return json.loads((Path(model) / "model_config.json").read_text()).get("name", "cnn"), model


def _unlearn_job(args: argparse.Namespace):
    from classifiers.harness import UnlearnJob
    from concept_erase.core.config import parse_overrides

    model, weights = _model_and_weights(args.model, args.weights)
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


def _unlearn_inputs(args: argparse.Namespace, job) -> list:
    """What ``unlearn`` reads: the model directory, ``--config`` and the job's inputs (``--weights``, a dataset path,
    an indices file, the paths in the method config: ``mask_path``, ``records_path``, ``prepared_path``)."""
    from classifiers.harness import job_inputs

    return [args.model, args.config, *job_inputs(job)]


def _vs_oracle(metrics: dict, key: str) -> str:
    value, oracle = metrics.get(key), (metrics.get("oracle") or {}).get(key)
    text = "n/a" if value is None else f"{value:.2f}"
    return text + (f" (oracle {oracle:.2f})" if oracle is not None else "")


def cmd_unlearn(args: argparse.Namespace) -> int:
    from classifiers.harness import run_job, write_job
    from classifiers.training import warm_up
    from concept_erase.core.io import RunRecorder, atomic_output_dir

    job = _unlearn_job(args)
    inputs = _unlearn_inputs(args, job)
    out = check_output(args, inputs)
    warm_up()  # the method's timing (cost relative to retraining) should not include one-off setup
    with RunRecorder("unlearn", job, seed=job.seed, method=job.method) as recorder:
        result = run_job(job)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        write_job(result, tmp)
        recorder.write(tmp)
    m = result.metrics
    say(f"unlearned {m['scenario']} from {job.model} on {m['dataset']} with {job.method} ({m['seconds']:.2f} s)")
    for key, label in (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia_efficacy", "MIA-efficacy")):
        say(f"  {label:<13} {_vs_oracle(m, key)}")
    if m.get("avg_gap") is not None:
        say(f"  Avg. Gap      {m['avg_gap']:.2f} (time: {m['cost_ratio']:.3f} of retraining)")
    say(f"wrote {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from classifiers.bench import BenchConfig, bench_inputs, run_bench
    from concept_erase.core.config import from_dict
    from concept_erase.core.errors import ConfigError
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
    inputs = [args.config, *bench_inputs(config)]
    out = check_output(args, inputs)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        run_bench(config, tmp, log=say)
    say("")
    say((out / "report.md").read_text().rstrip())
    say(f"wrote {out} (results.csv, summary.json, report.md, plots)")
    return 0


# ---------------------------------------------------------------------------------------------------- parsers


def _add_unlearn(sub, parents: list) -> None:
    p = sub.add_parser("unlearn", parents=parents, help="unlearn data from a classifier; scored against retraining")
    p.add_argument("--method", required=True, help="a registered classifier method (concept-erase list)")
    add_dataset_option(p)
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
    add_config_options(p, config_help=METHOD_CONFIG_HELP)
    add_output_options(p)
    add_seed_option(p)
    p.set_defaults(func=cmd_unlearn)


def _add_bench(sub, parents: list) -> None:
    p = sub.add_parser("bench", parents=parents, help="benchmark grids: methods x scenarios x seeds vs the oracle")
    p.add_argument("suite", choices=["classifiers"], help="what to benchmark (classifiers)")
    p.add_argument("--dataset", default=None, help="dataset (default: mnist5k)")
    p.add_argument("--model", default=None, help=ARCHITECTURE_HELP)
    p.add_argument("--scenarios", nargs="+", default=None, help="scenarios (default: class:3 random:0.1)")
    p.add_argument("--methods", nargs="+", default=None, help="method entries NAME[:key=value,...] (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default: 3)")
    add_config_options(
        p, config_help="BenchConfig YAML (keys: dataset, methods, method_configs, ...)", set_help="override config keys"
    )
    add_output_options(p)
    p.set_defaults(func=cmd_bench)


def add_parsers(sub, parents: list) -> None:
    """Register ``unlearn`` and ``bench`` on the CLI's subparsers."""
    _add_unlearn(sub, parents)
    _add_bench(sub, parents)
