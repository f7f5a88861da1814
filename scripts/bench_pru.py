"""Deleting 1-100 points from linear and logistic regression: PRU, the influence update and retraining.

Izzo et al.'s two experiments (AISTATS 2021; their code, github.com/zleizzo/datadeletion), for each data set
(MNIST-5k, digits), loss (least squares on one-hot targets, one-vs-rest logistic regression) and number of deleted
points k, on the pixels with no bias column and every coefficient penalised (``--bias`` appends an unpenalised one):

- **deletion**: the model is fitted to the exact optimum on the whole training split (once per data set and loss),
  then k random points are deleted three ways: **retrain** (the exact optimum on the rest, from scratch, timed),
  **pru** and **influence** (``classifiers.methods.pru``, from the Hessian's Cholesky factor, which is training-time
  work: ``prepare``, timed separately; each update timed as the median of ``--repeats`` runs). Recorded: the
  seconds, PRU's speed-up over retraining, each model's L2 distance to the retrained parameters and that distance
  relative to the original's (the paper's "relative L2 parameter distance"), test accuracies.
- **feature injection**: an extra feature is appended, ``--value`` (the authors' 1) on k points of one class
  (``--injected-class``; the authors draw them from the positive class) and 0 elsewhere; the model is fitted to it,
  the k points are deleted with PRU and the influence update, and the weight left on the feature (L2 norm over the
  class columns, and the signed ratio in the injected class's column, the authors' measure) is compared with the
  original's. Retraining leaves exactly 0 (the feature is 0 on every retained point and penalised).

Goals (issue 22): PRU >= 10x faster than retraining, closer to the retrained parameters than the influence update,
and its injected weight within 10% of what retraining leaves (0, so: at most 10% of the original's weight).

    python scripts/bench_pru.py --output bench_results/pru.json --plot docs/img/pru.png
    python scripts/bench_pru.py --quick --output /tmp/pru.json --plot /tmp/pru.png     # 300 digits, k 1 and 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from classifiers.data import load_dataset
from classifiers.methods.pru import LOSSES, fit_linear, influence_update, prepare, pru_update
from concept_erase.core.io import package_versions, write_json

METHODS = ("original", "pru", "influence", "retrain")
GOALS = (
    "pru >= 10x faster than retraining",
    "pru closer to the retrained parameters than influence",
    "pru's injected weight <= 10% of the original's",
)


def _timed(fn, repeats: int = 1):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _design(pixels: torch.Tensor, bias: bool, injected: torch.Tensor | None = None) -> torch.Tensor:
    """Features: [injected feature,] pixels[, bias column of ones] (float64)."""
    columns = [pixels] if injected is None else [injected.unsqueeze(1), pixels]
    if bias:
        columns.append(torch.ones(len(pixels), 1, dtype=torch.float64))
    return torch.cat(columns, dim=1)


def _accuracy(theta: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * float(((x @ theta).argmax(1) == labels).double().mean()), 2)


class Fits:
    """The original fit and its Hessian factor of each (data set, loss), computed once."""

    def __init__(self) -> None:
        self.cache: dict = {}

    def get(self, key, x, y, loss, l2, bias):
        if key not in self.cache:
            theta, fit_s = _timed(lambda: fit_linear(x, y, loss, l2, bias=bias))
            problem, prep_s = _timed(lambda: prepare(x, y, theta, loss, l2, bias=bias))
            self.cache[key] = (problem, fit_s, prep_s)
        return self.cache[key]


def deletion_case(name: str, loss: str, k: int, args, data, fits: Fits) -> dict:
    pixels, y, labels, test_pixels, test_labels = data
    l2 = args.l2 if loss == "least_squares" else args.logistic_l2
    x = _design(pixels, args.bias)
    problem, fit_s, prep_s = fits.get((name, loss), x, y, loss, l2, args.bias)
    n = len(x)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[:k]
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    retrained, retrain_s = _timed(lambda: fit_linear(x[keep], y[keep], loss, l2, bias=args.bias))
    pru_theta, pru_s = _timed(lambda: pru_update(problem, rows), args.repeats)
    inf_theta, inf_s = _timed(lambda: influence_update(problem, rows), args.repeats)
    models = {"original": problem.theta, "pru": pru_theta, "influence": inf_theta, "retrain": retrained}
    dist = {m: float((t - retrained).norm()) for m, t in models.items()}
    x_test = _design(test_pixels, args.bias)
    return {
        "n_train": n,
        "features": int(x.shape[1]),
        "l2": l2,
        "seconds": {
            "fit_original": round(fit_s, 5),
            "prepare": round(prep_s, 5),
            "retrain": round(retrain_s, 5),
            "pru": round(pru_s, 6),
            "influence": round(inf_s, 6),
        },
        "speedup_pru": round(retrain_s / pru_s, 2),
        "speedup_influence": round(retrain_s / inf_s, 2),
        "speedup_pru_with_prepare": round(retrain_s / (pru_s + prep_s), 2),
        "l2_to_retrain": dist,
        "relative_l2_to_retrain": {m: dist[m] / dist["original"] for m in METHODS},
        "test_accuracy": {m: _accuracy(t, x_test, test_labels) for m, t in models.items()},
    }


def injection_case(loss: str, k: int, args, data) -> dict:
    pixels, y, labels, _, _ = data
    l2 = args.l2 if loss == "least_squares" else args.logistic_l2
    pool = torch.nonzero(labels == args.injected_class).flatten()
    if k >= len(pool):
        raise SystemExit(f"--ks: class {args.injected_class} has {len(pool)} training points; inject on fewer")
    rows = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[:k]]
    injected = torch.zeros(len(pixels), dtype=torch.float64)
    injected[rows] = args.value  # non-zero on the deleted points only
    x = _design(pixels, args.bias, injected)
    theta = fit_linear(x, y, loss, l2, bias=args.bias)
    problem = prepare(x, y, theta, loss, l2, bias=args.bias)
    models = {"original": theta, "pru": pru_update(problem, rows), "influence": influence_update(problem, rows)}
    weight = {m: float(t[0].norm()) for m, t in models.items()}
    weight["retrain"] = 0.0
    column = args.injected_class
    return {
        "injected_class": column,
        "injected_weight": weight,
        "injected_weight_over_original": {m: weight[m] / weight["original"] for m in METHODS},
        "injected_class_weight_over_original": {m: float(t[0, column] / theta[0, column]) for m, t in models.items()},
    }


def run_case(name: str, loss: str, k: int, args, data, fits: Fits) -> dict:
    result = {"dataset": name, "loss": loss, "k": k}
    result.update(deletion_case(name, loss, k, args, data, fits))
    result.update(injection_case(loss, k, args, data))
    result["goals"] = {
        GOALS[0]: result["speedup_pru"] >= 10,
        GOALS[1]: result["l2_to_retrain"]["pru"] < result["l2_to_retrain"]["influence"],
        GOALS[2]: result["injected_weight_over_original"]["pru"] <= 0.1,
    }
    return result


def load(name: str, limit: int | None = None):
    splits = load_dataset(name)
    pixels, labels = splits.train.tensors[0].flatten(1).double(), splits.train.tensors[1]
    if limit is not None:
        pixels, labels = pixels[:limit], labels[:limit]
    y = torch.nn.functional.one_hot(labels, splits.num_classes).double()
    return pixels, y, labels, splits.test.tensors[0].flatten(1).double(), splits.test.tensors[1]


def plot(results: list[dict], path: Path) -> None:
    losses = sorted({r["loss"] for r in results})
    fig = Figure(figsize=(13, 3.6 * len(losses)), dpi=100)
    axes = fig.subplots(len(losses), 3, squeeze=False)
    styles = {"pru": "tab:green", "influence": "tab:orange", "retrain": "black", "original": "tab:gray"}
    marks = {"mnist5k": "o-", "digits": "s--"}
    panels = (
        ("seconds", lambda r, m: r["seconds"][m], ("pru", "influence", "retrain")),
        ("relative L2 distance to retrained", lambda r, m: r["relative_l2_to_retrain"][m], ("pru", "influence")),
        ("injected weight / original's", lambda r, m: r["injected_weight_over_original"][m], ("pru", "influence")),
    )
    for row, loss in enumerate(losses):
        for name in sorted({r["dataset"] for r in results}):
            rs = sorted((r for r in results if r["loss"] == loss and r["dataset"] == name), key=lambda r: r["k"])
            ks = [r["k"] for r in rs]
            for ax, (_, value, methods) in zip(axes[row], panels):
                for method in methods:
                    ax.plot(
                        ks,
                        [value(r, method) for r in rs],
                        marks.get(name, "^-"),
                        color=styles[method],
                        label=f"{name} {method}",
                    )
        for ax, (title, _, _) in zip(axes[row], panels):
            ax.set_xscale("log")
            if title == "seconds":
                ax.set_yscale("log")
            else:
                ax.axhline(1.0, color="tab:gray", lw=0.8, ls=":")
                ax.set_ylim(bottom=0)
            ax.set_xlabel("deleted points k")
            ax.set_title(f"{loss}: {title}", fontsize=9)
            ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist5k", "digits"], choices=["mnist5k", "digits"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 10, 100], help="numbers of deleted points")
    parser.add_argument("--l2", type=float, default=1e-4, help="ridge strength of least squares (the authors')")
    parser.add_argument(
        "--logistic-l2", type=float, default=1.0, help="ridge strength of logistic regression (1e-4: > 50 Newton steps)"
    )
    parser.add_argument("--bias", action="store_true", help="append an unpenalised bias column (the authors: none)")
    parser.add_argument("--value", type=float, default=1.0, help="the injected feature's value (the authors': 1)")
    parser.add_argument("--injected-class", type=int, default=1, help="the class whose points carry the feature")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats of pru and influence (median)")
    parser.add_argument("--seed", type=int, default=0, help="draws the deleted points")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training points")
    parser.add_argument("--quick", action="store_true", help="300 digits, k 1 and 5, 1 repeat (the smoke test)")
    parser.add_argument("--output", default="bench_results/pru.json")
    parser.add_argument("--plot", default="docs/img/pru.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.ks, args.repeats, args.limit = ["digits"], [1, 5], 1, 300
    if any(k < 1 for k in args.ks) or args.repeats < 1 or args.l2 <= 0 or args.logistic_l2 <= 0 or args.value == 0:
        parser.error("--ks must be >= 1, --repeats >= 1, --l2 and --logistic-l2 > 0 and --value non-zero")
    results, fits = [], Fits()
    for name in args.datasets:
        data = load(name, args.limit)
        if max(args.ks) >= len(data[0]):
            parser.error(f"--ks: {name} has {len(data[0])} training points; delete fewer")
        for loss in args.losses:
            for k in args.ks:
                r = run_case(name, loss, k, args, data, fits)
                results.append(r)
                s, d, w = r["seconds"], r["relative_l2_to_retrain"], r["injected_weight_over_original"]
                print(
                    f"{name} {loss} k={k}: retrain {s['retrain']:.3f} s, pru {s['pru']:.5f} s ({r['speedup_pru']:.0f}x)"
                    f", influence {s['influence']:.5f} s; relative L2 to retrained: pru {d['pru']:.3f}, influence "
                    f"{d['influence']:.3f}; injected weight / original's: pru {w['pru']:.3f}, influence "
                    f"{w['influence']:.3f}",
                    flush=True,
                )
    goals = [
        {
            "goal": g,
            "passed": all(r["goals"][g] for r in results),
            "failed_cases": [f"{r['dataset']} {r['loss']} k={r['k']}" for r in results if not r["goals"][g]],
        }
        for g in GOALS
    ]
    report = {
        "benchmark": "pru",
        "command": "python scripts/bench_pru.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "threads": torch.get_num_threads(),
        "settings": {
            "l2": args.l2,
            "logistic_l2": args.logistic_l2,
            "bias": args.bias,
            "value": args.value,
            "injected_class": args.injected_class,
            "repeats": args.repeats,
            "seed": args.seed,
            "ks": args.ks,
            "limit": args.limit,
        },
        "results": results,
        "goals": goals,
        "plot": str(args.plot),
        "versions": package_versions(),
    }
    plot(results, Path(args.plot))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.output), report)
    for g in goals:
        print(f"goal {g['goal']}: {'met' if g['passed'] else 'missed in ' + ', '.join(g['failed_cases'])}")
    print(f"wrote {args.output} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
