"""Influence distillation (seed 002): the seed's comparisons on MNIST-5k (small CNN) and digits (MLP).

For each data set and scenario (``class:3``, ``random:0.1``), from the original trained with the default recipe
(:class:`~classifiers.training.TrainConfig`, cached) and scored against the retrain oracle (cached):

(a) **student architecture**: the teacher's architecture re-initialised vs smaller / other students (MNIST-5k: the
    2-conv-layer CNN, the teacher's, vs a 1-conv-layer CNN, ``channels=[16]``; digits: the teacher's MLP vs the
    2- and 1-conv-layer CNNs), all with the influence term;
(b) **the influence term**: the teacher's architecture with ``influence_weight`` 1 (the default) vs 0 (plain
    distillation on the retain set);
(c) **distillation vs fine-tuning**: the project's ``finetune`` (on the retain set) and ``grad_ascent`` (on the
    forget set: the seed's "plain fine-tuning on the forget set") with the settings of the MNIST-5k bench grid
    (``pipelines/configs/bench_mnist5k_cnn.yaml``: finetune 1 epoch at 0.04; grad_ascent 1e-4 on random forgetting);
(d) **sequential deletion requests**: 1..``--requests`` requests, each distilled from the previous student (the
    teacher's architecture, influence on): class requests forget classes 3, 8, 5, 1, 7 in turn; random requests
    delete 2% of the training split each. After each: test accuracy on the classes kept, accuracy on everything
    deleted so far (train) and on the forgotten classes' test samples.

Every row records UA, RA, TA, TA on the kept classes, MIA-efficacy, Avg. Gap to the oracle and seconds (one seed).
On MNIST-5k the distillations run ``--mnist-epochs`` (3) epochs instead of the default 10, to keep the whole run
near 10 minutes on one thread; ``--mnist-epochs 10`` runs the defaults (about 4x longer).

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_influence_distillation.py \
        --output bench_results/influence_distillation.json --plot docs/img/influence_distillation.png
    python scripts/bench_influence_distillation.py --quick --output /tmp/id.json --plot /tmp/id.png   # digits, tiny
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from classifiers.data import UnlearningTask, from_arrays, load_dataset, make_task  # noqa: E402
from classifiers.harness import make_method_config  # noqa: E402
from classifiers.methods.influence_distillation import (  # noqa: E402
    InfluenceDistillationConfig,
    influence_distillation,
)
from classifiers.metrics import accuracy, unlearning_metrics  # noqa: E402
from classifiers.models import ModelConfig  # noqa: E402
from classifiers.oracle import get_oracle, get_original  # noqa: E402
from classifiers.training import TrainConfig  # noqa: E402
from concept_erase.core.io import package_versions, write_json  # noqa: E402
from concept_erase.core.registry import get_method  # noqa: E402

TEACHERS = {"mnist5k": "cnn", "digits": "mlp"}
ONE_CONV = {"name": "cnn", "channels": [16]}
TWO_CONV = {"name": "cnn", "channels": [16, 32]}
STUDENTS = {  # label -> student config (None: the teacher's architecture)
    "mnist5k": {"2-conv (teacher's)": None, "1-conv": ONE_CONV},
    "digits": {"mlp (teacher's)": None, "2-conv": TWO_CONV, "1-conv": ONE_CONV},
}
SCENARIOS = ("class:3", "random:0.1")
CLASS_REQUESTS = (3, 8, 5, 1, 7)
RANDOM_REQUEST_FRACTION = 0.02
BASELINES = {  # the bench grid's settings (pipelines/configs/bench_mnist5k_cnn.yaml)
    "finetune": {"class": {"epochs": 1, "learning_rate": 0.04}, "random": {"epochs": 1, "learning_rate": 0.04}},
    "grad_ascent": {"class": {}, "random": {"learning_rate": 1e-4}},
}
KEYS = ("ua", "ra", "ta", "ta_remaining", "ua_test", "mia_efficacy")
GAP_KEYS = ("ua", "ra", "ta", "mia_efficacy")


def _scores(model, task: UnlearningTask, seed: int) -> dict:
    metrics = unlearning_metrics(model, task, seed=seed)  # no original / oracle: the students differ in architecture
    return {k: None if metrics[k] is None else round(metrics[k], 2) for k in KEYS}


def _gap(row: dict, oracle: dict) -> float:
    return round(sum(abs(row[k] - oracle[k]) for k in GAP_KEYS) / len(GAP_KEYS), 2)


def _distil(model, task, values: dict, seed: int) -> tuple[torch.nn.Module, dict, float]:
    student = copy.deepcopy(model)
    config = InfluenceDistillationConfig(**{**values, "seed": seed})
    start = time.perf_counter()
    summary = influence_distillation(student, task, config)
    return student, summary, time.perf_counter() - start


def _comparisons(splits, dataset, scenario, teacher, recipe, args) -> dict:
    task = make_task(splits, scenario, seed=args.seed)
    oracle = get_oracle(task, splits, ModelConfig(TEACHERS[dataset]), recipe, cache=not args.quick)
    oracle_row = {**_scores(oracle.model, task, args.seed), "seconds": round(oracle.seconds, 2)}
    rows = {"original": _scores(teacher, task, args.seed), "retrain oracle": oracle_row}
    epochs = {"epochs": args.epochs[dataset]}
    students = {k: v for k, v in STUDENTS[dataset].items() if not (args.quick and k == "2-conv")}
    runs = [(f"distil {label}", {"student": s and ModelConfig(**s)}) for label, s in students.items()]
    runs.insert(1, (f"distil {next(iter(STUDENTS[dataset]))}, no influence", {"influence_weight": 0.0}))
    for label, values in runs:
        student, summary, seconds = _distil(teacher, task, {**epochs, **values}, args.seed)
        rows[label] = {
            **_scores(student, task, args.seed),
            "seconds": round(seconds, 2),
            "student_parameters": summary["student_parameters"],
            "student_forget_loss": round(summary["student_forget_loss"], 3),
            "teacher_forget_loss": round(summary["teacher_forget_loss"], 3),
        }
    kind = scenario.split(":")[0]
    for name, settings in BASELINES.items():
        values = {**settings[kind], **({"epochs": 1} if args.quick else {})}
        model = copy.deepcopy(teacher)
        config = make_method_config(name, values, seed=args.seed)
        start = time.perf_counter()
        get_method(name, tag="classifier").target(model, task, config, work_dir=None)
        rows[f"{name} {values}"] = {
            **_scores(model.eval(), task, args.seed),
            "seconds": round(time.perf_counter() - start, 2),
        }
    for row in rows.values():
        row["avg_gap"] = _gap(row, oracle_row)
    return {
        "dataset": dataset,
        "scenario": scenario,
        "forget": len(task.forget),
        "retain": len(task.retain),
        "rows": rows,
    }


def _task(splits, forgotten_classes: tuple[int, ...], deleted: torch.Tensor, new: torch.Tensor, name: str):
    """A task whose forget set is the new request's samples and whose retain set excludes everything deleted."""
    x, y = splits.train.tensors
    xt, yt = splits.test.tensors
    kept = ~deleted
    forget_test = torch.isin(yt, torch.tensor(forgotten_classes, dtype=yt.dtype))
    return UnlearningTask(
        dataset=splits.name,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        forget_classes=forgotten_classes,
        forget=TensorDataset(x[new], y[new]),
        retain=TensorDataset(x[kept], y[kept]),
        test_forget=TensorDataset(xt[forget_test], yt[forget_test]),
        test_retain=TensorDataset(xt[~forget_test], yt[~forget_test]),
        test=splits.test,
        scenario=name,
        forget_indices=new.nonzero().flatten(),
        retain_indices=kept.nonzero().flatten(),
    )


