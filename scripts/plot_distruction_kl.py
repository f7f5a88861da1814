"""KL(q || p) over forgetting iterations for several lambdas (the DiStruction paper's Figure 1); writes PNG + JSON.

    python scripts/plot_distruction_kl.py --dataset digits --model mlp --output_dir out/distruction_kl
    python scripts/plot_distruction_kl.py --dataset mnist5k --model cnn --lambdas 0.1,0.3,0.5,0.7,0.9

The original is the harness's (cached), prepared once; each lambda forgets ``--forget`` from a copy of it and logs
the KL per step. The JSON also holds each run's forget and retain accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--forget", default="class:3")
    parser.add_argument("--lambdas", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--objective", default="boundary_shrink")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="distruction_kl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import classifiers.plugin  # noqa: F401
    from classifiers.data import make_task
    from classifiers.distruction.bgd import prepare_model
    from classifiers.distruction.method import DistructionConfig
    from classifiers.harness import UnlearnJob, load_splits, original_reference
    from classifiers.methods import unlearn
    from classifiers.metrics import accuracy

    job = UnlearnJob(method="distruction", dataset=args.dataset, model=args.model, forget=args.forget, seed=args.seed)
    splits = load_splits(job)
    task = make_task(splits, args.forget, seed=args.seed)
    original = original_reference(job, splits, None, job.train_config()).model
    out = Path(args.output_dir)
    prepare_model(original, splits.train, DistructionConfig(seed=args.seed).bgd()).save(out / "prepared")
    runs = {}
    for value in (float(v) for v in args.lambdas.split(",")):
        model = copy.deepcopy(original)
        config = {"kl_weight": value, "objective": args.objective, "epochs": args.epochs, "seed": args.seed}
        with contextlib.redirect_stdout(io.StringIO()):
            summary = unlearn("distruction", model, task, {**config, "prepared_path": str(out / "prepared")})
        runs[value] = {"kl": summary["kl_history"], "df_acc": 100 * accuracy(model, task.forget)}
        runs[value]["dr_acc"] = 100 * accuracy(model, task.retain)
        print(f"lambda {value:g}: final KL {summary['final_kl']:.1f}, D_f acc {runs[value]['df_acc']:.1f}, "
              f"D_r acc {runs[value]['dr_acc']:.1f}")  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4))
    for value, run in runs.items():
        ax.plot(range(1, len(run["kl"]) + 1), run["kl"], label=f"lambda = {value:g}")
    ax.set(
        xlabel="iteration",
        ylabel="KL(q || p)",
        yscale="symlog",
        title=f"DiStruction KL ({args.dataset}, {args.model}, {args.forget})",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "kl_vs_iteration.png", dpi=120)
    (out / "kl_vs_iteration.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"wrote {out / 'kl_vs_iteration.png'} and kl_vs_iteration.json")


if __name__ == "__main__":
    main()
