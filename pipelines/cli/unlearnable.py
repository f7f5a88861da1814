"""``concept-erase unlearnable make|study``: unlearnable examples (Huang et al., ICLR 2021).

    concept-erase unlearnable make --dataset digits --output_dir out/digits-ue        # out/digits-ue/data.npz
    concept-erase unlearn --method finetune --dataset out/digits-ue/data.npz ...      # the harness reads it
    concept-erase unlearnable study --dataset mnist5k --seeds 3 --output_dir out/ue-study

``make`` writes ``data.npz`` (``x``, ``y``: what ``--dataset`` reads), ``noise.safetensors`` and
``unlearnable.json`` (the search and which rows carry noise). ``study`` writes ``study.json``, ``study.md`` and
``study.png`` (test accuracy and D_u's clean accuracy against the unlearnable share).
"""

from __future__ import annotations

import argparse

from pipelines.cli._common import add_dataset_option, add_output_options, on_one_torch_thread, say

__all__ = ["add_parsers", "cmd_unlearnable"]


def _noise_config(args: argparse.Namespace, seed: int):
    from classifiers.unlearnable import NoiseConfig
    from concept_erase.core.errors import ConfigError

    if not args.epsilon > 0 or args.epsilon > 255:  # in 1/255 units on the command line
        raise ConfigError(f"--epsilon (in 1/255 units) must be in (0, 255], got {args.epsilon:g}")
    return NoiseConfig(epsilon=args.epsilon / 255, mode=args.mode, max_rounds=args.max_rounds, seed=seed)


def _splits_and_model(args: argparse.Namespace):
    from classifiers.data import load_dataset
    from classifiers.models import ModelConfig

    return load_dataset(args.dataset), ModelConfig(args.model)


def _make(args: argparse.Namespace) -> int:
    from classifiers.data import dataset_path
    from classifiers.unlearnable import make_unlearnable, write_dataset
    from concept_erase.core.io import atomic_output_dir, check_output_dir

    config = _noise_config(args, args.seed)
    inputs = [p for p in (dataset_path(args.dataset),) if p]
    out = check_output_dir(args.output_dir, args.overwrite, inputs)
    splits, model = _splits_and_model(args)
    images, labels, noise, record = make_unlearnable(splits, model, config, share=args.share, progress=not args.quiet)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        write_dataset(tmp, images, labels, noise, record)
    search = record["search"]
    say(
        f"perturbed {search['perturbed_images']} of {record['images']} images ({config.mode}, epsilon "
        f"{args.epsilon:g}/255) in {search['rounds']} rounds; the source model classifies "
        f"{100 * search['source_accuracy_on_perturbed']:.1f}% of them"
    )
    say(f"wrote {out} (data.npz, noise.safetensors, unlearnable.json); use --dataset {out / 'data.npz'}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from classifiers.data import dataset_path
    from classifiers.unlearnable import drop_share, share_study, write_study
    from concept_erase.core.errors import ConfigError
    from concept_erase.core.io import RunRecorder, atomic_output_dir, check_output_dir

    try:
        shares = [float(v) for v in args.shares.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--shares takes comma-separated numbers in [0, 1], got {args.shares!r}") from None
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(args.seed, args.seed + args.seeds))
    config = _noise_config(args, args.seed)
    inputs = [p for p in (dataset_path(args.dataset),) if p]
    out = check_output_dir(args.output_dir, args.overwrite, inputs)
    splits, model = _splits_and_model(args)
    with RunRecorder("unlearnable-study", config, seed=args.seed) as recorder:
        result = share_study(splits, model, config, shares=shares, split=args.split, seeds=seeds, log=say)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        names = write_study(result, tmp)
        recorder.write(tmp)
    threshold = drop_share(result["summary"])
    say("no 10-point drop of test accuracy" if threshold is None else f"10-point drop at a share of {threshold:.0%}")
    say(f"wrote {out} ({', '.join(names)}, run.json)")
    return 0


def cmd_unlearnable(args: argparse.Namespace) -> int:
    """``unlearnable make`` or ``study``, on one torch thread."""
    return on_one_torch_thread(_make if args.unlearnable_command == "make" else _study, args)


def _common(p: argparse.ArgumentParser) -> None:
    add_dataset_option(p)
    p.add_argument("--model", default="mlp", help="source (and study) architecture: mlp, cnn, vit (default: mlp)")
    p.add_argument("--mode", choices=["samplewise", "classwise"], default="samplewise", help="noise per image or class")
    p.add_argument("--epsilon", type=float, default=8.0, help="L-infinity budget in 1/255 units (default: 8)")
    p.add_argument("--max_rounds", type=int, default=30, help="rounds of the min-min search at most (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise search, the draw of D_u and the models")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parsers(sub, parents: list) -> None:
    """Register ``unlearnable make|study`` on the CLI's subparsers."""
    top = sub.add_parser("unlearnable", parents=parents, help="unlearnable examples: error-minimising noise")
    commands = top.add_subparsers(dest="unlearnable_command", metavar="UNLEARNABLE_COMMAND", required=True)
    make = commands.add_parser("make", parents=parents, help="make a data set unlearnable (writes data.npz)")
    _common(make)
    make.add_argument("--share", type=float, default=1.0, help="share of every class to perturb (default: 1)")
    add_output_options(make)
    make.set_defaults(func=cmd_unlearnable)
    study = commands.add_parser("study", parents=parents, help="train on D_u + D_c for D_u shares from 0 to 100%%")
    _common(study)
    study.add_argument("--shares", default="0,0.2,0.4,0.6,0.8,0.9,1", help="D_u shares in [0, 1], comma-separated")
    study.add_argument("--split", choices=["random", "class"], default="random", help="D_u per class, or whole classes")
    study.add_argument("--seeds", type=int, default=1, help="number of seeds from --seed (default: 1)")
    add_output_options(study)
    study.set_defaults(func=cmd_unlearnable)
