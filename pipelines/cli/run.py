"""``concept-erase run`` (a YAML pipeline, resumable), ``demo`` (the bundled ``demo`` pipeline) and ``list``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli._common import CONFIGS_DIR, RESTART_HELP, STEP_SET_HELP, add_output_options, add_set_option, say

__all__ = ["add_list_parser", "add_parsers", "cmd_demo", "cmd_list", "cmd_run", "find_pipeline"]


def find_pipeline(spec: str) -> Path:
    """A pipeline file path, or the name of a bundled pipeline (``quickstart``)."""
    from concept_erase.core.errors import ConfigError

    path = Path(spec)
    if path.exists() or "/" in spec or spec.endswith((".yaml", ".yml")):
        return path
    bundled = CONFIGS_DIR / f"{spec}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"pipeline config not found: {spec!r} is neither a file nor a bundled pipeline ({names})")


def cmd_run(args: argparse.Namespace) -> int:
    from concept_erase.core.io import check_disjoint
    from pipelines.runner import load_pipeline

    source = find_pipeline(args.config)
    pipeline = load_pipeline(source, args.set, output_dir=args.output_dir)
    target = args.output_dir or pipeline.config.output_dir
    if target:  # the pipeline file itself; the runner checks the inputs its steps name
        check_disjoint(target, [source])
    manifest = pipeline.run(overwrite=args.overwrite, log=say)
    ran, skipped = manifest["last_run"]["ran"], manifest["last_run"]["skipped"]
    for record in manifest["steps"].values():
        report = (record.get("outputs") or {}).get("report_path")
        if report and str(report).endswith(".md") and Path(report).is_file():
            say("")
            say(Path(report).read_text().rstrip())
    say("")
    say(f"pipeline {manifest['pipeline']!r} completed: {len(ran)} step(s) ran, {len(skipped)} skipped")
    say(f"wrote {manifest['output_dir']} (manifest.json lists every step)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the bundled ``demo`` pipeline (erase "seven" with every method, evaluate, report)."""
    args.config = "demo"
    return cmd_run(args)


def cmd_list(args: argparse.Namespace) -> int:
    from concept_erase.core.registry import METHODS, STEPS

    say("methods:")
    for entry in METHODS:
        say(f"  {entry.name:<22} [{', '.join(entry.tags) or '-'}] {entry.description}")
    say("pipeline steps:")
    for entry in STEPS:
        say(f"  {entry.name:<22} {entry.description}")
    say("bundled pipelines (concept-erase run NAME):")
    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        say(f"  {path.stem}")
    return 0


def add_parsers(sub, parents: list) -> None:
    """Register ``run`` and ``demo`` on the CLI's subparsers."""
    p = sub.add_parser("run", parents=parents, help="run a pipeline config (resumable)")
    p.add_argument("config", metavar="CONFIG", help="pipeline YAML, or the name of a bundled pipeline (quickstart)")
    add_set_option(p, help=STEP_SET_HELP)
    add_output_options(
        p,
        required=False,
        alias=False,
        help="output directory (default: the config's output_dir)",
        overwrite_help=RESTART_HELP,
    )
    p.set_defaults(func=cmd_run)

    help_text = "the main job: erase 'seven' from the embedded tiny SD with fmn, salun and esd; evaluate; report"
    p = sub.add_parser("demo", parents=parents, help=help_text)
    add_set_option(p, help=STEP_SET_HELP)
    add_output_options(
        p,
        required=False,
        default="outputs/demo",
        help="report directory (default: outputs/demo)",
        overwrite_help=RESTART_HELP,
    )
    p.set_defaults(func=cmd_demo)


def add_list_parser(sub, parents: list) -> None:
    """Register ``list`` (last in the command listing)."""
    p = sub.add_parser("list", parents=parents, help="list registered methods, pipeline steps and bundled pipelines")
    p.set_defaults(func=cmd_list)
