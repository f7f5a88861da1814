"""``concept-erase sisa train | forget | evaluate``: the SISA store from the command line.

concept-erase sisa train --dataset mnist5k --model cnn --shards 8 --slices 4 --store out/sisa
concept-erase sisa forget --store out/sisa --indices 12,99
concept-erase sisa evaluate --store out/sisa
"""

from __future__ import annotations

import argparse
import os
import time

from pipelines.cli._common import ARCHITECTURE_HELP, add_dataset_option, add_seed_option, pct, say

__all__ = ["AGGREGATIONS", "STRATEGIES", "add_parsers", "cmd_sisa_evaluate", "cmd_sisa_forget", "cmd_sisa_train"]

# For the help text only (importing classifiers.sisa pulls in torch and sklearn); a test checks they match the library.
STRATEGIES = ("uniform", "label", "kmeans", "distribution")  # classifiers.sisa.sharding.STRATEGIES
AGGREGATIONS = ("vote", "mean", "weighted")  # classifiers.sisa.aggregation.AGGREGATIONS


def _read_indices_file(path: str) -> list[int]:
    """``--indices-file``, checked: readable, integers, no duplicates, at least one (each error names the file)."""
    from classifiers.data import read_indices
    from concept_erase.core.errors import ConfigError, InputNotFoundError

    if os.path.isdir(path):
        raise InputNotFoundError(f"index file {path} is a directory, not a file")
    try:
        values = list(read_indices(path))
    except (EOFError, OSError) as exc:  # a truncated .npy
        raise ConfigError(f"{path}: expected integer indices ({str(exc).splitlines()[0][:120]})") from None
    if not values:
        raise ConfigError(f"{path}: the file holds no indices; name at least one training index")
    return values


def _check_indices_in_range(indices: list[int], path: str | None, n: int) -> None:
    """Name the index file (``--indices-file``) when one of its indices is outside the training set."""
    from concept_erase.core.errors import ConfigError

    bad = [i for i in indices if not 0 <= i < n]
    if bad and path:
        raise ConfigError(
            f"{path}: index {bad[0]} is out of range for the {n} training samples (valid: 0..{n - 1})"
            + (f"; {len(bad)} indices are" if len(bad) > 1 else "")
        )


def _parse_indices(args: argparse.Namespace) -> list[int] | None:
    from concept_erase.core.errors import ConfigError

    if args.indices and args.indices_file:
        raise ConfigError("give either --indices or --indices-file, not both")
    if args.indices_file:
        return _read_indices_file(args.indices_file)
    if args.indices is None:
        return None
    try:
        return [int(v) for v in args.indices.replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--indices takes integers separated by commas, e.g. 12,99; got {args.indices!r}") from None


def _open(store: str):
    from classifiers.sisa import SISAClassifier, SISAStore

    SISAStore(store).require()
    return SISAClassifier.from_store(store)


def _per_shard(estimator, test) -> str:
    return " ".join(pct(a) for a in estimator.shard_accuracy(test))


def _deletion_probabilities(path: str | None):
    import numpy as np

    from concept_erase.core.errors import ConfigError, InputNotFoundError

    if not path:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputNotFoundError(f"deletion probabilities not found: {path}") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"deletion probabilities {path} is a directory, not a .npy file") from None
    except (ValueError, EOFError, OSError) as exc:
        raise ConfigError(f"{path}: not a .npy array ({str(exc).splitlines()[0][:120]})") from None


def cmd_sisa_train(args: argparse.Namespace) -> int:
    from classifiers.data import dataset_path, load_dataset
    from classifiers.sisa import SISAClassifier
    from concept_erase.core.io import check_disjoint

    # the store is written into: it must not be, contain or lie inside the data set or the probabilities file
    check_disjoint(args.store, [dataset_path(args.dataset), args.deletion_probabilities])
    splits = load_dataset(args.dataset)
    probabilities = _deletion_probabilities(args.deletion_probabilities)
    if probabilities is not None:
        from classifiers.sisa.sharding import check_probabilities
        from concept_erase.core.errors import ConfigError

        try:
            check_probabilities(probabilities, len(splits.train))
        except ConfigError as exc:
            raise ConfigError(f"{args.deletion_probabilities}: {exc}") from None
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
    say(
        f"trained {args.shards} shards x {args.slices} slices of {args.model} on {len(splits.train)} {splits.name} "
        f"samples ({args.strategy} sharding, shard sizes {min(sizes)}-{max(sizes)}) in {seconds:.1f} s"
    )
    say(f"  test accuracy ({args.aggregation}): {pct(estimator.score(splits.test))}")
    say(f"  per-shard test accuracy: {_per_shard(estimator, splits.test)}")
    say(f"store: {args.store} (model version {estimator.version_}, {len(estimator.deleted_)} deleted)")
    return 0


