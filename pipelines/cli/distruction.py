"""``concept-erase distruction prepare``: BGD-prepare a trained classifier for DiStruction, once, with its training data.

    concept-erase distruction prepare --dataset mnist5k --model cnn --output_dir prepared/cnn-s0
    concept-erase unlearn --method distruction --dataset mnist5k --model cnn --forget class:3 \\
        --set prepared_path=prepared/cnn-s0 --set require_prepared=true --output_dir out/d

Without ``--weights`` the original is the harness's (trained on the whole training split with the default recipe and
``--seed``, cached), i.e. the model ``concept-erase unlearn`` starts from.
"""

from __future__ import annotations

import argparse

from pipelines.cli._common import (
    ARCHITECTURE_HELP,
    add_dataset_option,
    add_output_options,
    add_seed_option,
    say,
)

__all__ = ["add_parsers", "cmd_distruction_prepare"]


def cmd_distruction_prepare(args: argparse.Namespace) -> int:
    from classifiers.data import dataset_path
    from classifiers.distruction.bgd import BGDConfig
    from classifiers.distruction.prepare import prepare_original
    from concept_erase.core.io import atomic_output_dir, check_output_dir

    inputs = [args.weights, dataset_path(args.dataset)]
    out = check_output_dir(args.output_dir, args.overwrite, inputs)
    config = BGDConfig(epochs=args.epochs, mc_samples=args.mc_samples, init_sigma=args.init_sigma, seed=args.seed)
    posterior, original = prepare_original(
        args.dataset, args.model, weights=args.weights, seed=args.seed, config=config, log=say
    )
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        posterior.save(tmp)
    ratio = posterior.info["seconds"] / original.seconds if original.seconds == original.seconds else None  # NaN: given
    cost = f" ({ratio:.1%} of the original's training)" if ratio else ""
    say(f"prepared {args.model} on {args.dataset}: sigma {posterior.info['sigma']}{cost}")
    say(f"wrote {out} (pass it as prepared_path)")
    return 0


def add_parsers(sub, parents: list) -> None:
    """Register ``distruction prepare`` on the CLI's subparsers."""
    top = sub.add_parser("distruction", parents=parents, help="DiStruction: prepare a trained classifier (BGD)")
    commands = top.add_subparsers(dest="distruction_command", metavar="DISTRUCTION_COMMAND", required=True)
    p = commands.add_parser("prepare", parents=parents, help="learn BGD sigmas around the trained weights")
    add_dataset_option(p)
    p.add_argument("--model", default="cnn", help=ARCHITECTURE_HELP)
    p.add_argument("--weights", default=None, help="the trained original (model directory or .safetensors)")
    add_seed_option(p, default=0, help="seed of the original (when trained here) and of BGD")
    p.add_argument("--epochs", type=int, default=1, help="BGD passes over the training set (default: 1)")
    p.add_argument("--mc_samples", type=int, default=2, help="Monte Carlo samples per batch (default: 2)")
    p.add_argument("--init_sigma", type=float, default=0.06, help="initial (and largest) sigma (default: 0.06)")
    add_output_options(
        p, help="where to write the prepared artifact", overwrite_help="replace an existing output directory"
    )
    p.set_defaults(func=cmd_distruction_prepare)
