"""``concept-erase sequence``: erasure requests applied one after another, each on top of the previous result, with
the request log, forget accuracy on every erased concept and retain accuracy on the rest after each request, and the
same set erased in one request for comparison (:mod:`concept_erase.diffusion.sequential`)."""

from __future__ import annotations

import argparse

from pipelines.cli._common import (
    METHOD_CONFIG_HELP,
    add_config_options,
    add_output_options,
    add_seed_option,
    check_output,
    pct,
    say,
)

__all__ = ["ORACLE_CHOICES", "add_parsers", "cmd_sequence"]

ORACLE_CHOICES = ("cached", "auto", "none")  # concept_erase.diffusion.sequential.ORACLE_CHOICES (no torch here)


def _one(text: str) -> list[str]:
    return [text]


def _several(text: str) -> list[str]:
    return [part for part in text.split(",")]


def _inputs(args: argparse.Namespace, config) -> list:
    """What a sequence reads: the starting model (an erasure directory: also its base), ``--config``, the paths in
    the method config and a local judge."""
    from concept_erase.core.config import config_to_dict
    from concept_erase.core.io import config_paths
    from concept_erase.diffusion.erasure import erasure_inputs
    from concept_erase.diffusion.evaluation import EvaluationConfig, judge_inputs
    from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, resolve_model

    model = resolve_model(args.model or DEFAULT_MODEL)
    inputs = [*erasure_inputs(model), args.config, *config_paths(config_to_dict(config))]
    return inputs + (judge_inputs(args.judge, None, EvaluationConfig()) if not args.no_evaluate else [])


def cmd_sequence(args: argparse.Namespace) -> int:
    from concept_erase.core.errors import ConfigError
    from concept_erase.diffusion.erasure import erasure_base
    from concept_erase.diffusion.evaluation import EvaluationConfig
    from concept_erase.diffusion.presets import resolve_settings
    from concept_erase.diffusion.sequential import erase_sequence, normalize_requests
    from pipelines.cli.erase import _diffusion_method, _method_config

    entry = _diffusion_method(args.method)
    if args.quiet:
        args.set = [*args.set, "show_progress=false"]
    if not args.requests:
        raise ConfigError("no request: give --concept CONCEPT (one request each) or --request 'a,b' (repeatable)")
    requests = normalize_requests(args.requests)
    keys, config = _method_config(entry, args)
    out = check_output(args, _inputs(args, config))
    settings = resolve_settings(entry, erasure_base(args.model), keys, not args.no_presets)
    fields = ("num_images", "num_inference_steps", "guidance_scale", "batch_size")
    evaluation = EvaluationConfig(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    say(settings.summary() + ("" if not args.no_presets else " (--no_presets)"))
    say(f"{len(requests)} requests: " + " -> ".join("+".join(r) for r in requests))
    summary = erase_sequence(
        args.model,
        entry.name,
        requests,
        settings,
        out,
        evaluate=not args.no_evaluate,
        evaluation=evaluation,
        oracle=args.oracle,
        compare_single=args.compare_single,
        judge=args.judge,
        overwrite=args.overwrite,
        progress=say,
    )
    first = summary["first_request"]
    if first and first["drift"]:
        for concept, drift in first["drift"].items():
            say(
                f"first request's {concept}: forget {pct(first['forget_after_own_request'][concept])} after its own "
                f"request, {pct(first['forget_at_end'][concept])} at the end ({100 * drift:+.1f} points; goal within "
                f"5: {'met' if first['goal_met'] else 'missed'})"
            )
    comparison = summary.get("comparison")
    if comparison:
        seq, one = comparison["sequential"], comparison["single"]
        say(f"sequential vs one request: retain {pct(seq['retain_accuracy'])} vs {pct(one['retain_accuracy'])}")
    say(
        f"wrote {out} (sequence.json, sequence.md{', sequence.png' if not args.no_evaluate else ''}); the final "
        f"model: {out / summary['final_dir']}"
    )
    return 0


def add_parsers(sub, parents: list) -> None:
    """Register ``sequence`` on the CLI's subparsers."""
    help_text = "apply erasure requests one after another (a request log, forget / retain after each request)"
    p = sub.add_parser("sequence", parents=parents, help=help_text)
    p.add_argument(
        "--method",
        required=True,
        help="a registered diffusion method (`concept-erase list` shows them: fmn, salun, esd, uce, rece)",
    )
    p.add_argument(
        "--concept",
        dest="requests",
        action="append",
        type=_one,
        default=[],
        help="one request erasing this concept (repeat: the requests run in the order given)",
    )
    p.add_argument(
        "--request",
        dest="requests",
        action="append",
        type=_several,
        help="one request erasing several comma-separated concepts ('seven,two'); mixes with --concept in order",
    )
    p.add_argument(
        "--model",
        default=None,
        help="the starting model: pipeline dir, hub id, asset name, or an erasure directory to continue",
    )
    p.add_argument("--no_presets", action="store_true", help="the method's own defaults only (no model presets)")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")
    p.add_argument("--no_evaluate", action="store_true", help="only erase: no evaluation after each request")
    p.add_argument("--compare_single", action="store_true", help="also erase every concept in one request, compare")
    p.add_argument(
        "--oracle",
        choices=ORACLE_CHOICES,
        default="cached",
        help="retrain oracle in the evaluations: cached (shipped or cached only, default), auto (train missing "
        "ones, ~15-20 min each), none",
    )
    p.add_argument("--judge", default=None, help="evaluation judge (default: the digit classifier)")
    p.add_argument("--num_images", type=int, default=None, help="evaluation images per concept (default 64)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="evaluation sampler steps (default 20)")
    p.add_argument("--guidance_scale", type=float, default=None, help="evaluation CFG scale (default 3.0)")
    p.add_argument("--batch_size", type=int, default=None, help="evaluation images per pipeline call (default 128)")
    add_config_options(p, config_help=METHOD_CONFIG_HELP)
    add_output_options(p)
    add_seed_option(p)
    p.set_defaults(func=cmd_sequence)