def cmd_sisa_forget(args: argparse.Namespace) -> int:
    from concept_erase.core.errors import ConfigError
    from concept_erase.core.io import check_disjoint

    check_disjoint(args.store, [args.indices_file])  # forget writes into the store, never into its own request
    indices = _parse_indices(args)
    if indices is None:
        raise ConfigError("name the training indices to forget with --indices 12,99 or --indices-file FILE")
    estimator = _open(args.store)
    _check_indices_in_range(indices, args.indices_file, len(estimator.labels_))
    summary = estimator.unlearn(indices)
    if summary["noop"]:
        say(f"request {summary['request_id']}: all {len(indices)} indices were already deleted (no-op, recorded)")
    else:
        retrained = summary["retrained_slices"]
        stages = sum(len(v) for v in retrained.values())
        total = estimator.n_shards * estimator.n_slices
        say(
            f"request {summary['request_id']}: deleted {len(summary['new_indices'])} samples "
            f"({len(summary['already_deleted'])} already deleted); affected shards "
            f"{', '.join(summary['affected_shards']) or 'none'}; retrained {stages} of {total} slice stages "
            f"in {summary['seconds']:.2f} s"
        )
    say(f"store: {args.store} (model version {summary['version']}, {len(estimator.deleted_)} deleted in all)")
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


def cmd_sisa_evaluate(args: argparse.Namespace) -> int:
    from classifiers.data import load_dataset
    from classifiers.sisa.evaluation import oracle_metrics

    estimator = _open(args.store)
    manifest = estimator.manifest_
    splits = load_dataset(manifest["dataset"], **manifest["split"])
    model_name = manifest["model"].get("name") or manifest["model"].get("class")
    say(
        f"SISA store {args.store}: {manifest['n_shards']} shards x {manifest['n_slices']} slices, {model_name} on "
        f"{manifest['dataset']}, {manifest['strategy']} sharding, {manifest['aggregation']} aggregation"
    )
    say(f"  test accuracy: {pct(estimator.score(splits.test))}")
    say(f"  per-shard test accuracy: {_per_shard(estimator, splits.test)}")
    say(f"  shard sizes (surviving): {' '.join(map(str, estimator.shard_sizes_))}")
    say(f"  ledger: {_ledger_summary(estimator.store_.ledger())}; model version {estimator.version_}")
    indices = _parse_indices(args)
    if indices is not None:
        _check_indices_in_range(indices, args.indices_file, len(estimator.labels_))
    indices = estimator.deleted_ if indices is None else indices
    if not indices:
        say("  no deletion set (the ledger is empty and no --indices given): no unlearning metrics")
        return 0
    metrics, oracle = oracle_metrics(estimator, splits, indices, args.oracle_epochs)
    ref = metrics["oracle"]
    say(
        f"  unlearning metrics for {len(indices)} deleted samples vs the retrain oracle (one {model_name} "
        f"model, {oracle['epochs']} epochs on the surviving data{', cached' if oracle['cached'] else ''}):"
    )
    for key, label in (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia_efficacy", "MIA-efficacy")):
        say(f"    {label:<13} {metrics[key]:6.2f} (oracle {ref[key]:6.2f})")
    return 0


# ---------------------------------------------------------------------------------------------------- parsers


def _add_indices(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--indices", default=None, help=help_text)
    p.add_argument("--indices-file", "--indices_file", dest="indices_file", default=None,
                   help="file of training indices (text/CSV, .npy or .json)")  # fmt: skip


def _add_train(commands, parents: list) -> None:
    p = commands.add_parser("train", parents=parents, help="train (or complete) a SISA store")
    add_dataset_option(p)
    p.add_argument("--model", default="cnn", help=ARCHITECTURE_HELP)
    p.add_argument("--shards", type=int, default=8, help="number of shards S (default: 8)")
    p.add_argument("--slices", type=int, default=4, help="slices per shard R (default: 4)")
    p.add_argument("--strategy", default="uniform", help=f"sharding: {', '.join(STRATEGIES)} (default: uniform)")
    p.add_argument("--deletion_probabilities", "--deletion-probabilities", default=None,
                   help="FILE.npy of per-sample deletion probabilities (strategy distribution)")  # fmt: skip
    p.add_argument("--aggregation", default="vote", help=f"{', '.join(AGGREGATIONS)} (default: vote)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per slice stage (default: 2 x 20 / (slices + 1))")
    add_seed_option(p, default=0, help="seed of sharding, initialisation and data order")
    p.add_argument("--store", required=True, help="store directory (created; reopened if it matches)")
    p.set_defaults(func=cmd_sisa_train)


def add_parsers(sub, parents: list) -> None:
    """Register ``sisa`` with its ``train``, ``forget`` and ``evaluate`` subcommands on the CLI's subparsers."""
    sisa = sub.add_parser(
        "sisa", parents=parents, help="SISA exact unlearning: sharded ensembles with a deletion ledger"
    )
    commands = sisa.add_subparsers(dest="sisa_command", metavar="SISA_COMMAND", required=True)
    _add_train(commands, parents)

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