def _sequential(splits, dataset, teacher, kind: str, args) -> list[dict]:
    x, y = splits.train.tensors
    deleted = torch.zeros(len(y), dtype=torch.bool)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    per_request = max(1, int(round(RANDOM_REQUEST_FRACTION * len(y))))
    model, classes, steps = teacher, (), []
    for request in range(args.requests):
        if kind == "class":
            classes = (*classes, CLASS_REQUESTS[request])
            new = (y == CLASS_REQUESTS[request]) & ~deleted
        else:
            new = torch.zeros(len(y), dtype=torch.bool)
            new[order[request * per_request : (request + 1) * per_request]] = True
        deleted = deleted | new
        task = _task(splits, classes, deleted, new, f"{kind} request {request + 1}")
        model, _, seconds = _distil(model, task, {"epochs": args.epochs[dataset]}, args.seed)
        everything = TensorDataset(x[deleted], y[deleted])
        steps.append({
            "requests": request + 1,
            "deleted": int(deleted.sum()),
            "test_accuracy_kept": round(accuracy(model, task.test_retain) * 100, 2),
            "forgotten_test_accuracy": None if not classes else round(accuracy(model, task.test_forget) * 100, 2),
            "deleted_train_accuracy": round(accuracy(model, everything) * 100, 2),
            "retain_accuracy": round(accuracy(model, task.retain) * 100, 2),
            "seconds": round(seconds, 2),
        })  # fmt: skip
    return steps


