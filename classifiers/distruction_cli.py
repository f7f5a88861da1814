"""``concept-erase distruction prepare``: BGD-prepare a trained classifier for DiStruction, once, with its training data.

    concept-erase distruction prepare --dataset mnist5k --model cnn --output_dir prepared/cnn-s0
    concept-erase unlearn --method distruction --dataset mnist5k --model cnn --forget class:3 \\
        --set prepared_path=prepared/cnn-s0 --set require_prepared=true --output_dir out/d

Without ``--weights`` the original is the harness's (trained on the whole training split with the default recipe and
``--seed``, cached), i.e. the model ``concept-erase unlearn`` starts from.
"""

from __future__ import annotations

import argparse

__all__ = ["add_distruction_parser", "cmd_distruction_prepare"]


def cmd_distruction_prepare(args: argparse.Namespace) -> int:
    from classifiers.distruction.bgd import BGDConfig, prepare_model
    from classifiers.harness import UnlearnJob, load_splits, original_reference
    from concept_erase.core.io import atomic_output_dir, check_output_dir

    out = check_output_dir(args.output_dir, args.overwrite)
    job = UnlearnJob(method="distruction", dataset=args.dataset, model=args.model, seed=args.seed, weights=args.weights)
    splits = load_splits(job)
    original = original_reference(job, splits, None, job.train_config())
    config = BGDConfig(epochs=args.epochs, mc_samples=args.mc_samples, init_sigma=args.init_sigma, seed=args.seed)
    posterior = prepare_model(original.model, splits.train, config, log=print)
    with atomic_output_dir(out, args.overwrite) as tmp:
        posterior.save(tmp)
    ratio = posterior.info["seconds"] / original.seconds if original.seconds == original.seconds else None
    cost = f" ({ratio:.1%} of the original's training)" if ratio else ""
    print(f"prepared {args.model} on {args.dataset}: sigma {posterior.info['sigma']}{cost}")
    print(f"wrote {out} (pass it as prepared_path)")
    return 0


def add_distruction_parser(sub, parents: list) -> None:
    """Add ``distruction prepare`` to the CLI's subparsers."""
    top = sub.add_parser("distruction", parents=parents, help="DiStruction: prepare a trained classifier (BGD)")
    commands = top.add_subparsers(dest="distruction_command", metavar="DISTRUCTION_COMMAND", required=True)
    p = commands.add_parser("prepare", parents=parents, help="learn BGD sigmas around the trained weights")
    p.add_argument("--dataset", default="digits", help="digits, mnist5k, an image folder or an .npz (default: digits)")
    p.add_argument("--model", default="cnn", help="architecture: mlp, cnn, vit (default: cnn)")
    p.add_argument("--weights", default=None, help="the trained original (model directory or .safetensors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the original (when trained here) and of BGD")
    p.add_argument("--epochs", type=int, default=1, help="BGD passes over the training set (default: 1)")
    p.add_argument("--mc_samples", type=int, default=2, help="Monte Carlo samples per batch (default: 2)")
    p.add_argument("--init_sigma", type=float, default=0.06, help="initial (and largest) sigma (default: 0.06)")
    p.add_argument("--output_dir", "--output", required=True, help="where to write the prepared artifact")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_distruction_prepare)
