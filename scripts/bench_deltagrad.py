"""DeltaGrad vs retraining with the same optimiser: deletion and addition rates 0.1%-10%, batch and online.

For each data set (MNIST-5k, digits) softmax regression (``mlp`` with ``hidden_sizes: []``) is trained by full-batch
gradient descent on the L2-regularised cross-entropy, caching every iteration
(``classifiers.methods.deltagrad.train_with_cache``). For each rate a request deletes that fraction of the training
rows (seeded) or adds that many examples (from the data set's test split: the same source the harness reads), and is
served two ways, each timed:

- **retrain**: the same GD from the same initial weights on the new data set;
- **deltagrad**: :func:`classifiers.methods.deltagrad.replay` with the paper's defaults (T0 5, j0 10, m 2).

The GD recipe is the authors' MNIST one: learning rate 0.1, 100 iterations (``l2`` 1e-3). Every request is timed
``--repeats`` times and the fastest time kept, for both ways (the machine is shared). ``online``: the same number of
examples in ``--online_requests`` requests one after another, as in the paper: each request is served on its own, by
DeltaGrad from the previous request's cache and by retraining on the data set as it then stands; the times are summed
over the requests. Recorded: seconds, the speed-up, the L2 distance of DeltaGrad's final parameters to the retrained
ones and of the retrained ones to the original's, their ratio (and, online, the smallest ratio over the requests,
each against the model before it), the test accuracy of the retrained and the DeltaGrad model, and the largest
Hessian eigenvalue at the initial and the trained weights (power iteration; GD is stable below
``2 / lambda_max``). Goals (issue 22), at rates <= 1% on MNIST-5k, for softmax regression: speed-up >= 2.6x and
distance ratio >= 100.

``--hidden_sizes 32`` runs the same on a small MLP (``mlp`` with one ReLU hidden layer of 32; the paper's MLP
experiment is one hidden layer of 300, full-batch GD at 0.1). The MLP's gradients go through autograd; it is
non-convex, so pairs with ``s.y <= 0`` are skipped (``skipped_pairs``), and so are pairs whose ``|y|^2 / s.y``
(a lower bound on the quasi-Hessian's largest eigenvalue) is past ``2 / learning_rate`` (``unstable_pairs``); the
goals above are only a yardstick.

    python scripts/bench_deltagrad.py --output bench_results/deltagrad.json --plot docs/img/deltagrad.png
    python scripts/bench_deltagrad.py --toy --output /tmp/dg.json --plot /tmp/dg.png    # digits, 2 rates
    python scripts/bench_deltagrad.py --hidden_sizes 32 --rates 0.001 0.005 0.01 \
        --output bench_results/deltagrad_mlp.json --plot docs/img/deltagrad_mlp.png
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call

from classifiers.data import load_dataset
from classifiers.methods.deltagrad import GDRecipe, replay, retrain_gd, train_with_cache
from classifiers.models import ModelConfig
from classifiers.training import fresh_model
from concept_erase.core.io import package_versions, write_json

RATES = (0.001, 0.005, 0.01, 0.05, 0.1)


def _model(splits, hidden=()):
    shape = tuple(splits.train.tensors[0].shape[1:])
    return fresh_model(ModelConfig("mlp", hidden_sizes=list(hidden)), splits.num_classes, shape, 0)


def _lambda_max(model, w, x, y, steps=30):
    """The largest eigenvalue of the Hessian of the mean cross-entropy at the flat float64 parameters ``w`` (power
    iteration on Hessian-vector products; the L2 term adds ``l2``)."""
    net = copy.deepcopy(model).double()
    names, shapes = [n for n, _ in net.named_parameters()], [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]
    x = x.double()

    def loss(flat):
        params = {n: v.view(s) for n, v, s in zip(names, torch.split(flat, sizes), shapes)}
        return nn.functional.cross_entropy(functional_call(net, params, (x,)), y)

    v = torch.randn(len(w), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v, value = v / v.norm(), 0.0
    for _ in range(steps):
        hv = torch.autograd.functional.hvp(loss, w, v)[1]
        value, v = float(v @ hv), hv / hv.norm()
    return value


def _accuracy(model, w, splits):
    net = copy.deepcopy(model).double()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(w, net.parameters())
        x, y = splits.test.tensors
        return float((net(x.double()).argmax(1) == y).double().mean())


def _timed(fn, *args, hidden=(), repeats=1, **kwargs):
    """``fn``'s result and its fastest time over ``repeats`` runs (the machine is shared: the minimum is the least
    disturbed measurement of a deterministic computation). ``fn`` gets a fresh model (``retrain_gd`` trains the one
    it is given in place)."""
    best = float("inf")
    for _ in range(repeats):
        model = _model(args[0], hidden)
        start = time.perf_counter()
        out = fn(model, *args[1:], **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def _case(splits, recipe, cache, rate, kind, requests, seed, repeats, hidden=()):
    x, y = splits.train.tensors
    count = max(1, round(rate * len(y)))
    g = torch.Generator().manual_seed(seed)
    if kind == "delete":
        rows = torch.randperm(len(y), generator=g)[:count]
    else:
        pick = torch.randperm(len(splits.test.tensors[1]), generator=g)[:count]
        ax, ay = splits.test.tensors[0][pick], splits.test.tensors[1][pick]
    chunks = torch.arange(count).chunk(requests)
    # online: every request is served on its own, by DeltaGrad from the previous request's cache and by retraining
    # on the data set as it stands after the request; both times are summed over the requests
    retrain_s = dg_s = 0.0
    cur_cache, cur_x, cur_y, alive = cache, x, y, torch.arange(len(y))
    ratios, exact_its, skipped, unstable = [], 0, 0, 0
    for chunk in chunks:
        if kind == "delete":
            # the rows to delete, as positions in the current (already shrunk) data set
            hit = torch.isin(alive, rows[chunk])
            position = torch.nonzero(hit).squeeze(1)
            alive = alive[~hit]
            request = {"remove": position}
            keep_now = torch.ones(len(cur_y), dtype=torch.bool)
            keep_now[position] = False
            new_x, new_y = cur_x[keep_now], cur_y[keep_now]
        else:
            request = {"add": (ax[chunk], ay[chunk])}
            new_x, new_y = torch.cat([cur_x, ax[chunk]]), torch.cat([cur_y, ay[chunk]])
        exact, s_retrain = _timed(retrain_gd, splits, new_x, new_y, recipe, hidden=hidden, repeats=repeats)
        previous = cur_cache.final
        (w, cur_cache, stats), s_dg = _timed(replay, splits, cur_cache, cur_x, cur_y, hidden=hidden, repeats=repeats,
                                             **request)  # fmt: skip
        retrain_s, dg_s = retrain_s + s_retrain, dg_s + s_dg
        ratios.append(float((previous - exact).norm()) / max(float((w - exact).norm()), 1e-300))
        exact_its, skipped = exact_its + stats["exact_iterations"], skipped + stats["skipped_pairs"]
        unstable += stats["unstable_pairs"]
        cur_x, cur_y = new_x, new_y
    d_dg = float((w - exact).norm())
    d_orig = float((cache.final - exact).norm())
    return {"kind": kind, "mode": "online" if requests > 1 else "batch", "rate": rate, "examples": count,
            "requests": len(chunks), "retrain_seconds": round(retrain_s, 4), "deltagrad_seconds": round(dg_s, 4),
            "speedup": round(retrain_s / dg_s, 3), "distance_deltagrad_retrain": d_dg,
            "distance_original_retrain": d_orig, "distance_ratio": d_orig / max(d_dg, 1e-300),
            "distance_ratio_min_per_request": min(ratios), "exact_iterations": exact_its,
            "skipped_pairs": skipped, "unstable_pairs": unstable, "test_accuracy_retrain": _accuracy(_model(splits, hidden), exact, splits),
            "test_accuracy_deltagrad": _accuracy(_model(splits, hidden), w, splits)}  # fmt: skip


def _plot(rows, path, title=None):
    fig = Figure(figsize=(10, 4))
    ax_t, ax_d = fig.subplots(1, 2)
    if title:
        fig.suptitle(title, fontsize=9)
    for (dataset, kind, mode), group in _groups(rows).items():
        rates = [100 * r["rate"] for r in group]
        label = f"{dataset} {kind} {mode}"
        ax_t.plot(rates, [r["deltagrad_seconds"] for r in group], marker="o", label=f"DeltaGrad {label}")
        ax_t.plot(rates, [r["retrain_seconds"] for r in group], marker="x", linestyle="--", label=f"retrain {label}")
        ax_d.plot(
            rates, [r["distance_deltagrad_retrain"] for r in group], marker="o", label=f"DeltaGrad-retrain {label}"
        )
        ax_d.plot(rates, [r["distance_original_retrain"] for r in group], marker="x", linestyle="--",
                  label=f"original-retrain {label}")  # fmt: skip
    for ax, title in ((ax_t, "running time (s)"), (ax_d, "L2 distance to the retrained parameters")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("deletion / addition rate (%)")
        ax.set_title(title)
        ax.legend(fontsize=5)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _groups(rows):
    out: dict = {}
    for r in rows:
        out.setdefault((r["dataset"], r["kind"], r["mode"]), []).append(r)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist5k", "digits"])
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--hidden_sizes", type=int, nargs="*", default=[],
                        help="hidden layer widths of the mlp (default none: softmax regression)")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--online_requests", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="time each request this many times (the fastest)")
    parser.add_argument("--toy", action="store_true", help="digits, rates 1%% and 5%%, 30 iterations, 1 repeat")
    parser.add_argument("--output", required=True)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    if args.toy:
        args.datasets, args.rates, args.iterations, args.repeats = ["digits"], [0.01, 0.05], 30, 1
    if any(not 0 < r < 1 for r in args.rates) or min(args.iterations, args.online_requests, args.repeats) < 1:
        print("error: rates must be in (0, 1), iterations, online_requests and repeats >= 1", file=sys.stderr)
        return 2
    if any(h < 1 for h in args.hidden_sizes):
        print(f"error: hidden_sizes must be >= 1, got {args.hidden_sizes}", file=sys.stderr)
        return 2
    hidden = tuple(args.hidden_sizes)
    recipe = GDRecipe(iterations=args.iterations, learning_rate=args.learning_rate, l2=args.l2)
    rows = []
    for name in args.datasets:
        splits = load_dataset(name)
        model = _model(splits, hidden)
        start = time.perf_counter()
        cache = train_with_cache(model, *splits.train.tensors, recipe)
        train_s = time.perf_counter() - start
        curvature = {f"lambda_max_{at}": _lambda_max(model, w, *splits.train.tensors)
                     for at, w in (("initial", cache.params[0]), ("trained", cache.final))}  # fmt: skip
        curvature["stability_limit_trained"] = 2 / curvature["lambda_max_trained"]
        print({"dataset": name, **curvature, "test_accuracy": _accuracy(model, cache.final, splits)}, flush=True)
        for kind in ("delete", "add"):
            for requests in (1, args.online_requests):
                for rate in args.rates:
                    case = _case(splits, recipe, cache, rate, kind, requests, 0, args.repeats, hidden)
                    row = {"dataset": name, **case, "train_with_cache_seconds": round(train_s, 4)}
                    row["cache_bytes"] = cache.nbytes
                    row["test_accuracy_original"] = _accuracy(model, cache.final, splits)
                    row.update(curvature)
                    rows.append(row)
                    print({k: row[k] for k in ("dataset", "kind", "mode", "rate", "speedup", "distance_ratio")},
                          flush=True)  # fmt: skip
    goal = [r for r in rows if r["dataset"] == "mnist5k" and r["rate"] <= 0.01]
    result = {"command": "python " + " ".join(["scripts/bench_deltagrad.py", *(argv or sys.argv[1:])]),
              "toy": args.toy, "threads": torch.get_num_threads(), "versions": package_versions(),
              "model": {"family": "mlp", "hidden_sizes": list(hidden)},
              "recipe": vars(recipe), "defaults": {"T0": 5, "j0": 10, "m": 2}, "repeats": args.repeats,
              "rows": rows,
              "goals": {"speedup >= 2.6 (mnist5k, rate <= 1%)": bool(goal) and all(r["speedup"] >= 2.6 for r in goal),
                        "distance ratio >= 100 (mnist5k, rate <= 1%)":
                            bool(goal) and all(r["distance_ratio"] >= 100 for r in goal)}}  # fmt: skip
    write_json(args.output, result)
    if args.plot:
        model_name = f"MLP, hidden {list(hidden)}" if hidden else "softmax regression"
        _plot(rows, args.plot, f"DeltaGrad ({model_name}) vs retraining by the same GD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
