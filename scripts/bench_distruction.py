"""DiStruction's goals on mnist5k / small CNN / class:3, measured in one process; writes JSON.

    python scripts/bench_distruction.py --output bench_results/distruction.json [--seeds 3]

- quality (per seed, through the harness with cached originals and oracles): D_f accuracy (100 - UA) and D_r
  accuracy (RA) of DiStruction and of the retrain oracle;
- cost, back to back on the same machine state: training the original from scratch vs preparing it (BGD), and
  retraining on the retain set vs forgetting (from the prepared artifact, after a warm-up run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import time

import torch


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench_results/distruction.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="method config overrides KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import classifiers.plugin  # noqa: F401
    from classifiers.data import load_dataset, make_task
    from classifiers.distruction.bgd import prepare_model
    from classifiers.harness import UnlearnJob, make_method_config, run_job
    from classifiers.methods import unlearn
    from classifiers.models import ModelConfig
    from classifiers.training import TrainConfig, fresh_model, train_recipe
    from concept_erase.core.config import parse_overrides

    overrides = parse_overrides(args.set) if args.set else {}
    rows = []
    for seed in range(args.seeds):
        job = UnlearnJob(method="distruction", method_config=overrides, dataset="mnist5k", model="cnn", seed=seed)
        with contextlib.redirect_stdout(io.StringIO()):
            m = run_job(job).metrics
        row = {"seed": seed, "df_acc": 100 - m["ua"], "dr_acc": m["ra"], "ta": m["ta"]}
        row.update(oracle_df_acc=100 - m["oracle"]["ua"], oracle_dr_acc=m["oracle"]["ra"], cost_ratio=m["cost_ratio"])
        rows.append(row)
        print(json.dumps(row), flush=True)

    splits = load_dataset("mnist5k")
    task = make_task(splits, "class:3")
    recipe, arch = TrainConfig(dataset="mnist5k"), ModelConfig("cnn")
    config = make_method_config("distruction", overrides, seed=0)
    original = fresh_model(arch, splits.num_classes, splits.input_shape, 0)
    _, train_s = _timed(lambda: train_recipe(original, splits.train, recipe))
    posterior, prep_s = _timed(lambda: prepare_model(original.eval(), splits.train, config.bgd()))
    retrained = fresh_model(arch, splits.num_classes, splits.input_shape, 0)
    _, retrain_s = _timed(lambda: train_recipe(retrained, task.retain, recipe))
    posterior.save("/tmp/_distruction_bench_prepared")
    values = {**overrides, "prepared_path": "/tmp/_distruction_bench_prepared", "seed": 0}
    unlearn("distruction", copy.deepcopy(original), task, values)  # warm-up (imports, first-call costs)
    _, forget_s = _timed(lambda: unlearn("distruction", copy.deepcopy(original), task, values))
    cost = {"train_seconds": train_s, "prepare_seconds": prep_s, "retrain_seconds": retrain_s}
    cost.update(forget_seconds=forget_s, prepare_ratio=prep_s / train_s, forget_ratio=forget_s / retrain_s)
    print(json.dumps(cost), flush=True)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "seed"}
    out = {"config": overrides, "seeds": rows, "mean": mean, "cost": cost, "threads": 1}
    with open(args.output, "w") as fh:
        json.dump(out, fh, indent=2)
    print(json.dumps(mean))


if __name__ == "__main__":
    main()
