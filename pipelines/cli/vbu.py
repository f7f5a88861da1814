"""``concept-erase vbu moons|digits``: the VBU studies, written atomically (results.json, run.json, plots)."""

from __future__ import annotations

import argparse

from pipelines.cli._common import add_output_options, add_seed_option, on_one_torch_thread, say

__all__ = ["add_parsers", "cmd_vbu"]


def _csv(kind: type, text: str, what: str) -> list:
    """``"1,3,5"`` -> ``[1, 3, 5]``; a bad value fails naming the flag ``--what``."""
    from concept_erase.core.errors import ConfigError

    try:
        return [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} takes comma-separated values, got {text!r}") from None


def _summary_lines(result: dict) -> list[str]:
    lines = [f"{'mode':<10} {'S':>2} {'agg':<8} {'method':<9} {'lambda':>7} {'KL D_e':>8} {'KL D_r':>8} {'time s':>7}"]
    for row in result["best"]:
        lam = "-" if row["lambda"] is None else f"{row['lambda']:g}"
        secs = row.get("unlearn_seconds", row["retrain_seconds"])
        lines.append(
            f"{row['shard_mode']:<10} {row['num_shards']:>2} {row['aggregation']:<8} {row['method']:<9} {lam:>7} "
            f"{row['kl_erased']:>8.4f} {row['kl_remaining']:>8.4f} {secs:>7.3f}"
        )
    return lines


def _moons(args: argparse.Namespace) -> int:
    from classifiers.vbu.experiment import MoonsConfig, run_moons, write_moons
    from concept_erase.core.io import RunRecorder, atomic_output_dir, check_output_dir

    config = MoonsConfig(
        shards=_csv(int, args.shards, "shards"),
        erase=args.erase,
        shard_modes=["contiguous", "random"] if args.shard_mode == "both" else [args.shard_mode],
        seed=args.seed,
    )
    if args.lambdas:
        config.lambdas = _csv(float, args.lambdas, "lambdas")
    if args.methods:
        config.methods = _csv(str, args.methods, "methods")
    if args.aggregations:
        config.aggregations = _csv(str, args.aggregations, "aggregations")
    config.validate()
    out = check_output_dir(args.output_dir, args.overwrite)
    with RunRecorder("vbu-moons", config, seed=config.seed) as recorder:
        result = run_moons(config, progress=not args.quiet)
    with atomic_output_dir(out, args.overwrite) as tmp:
        names = write_moons(result, tmp)
        recorder.write(tmp)
    for line in _summary_lines(result):
        say(line)
    say(f"wrote {out} ({', '.join(names)}, run.json)")
    return 0


def _digits(args: argparse.Namespace) -> int:
    from classifiers.data import scenario_paths
    from classifiers.vbu.bayes_classifier import DigitsConfig, run_digits
    from concept_erase.core.io import RunRecorder, atomic_output_dir, check_output_dir, write_json

    config = DigitsConfig(forget=args.forget, seed=args.seed)
    if args.lambdas:
        config.lambdas = _csv(float, args.lambdas, "lambdas")
    inputs = scenario_paths(config.forget)
    out = check_output_dir(args.output_dir, args.overwrite, inputs)
    with RunRecorder("vbu-digits", config, seed=config.seed) as recorder:
        result = run_digits(config)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        write_json(tmp / "results.json", result)
        recorder.write(tmp)
    for name, m in result["methods"].items():
        say(
            f"{name:<18} UA {m['ua']:6.2f} RA {m['ra']:6.2f} TA {m['ta']:6.2f} "
            f"KL(oracle||model) forget {m['kl_to_oracle_forget']:.4f}"
        )
    say(f"wrote {out} (results.json, run.json)")
    return 0


def cmd_vbu(args: argparse.Namespace) -> int:
    """Run a study on one torch thread (the models are tiny; spin-waiting threads on a busy machine cost minutes)."""
    return on_one_torch_thread(_moons if args.study == "moons" else _digits, args)


def add_parsers(sub, parents: list) -> None:
    """Register ``vbu`` on the CLI's subparsers."""
    p = sub.add_parser("vbu", parents=parents, help="Variational Bayesian Unlearning studies (moons GP, digits BNN)")
    p.add_argument("study", choices=["moons", "digits"], help="moons: sparse GP seed study; digits: Bayesian MLP")
    p.add_argument("--shards", default="1,3,5", help="moons: numbers of shards, comma-separated (default: 1,3,5)")
    p.add_argument("--lambdas", default=None, help="adjusted-likelihood thresholds in [0, 1], comma-separated")
    p.add_argument("--erase", choices=["largest", "random"], default="largest", help="moons: which 20 points to erase")
    p.add_argument("--shard_mode", choices=["contiguous", "random", "both"], default="contiguous", help="moons")
    p.add_argument(
        "--methods", default=None, help="moons: eubo_lbfgs,rkl (default), eubo,eubo_adam,rkl_pooled and laplace"
    )
    p.add_argument("--aggregations", default=None, help="moons: poe,bcm,ensemble (default: all)")
    p.add_argument("--forget", default="class:3", help="digits: scenario (default: class:3)")
    add_seed_option(p, default=0, help="seed of shards, random erasure and Monte Carlo draws")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_output_options(p)
    p.set_defaults(func=cmd_vbu)