def plot(report: dict, path: Path) -> None:
    datasets = list(dict.fromkeys(c["dataset"] for c in report["comparisons"]))
    fig = Figure(figsize=(17, 4.6 * len(datasets)))
    axes = fig.subplots(len(datasets), 3, squeeze=False)
    for row, dataset in enumerate(datasets):
        cases = [c for c in report["comparisons"] if c["dataset"] == dataset]
        for col, case in enumerate(cases[:2]):
            ax = axes[row][col]
            labels = list(case["rows"])
            width = 0.27
            for k, (key, name) in enumerate(
                (("ua", "UA"), ("ta_remaining", "TA (kept classes)"), ("mia_efficacy", "MIA"))
            ):
                ax.bar([i + (k - 1) * width for i in range(len(labels))], [case["rows"][m][key] for m in labels], width, label=name)  # fmt: skip
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels([m.split(" {")[0] for m in labels], rotation=35, ha="right", fontsize=7)
            ax.set_ylim(0, 105)
            ax.set_title(f"{dataset} ({TEACHERS[dataset]} teacher), {case['scenario']}", fontsize=9)
            ax.legend(fontsize=7)
        ax = axes[row][2]
        for kind, style in (("class", "-"), ("random", "--")):
            steps = report["sequential"][dataset][kind]
            n = [s["requests"] for s in steps]
            ax.plot(n, [s["test_accuracy_kept"] for s in steps], style + "o", label=f"{kind}: test acc., kept classes")
            ax.plot(n, [s["deleted_train_accuracy"] for s in steps], style + "x", label=f"{kind}: acc. on deleted data")
        ax.set_xlabel("deletion requests (each distilled from the previous student)")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.set_title(f"{dataset}: sequential requests", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench_results/influence_distillation.json")
    parser.add_argument("--plot", default="docs/img/influence_distillation.png")
    parser.add_argument("--datasets", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    parser.add_argument("--mnist-epochs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5, choices=range(1, len(CLASS_REQUESTS) + 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 digits, class:3 only, no 2-conv student, 3-epoch teacher, 1-epoch students, 2 requests",
    )
    args = parser.parse_args(argv)
    default_epochs = InfluenceDistillationConfig.epochs
    args.epochs = {"mnist5k": args.mnist_epochs, "digits": default_epochs}
    recipes = {d: TrainConfig(dataset=d) for d in TEACHERS}
    if args.quick:
        args.datasets, args.requests, args.epochs = ["digits"], 2, {"digits": 1}
        recipes = {"digits": TrainConfig(dataset="digits", epochs=3)}
    torch.set_num_threads(1)
    start = time.perf_counter()
    report = {"settings": {"datasets": args.datasets, "distillation_epochs": args.epochs, "requests": args.requests,
                           "seed": args.seed, "quick": args.quick, "baselines": BASELINES},
              "comparisons": [], "sequential": {}}  # fmt: skip
    for dataset in args.datasets:
        splits = load_dataset(dataset)
        if args.quick:  # the first 300 samples of digits, split again
            x, y = (torch.cat(t) for t in zip(splits.train.tensors, splits.test.tensors))
            splits = from_arrays(x[:300], y[:300], name="digits300", seed=args.seed)
        original = get_original(splits, ModelConfig(TEACHERS[dataset]), recipes[dataset], cache=not args.quick)
        teacher = original.model
        for scenario in SCENARIOS[:1] if args.quick else SCENARIOS:
            case = _comparisons(splits, dataset, scenario, teacher, recipes[dataset], args)
            case["original_seconds"] = round(original.seconds, 2)
            report["comparisons"].append(case)
            print(f"{dataset} {scenario}: done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
        report["sequential"][dataset] = {
            kind: _sequential(splits, dataset, teacher, kind, args) for kind in ("class", "random")
        }
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["versions"] = package_versions()
    write_json(Path(args.output), report)
    plot(report, Path(args.plot))
    print(f"wrote {args.output} and {args.plot} in {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
