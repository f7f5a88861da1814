"""``concept-erase sisa train | forget | evaluate``: the SISA store from the command line.

    concept-erase sisa train --dataset mnist5k --model cnn --shards 8 --slices 4 --store out/sisa
    concept-erase sisa forget --store out/sisa --indices 12,99
    concept-erase sisa evaluate --store out/sisa

Registered into the main parser by :func:`add_sisa_parser`; heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import time

__all__ = ["add_sisa_parser"]


def _say(text: str) -> None:
    print(text, flush=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _parse_indices(args: argparse.Namespace) -> list[int] | None:
    from classifiers.data import read_indices
    from concept_erase.core.errors import ConfigError

    if args.indices and args.indices_file:
        raise ConfigError("give either --indices or --indices-file, not both")
    if args.indices_file:
        return list(read_indices(args.indices_file))
    if args.indices is None:
        return None
    try:
        return [int(v) for v in args.indices.replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--indices takes integers separated by commas, e.g. 12,99; got {args.indices!r}") from None


def _open(store: str):
    from classifiers.sisa import SISAClassifier
    from classifiers.sisa.store import SISAStore

    SISAStore(store).require()
    return SISAClassifier.from_store(store)


def _per_shard(estimator, test) -> str:
    return " ".join(_pct(a) for a in estimator.shard_accuracy(test))


def cmd_sisa_train(args: argparse.Namespace) -> int:
    import numpy as np

    from classifiers.data import load_dataset
    from classifiers.sisa import SISAClassifier
    from concept_erase.core.errors import ConfigError, InputNotFoundError

    splits = load_dataset(args.dataset)
    probabilities = None
    if args.deletion_probabilities:
        try:
            probabilities = np.load(args.deletion_probabilities, allow_pickle=False)
        except FileNotFoundError:
            raise InputNotFoundError(f"deletion probabilities not found: {args.deletion_probabilities}") from None
        except ValueError as exc:
            raise ConfigError(f"{args.deletion_probabilities}: not a .npy array ({exc})") from None
    estimator = SISAClassifier(
        model=args.model,
        n_shards=args.shards,
        n_slices=args.slices,
        strategy=args.strategy,
        aggregation=args.aggregation,
        epochs=args.epochs,
        deletion_probabilities=probabilities,
        seed=args.seed,
        store=args.store,
    )
    start = time.perf_counter()
    estimator.fit(splits)
    seconds = time.perf_counter() - start
    sizes = estimator.shard_sizes_
    _say(
        f"trained {args.shards} shards x {args.slices} slices of {args.model} on {len(splits.train)} {splits.name} "
        f"samples ({args.strategy} sharding, shard sizes {min(sizes)}-{max(sizes)}) in {seconds:.1f} s"
    )
    _say(f"  test accuracy ({args.aggregation}): {_pct(estimator.score(splits.test))}")
    _say(f"  per-shard test accuracy: {_per_shard(estimator, splits.test)}")
    _say(f"store: {args.store} (model version {estimator.version_}, {len(estimator.deleted_)} deleted)")
    return 0


def cmd_sisa_forget(args: argparse.Namespace) -> int:
    from concept_erase.core.errors import ConfigError

    indices = _parse_indices(args)
    if indices is None:
        raise ConfigError("name the training indices to forget with --indices 12,99 or --indices-file FILE")
    estimator = _open(args.store)
    summary = estimator.unlearn(indices)
    if summary["noop"]:
        _say(f"request {summary['request_id']}: all {len(indices)} indices were already deleted (no-op, recorded)")
    else:
        retrained = summary["retrained_slices"]
        stages = sum(len(v) for v in retrained.values())
        total = estimator.n_shards * estimator.n_slices
        _say(
            f"request {summary['request_id']}: deleted {len(summary['new_indices'])} samples "
            f"({len(summary['already_deleted'])} already deleted); affected shards "
            f"{', '.join(summary['affected_shards']) or 'none'}; retrained {stages} of {total} slice stages "
            f"in {summary['seconds']:.2f} s"
        )
    _say(f"store: {args.store} (model version {summary['version']}, {len(estimator.deleted_)} deleted in all)")
    return 0


def _ledger_summary(records: list[dict]) -> str:
    effective = [r for r in records if r["status"] == "pending"]
    noops = sum(r["status"] == "noop" for r in records)
    done = {r["request_id"] for r in records if r["status"] == "done"}
    open_ = [r["request_id"] for r in effective if r["request_id"] not in done]
    deleted = sum(len(r["new_indices"]) for r in effective)
    total = len(effective) + noops
    text = f"{total} request{'s' if total != 1 else ''} ({len(effective)} deleting {deleted} samples, {noops} no-op)"
    return text + (f", unfinished: {open_}" if open_ else "")


def _harness_metrics(estimator, splits, indices: list[int], oracle_epochs: int | None) -> tuple[dict, dict]:
    from classifiers.data import Scenario, make_task
    from classifiers.metrics import unlearning_metrics
    from classifiers.oracle import get_oracle
    from classifiers.sisa.estimator import single_model_epochs
    from classifiers.training import TrainConfig

    task = make_task(splits, Scenario("indices", indices=tuple(indices), source="--indices"))
    recipe = estimator.recipe_
    train = TrainConfig(
        epochs=oracle_epochs or single_model_epochs(recipe.epochs, estimator.n_slices),
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        optimizer=recipe.optimizer,
        weight_decay=recipe.weight_decay,
        seed=estimator.seed,
    )
    oracle = get_oracle(task, splits, estimator.template_, train)
    oracle_metrics = unlearning_metrics(oracle.model, task)
    metrics = unlearning_metrics(estimator.as_module(), task, oracle_metrics=oracle_metrics)
    return metrics, {"epochs": train.epochs, "seconds": oracle.seconds, "cached": oracle.cached}


def cmd_sisa_evaluate(args: argparse.Namespace) -> int:
    from classifiers.data import load_dataset

    estimator = _open(args.store)
    manifest = estimator.manifest_
    splits = load_dataset(manifest["dataset"], **manifest["split"])
    records = estimator.store_.ledger()
    model_name = manifest["model"].get("name") or manifest["model"].get("class")
    _say(
        f"SISA store {args.store}: {manifest['n_shards']} shards x {manifest['n_slices']} slices, {model_name} on "
        f"{manifest['dataset']}, {manifest['strategy']} sharding, {manifest['aggregation']} aggregation"
    )
    _say(f"  test accuracy: {_pct(estimator.score(splits.test))}")
    _say(f"  per-shard test accuracy: {_per_shard(estimator, splits.test)}")
    _say(f"  shard sizes (surviving): {' '.join(map(str, estimator.shard_sizes_))}")
    _say(f"  ledger: {_ledger_summary(records)}; model version {estimator.version_}")
    indices = _parse_indices(args)
    indices = estimator.deleted_ if indices is None else indices
    if not indices:
        _say("  no deletion set (the ledger is empty and no --indices given): no unlearning metrics")
        return 0
    metrics, oracle = _harness_metrics(estimator, splits, indices, args.oracle_epochs)
    ref = metrics["oracle"]
    _say(
        f"  unlearning metrics for {len(indices)} deleted samples vs the retrain oracle (one {model_name} "
        f"model, {oracle['epochs']} epochs on the surviving data{', cached' if oracle['cached'] else ''}):"
    )
    for key, label in (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia_efficacy", "MIA-efficacy")):
        _say(f"    {label:<13} {metrics[key]:6.2f} (oracle {ref[key]:6.2f})")
    return 0


def _add_indices(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--indices", default=None, help=help_text)
    p.add_argument("--indices-file", "--indices_file", dest="indices_file", default=None,
                   help="file of training indices (text/CSV, .npy or .json)")  # fmt: skip


def add_sisa_parser(sub, parents: list) -> None:
    """Add ``sisa`` with its ``train``, ``forget`` and ``evaluate`` subcommands to the CLI's subparsers."""
    from classifiers.sisa.aggregation import AGGREGATIONS
    from classifiers.sisa.sharding import STRATEGIES

    sisa = sub.add_parser(
        "sisa", parents=parents, help="SISA exact unlearning: sharded ensembles with a deletion ledger"
    )
    commands = sisa.add_subparsers(dest="sisa_command", metavar="SISA_COMMAND", required=True)

    p = commands.add_parser("train", parents=parents, help="train (or complete) a SISA store")
    p.add_argument("--dataset", default="digits", help="digits, mnist5k, an image folder or an .npz (default: digits)")
    p.add_argument("--model", default="cnn", help="architecture: mlp, cnn, vit (default: cnn)")
    p.add_argument("--shards", type=int, default=8, help="number of shards S (default: 8)")
    p.add_argument("--slices", type=int, default=4, help="slices per shard R (default: 4)")
    p.add_argument("--strategy", default="uniform", help=f"sharding: {', '.join(STRATEGIES)} (default: uniform)")
    p.add_argument("--deletion_probabilities", "--deletion-probabilities", default=None,
                   help="FILE.npy of per-sample deletion probabilities (strategy distribution)")  # fmt: skip
    p.add_argument("--aggregation", default="vote", help=f"{', '.join(AGGREGATIONS)} (default: vote)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per slice stage (default: 2 x 20 / (slices + 1))")
    p.add_argument("--seed", type=int, default=0, help="seed of sharding, initialisation and data order")
    p.add_argument("--store", required=True, help="store directory (created; reopened if it matches)")
    p.set_defaults(func=cmd_sisa_train)

    p = commands.add_parser("forget", parents=parents, help="delete training samples exactly (retrains few slices)")
    p.add_argument("--store", required=True, help="store directory")
    _add_indices(p, "training indices to forget, e.g. 12,99")
    p.set_defaults(func=cmd_sisa_forget)

    p = commands.add_parser("evaluate", parents=parents, help="accuracy, per-shard accuracy, ledger, UA/RA/TA/MIA")
    p.add_argument("--store", required=True, help="store directory")
    _add_indices(p, "deletion set to score (default: the ledger's deleted samples)")
    p.add_argument(
        "--oracle_epochs",
        type=int,
        default=None,
        help="oracle epochs (default: the single-model budget the stages match, 20 by default)",
    )
    p.set_defaults(func=cmd_sisa_evaluate)
