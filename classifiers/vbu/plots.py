"""Figures of the moons study: KL vs lambda per S, and predictive probability maps (matplotlib figures, no pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend state

__all__ = ["plot_kl_vs_lambda", "plot_laplace_vs_vbu", "plot_maps"]

_STYLE = {
    "eubo": ("C0", "o"),
    "rkl": ("C1", "^"),
    "eubo_lbfgs": ("C4", "v"),
    "eubo_adam": ("C2", "s"),
    "rkl_pooled": ("C3", "D"),
    "laplace": ("C5", "P"),
}


def _x_positions(lambdas: list[float]) -> tuple[np.ndarray, float]:
    """Positions on a log axis; lambda = 0 sits one decade below the smallest positive lambda (tick label "0")."""
    positive = [v for v in lambdas if v > 0]
    zero_at = (min(positive) if positive else 1.0) / 100.0
    return np.array([v if v > 0 else zero_at for v in lambdas]), zero_at


def plot_kl_vs_lambda(rows: list[dict], path: str | Path, shard_mode: str, aggregation: str) -> Path:
    """Rows of panels, one row per S: KL on D_e (left) and D_r (right) vs lambda; ``full`` as a dashed line."""
    rows = [r for r in rows if r["shard_mode"] == shard_mode and r["aggregation"] == aggregation]
    shard_counts = sorted({r["num_shards"] for r in rows})
    fig = Figure(figsize=(9, 2.8 * len(shard_counts)), dpi=100)
    axes = fig.subplots(len(shard_counts), 2, squeeze=False)
    for axes_row, s in zip(axes, shard_counts):
        mine = [r for r in rows if r["num_shards"] == s]
        full = next(r for r in mine if r["method"] == "full")
        methods = sorted({r["method"] for r in mine if r["method"] != "full" and r["lambda"] is not None})
        flat = sorted({r["method"] for r in mine if r["method"] != "full" and r["lambda"] is None})  # laplace
        for ax, key, label in zip(axes_row, ("kl_erased", "kl_remaining"), ("on D_e", "on D_r")):
            zero_at = None
            for method in methods:
                pts = sorted((r["lambda"], r[key]) for r in mine if r["method"] == method)
                x, zero_at = _x_positions([p[0] for p in pts])
                color, marker = _STYLE.get(method, ("C3", "x"))
                ax.plot(x, [p[1] for p in pts], marker=marker, color=color, label=method)
            ax.axhline(full[key], color="black", linestyle="--", linewidth=1, label="full (no unlearning)")
            for method in flat:
                value = next(r[key] for r in mine if r["method"] == method)
                if value is not None:
                    ax.axhline(
                        value, color=_STYLE.get(method, ("C3",))[0], linestyle=":", label=f"{method} (no lambda)"
                    )
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            if zero_at is not None:
                ticks = [zero_at] + [t for t in ax.get_xticks() if zero_at * 10 <= t <= 10]
                ax.set_xticks(ticks, ["0"] + [f"{t:g}" for t in ticks[1:]])
            ax.set_xlabel("lambda")
            ax.set_ylabel("mean KL (nats)")
            ax.set_title(f"S = {s}: KL(retrained || unlearned) {label}", fontsize=9)
        axes_row[0].legend(fontsize=7)
    fig.suptitle(f"VBU on moons ({shard_mode} shards, {aggregation})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_laplace_vs_vbu(rows: list[dict], path: str | Path) -> Path:
    """Laplace unlearning beside EUBO / rKL: KL to the retrained predictive on D_e (left) and D_r (right) against
    S, one line per method (EUBO / rKL at their best lambda on D_e) and aggregation, the un-unlearned ``full``
    dashed; one row of panels per shard mode."""
    modes = sorted({r["shard_mode"] for r in rows})
    fig = Figure(figsize=(9, 3.2 * len(modes)), dpi=100)
    axes = fig.subplots(len(modes), 2, squeeze=False)
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["shard_mode"], r["aggregation"], r["method"], r["num_shards"])
        if r["kl_erased"] is not None and (key not in best or r["kl_erased"] < best[key]["kl_erased"]):
            best[key] = r
    aggs = sorted({k[1] for k in best})
    methods = sorted({k[2] for k in best})
    for axes_row, mode in zip(axes, modes):
        for ax, metric, label in zip(axes_row, ("kl_erased", "kl_remaining"), ("on D_e", "on D_r")):
            for method in methods:
                for agg, ls in zip(aggs, ("-", "-.", ":")):
                    pts = sorted((k[3], r[metric]) for k, r in best.items() if k[:3] == (mode, agg, method))
                    if not pts:
                        continue
                    color, marker = _STYLE.get(method, ("black", "o")) if method != "full" else ("black", "o")
                    ax.plot(
                        *zip(*pts),
                        marker=marker,
                        color=color,
                        linestyle="--" if method == "full" else ls,
                        label=f"{method} ({agg})",
                    )
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("shards S")
            ax.set_ylabel("mean KL (nats)")
            ax.set_title(f"{mode} shards: KL(retrained || unlearned) {label}", fontsize=9)
        axes_row[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Laplace unlearning vs VBU (EUBO / rKL at their best lambda) on moons", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_maps(panels: dict[str, np.ndarray], grid: tuple, X, y, erase, path: str | Path) -> Path:
    """One panel per predictive probability map ``p(y=1|x)`` on ``grid = (xx, yy)``; D_e circled."""
    xx, yy = grid
    fig = Figure(figsize=(3.4 * len(panels), 3.2), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)
    erased = np.zeros(len(X), dtype=bool)
    erased[erase] = True
    for ax, (title, probs) in zip(axes[0], panels.items()):
        im = ax.contourf(xx, yy, probs.reshape(xx.shape), levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.8)
        ax.contour(xx, yy, probs.reshape(xx.shape), levels=[0.5], colors="k", linewidths=1)
        ax.scatter(*X[~erased].T, c=y[~erased], cmap="bwr", s=12, edgecolors="k", linewidths=0.3)
        ax.scatter(*X[erased].T, c=y[erased], cmap="bwr", s=30, marker="X", edgecolors="k", linewidths=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="p(y=1|x)")
    fig.savefig(path)
    return Path(path)
