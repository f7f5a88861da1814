"""The seed study: VBU of a sparse GP classifier on two moons, with and without shards, scored against retraining.

Protocol (the VBU authors'): ``make_moons(n_samples=100, noise=0.2, random_state=0)``; the erased set ``D_e`` is the 20
points with the largest first coordinate (``erase="largest"``) or 20 points drawn with ``seed`` (``"random"``); 20
inducing inputs ``make_moons(n_samples=20, noise=0.2, random_state=0)[0]``; the fixed kernel of
:class:`~classifiers.vbu.gp.SparseGPClassifier`. For each shard mode, number of shards ``S``, aggregation, method
and ``lambda``: the metric is, for each point ``x``, ``KL[p_retrain(y|x) || p_unlearned(y|x)]`` between Bernoulli
predictive distributions (each a seeded Monte Carlo average over posterior samples), averaged over ``D_e``
(``kl_erased``) and over ``D_r`` (``kl_remaining``). ``p_retrain`` comes from VI on ``D_r`` with the same shards;
method ``full`` is the un-unlearned ``q(theta|D)``; method ``laplace`` (Laplace unlearning,
:mod:`classifiers.vbu.laplace`) has no ``lambda`` (``None`` in its rows). Times are wall seconds on this process: ``*_seconds`` sums over
the affected shards (one worker), ``*_seconds_max_shard`` is the slowest shard (one worker per shard).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.datasets import make_moons
from tqdm.auto import tqdm

from classifiers.vbu.gp import NotPositiveDefiniteError, SparseGPClassifier
from classifiers.vbu.laplace import laplace_posteriors
from classifiers.vbu.plots import plot_kl_vs_lambda, plot_laplace_vs_vbu, plot_maps
from classifiers.vbu.shards import (
    AGGREGATIONS,
    DEFAULT_METHODS,
    METHODS,
    SHARD_MODES,
    ShardedGPUnlearner,
    check_erase_indices,
)
from classifiers.vbu.unlearn import check_lambda
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.io import write_json

__all__ = ["DEFAULT_LAMBDAS", "MoonsConfig", "bernoulli_kl", "map_panels", "moons_data", "run_moons", "write_moons"]

DEFAULT_LAMBDAS = (0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 1.0)
ERASE_MODES = ("largest", "random")
# method "laplace" (classifiers/vbu/laplace.py) has no lambda: one row per shard mode, S and aggregation
LAPLACE = "laplace"
STUDY_METHODS = (*METHODS, LAPLACE)


@dataclass
class MoonsConfig:
    shards: list[int] = field(default_factory=lambda: [1, 3, 5])
    lambdas: list[float] = field(default_factory=lambda: list(DEFAULT_LAMBDAS))
    erase: str = "largest"
    num_erase: int = 20
    shard_modes: list[str] = field(default_factory=lambda: ["contiguous"])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    aggregations: list[str] = field(default_factory=lambda: list(AGGREGATIONS))
    seed: int = 0
    n_samples: int = 100
    noise: float = 0.2
    predict_samples: int = 2000

    def __post_init__(self) -> None:
        check_numbers(self)

    def validate(self) -> MoonsConfig:
        if self.erase not in ERASE_MODES:
            raise ConfigError(f"unknown erase mode {excerpt(self.erase)}; accepted: {', '.join(ERASE_MODES)}")
        for name, values, accepted in (
            ("shard mode", self.shard_modes, SHARD_MODES),
            ("method", self.methods, STUDY_METHODS),
            ("aggregation", self.aggregations, AGGREGATIONS),
        ):
            bad = [v for v in values if v not in accepted]
            if bad or not values:
                raise ConfigError(
                    f"unknown {name} {excerpt(bad[0] if bad else '(none)')}; accepted: {', '.join(accepted)}"
                )
        if not self.shards or any(int(s) < 1 for s in self.shards):
            raise ConfigError(f"shards must be positive integers, got {self.shards}")
        self.lambdas = [check_lambda(v) for v in self.lambdas]
        if not 0 < self.num_erase < self.n_samples:
            raise ConfigError(f"num_erase must be between 1 and {self.n_samples - 1}, got {self.num_erase}")
        return self


def moons_data(config: MoonsConfig):
    """``X, y, Z`` and the erased indices of the protocol."""

    X, y = make_moons(n_samples=config.n_samples, noise=config.noise, random_state=0)
    Z = make_moons(n_samples=20, noise=config.noise, random_state=0)[0]
    if config.erase == "largest":
        erase = np.argsort(-X[:, 0], kind="stable")[: config.num_erase]
    else:
        erase = np.random.default_rng(config.seed).choice(len(X), config.num_erase, replace=False)
    return X, y, Z, check_erase_indices(erase, len(X))


def bernoulli_kl(p, q, eps: float = 1e-12) -> np.ndarray:
    """``KL[Bern(p) || Bern(q)]`` elementwise, in nats."""
    p, q = np.clip(p, eps, 1 - eps), np.clip(q, eps, 1 - eps)
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def _kls(vbu, X, agg, p_ref, posteriors, erase, keep, samples) -> dict:
    """The two mean KLs; None with the reason when an aggregation is impossible (e.g. an indefinite BCM)."""
    if p_ref is None:
        return {"kl_erased": None, "kl_remaining": None, "error": "the retrained posterior cannot be aggregated"}
    try:
        kl = bernoulli_kl(p_ref, vbu.predict_proba(X, agg, posteriors, samples))
    except NotPositiveDefiniteError as exc:
        return {"kl_erased": None, "kl_remaining": None, "error": str(exc)}
    return {"kl_erased": float(kl[erase].mean()), "kl_remaining": float(kl[keep].mean())}


def _reference(vbu, X, agg, posteriors, samples):
    try:
        return vbu.predict_proba(X, agg, posteriors, samples)
    except NotPositiveDefiniteError:
        return None


def _run_shards(model, X, y, erase, mode, num_shards, config, bar) -> tuple[list[dict], dict]:
    keep = np.setdiff1d(np.arange(len(X)), erase)
    vbu = ShardedGPUnlearner(model, num_shards=num_shards, shard_mode=mode, seed=config.seed).fit(X, y)
    retrained, retrain_secs = vbu.retrained_posteriors(erase)
    base = {"shard_mode": mode, "num_shards": num_shards, "affected_shards": len(retrain_secs)}
    times = {"retrain_seconds": sum(retrain_secs), "retrain_seconds_max_shard": max(retrain_secs)}
    ps = config.predict_samples
    reference = {a: _reference(vbu, X, a, retrained, ps) for a in config.aggregations}
    rows, posteriors = [], {"retrained": retrained, "full": vbu.posteriors_}
    for agg in config.aggregations:
        kls = _kls(vbu, X, agg, reference[agg], None, erase, keep, ps)
        rows.append({**base, "aggregation": agg, "method": "full", "lambda": None, **kls, **times})
    for method in config.methods:
        if method == LAPLACE:
            unlearned, secs = laplace_posteriors(vbu, erase)
            posteriors[(method, None)] = unlearned
            t = {"unlearn_seconds": sum(secs), "unlearn_seconds_max_shard": max(secs), **times}
            for agg in config.aggregations:
                kls = _kls(vbu, X, agg, reference[agg], unlearned, erase, keep, ps)
                rows.append({**base, "aggregation": agg, "method": method, "lambda": None, **kls, **t})
            bar.update(len(config.lambdas))
            continue
        for lam in config.lambdas:
            unlearned, secs = vbu.unlearned_posteriors(erase, method, lam)
            posteriors[(method, lam)] = unlearned
            t = {"unlearn_seconds": sum(secs), "unlearn_seconds_max_shard": max(secs), **times}
            for agg in config.aggregations:
                kls = _kls(vbu, X, agg, reference[agg], unlearned, erase, keep, ps)
                rows.append({**base, "aggregation": agg, "method": method, "lambda": lam, **kls, **t})
            bar.update(1)
    extra = {"vbu": vbu, "posteriors": posteriors, "fit_seconds": sum(vbu.fit_seconds_)}
    return rows, extra


def best_rows(rows: list[dict]) -> list[dict]:
    """Per shard mode, S, aggregation and method: the row with the smallest ``kl_erased`` (``full`` included)."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["shard_mode"], row["num_shards"], row["aggregation"], row["method"])
        if row["kl_erased"] is not None and (key not in best or row["kl_erased"] < best[key]["kl_erased"]):
            best[key] = row
    return list(best.values())


def run_moons(config: MoonsConfig | None = None, progress: bool = True) -> dict:
    """Run the study; returns ``{"config", "data", "rows", "best", "maps"}`` (``maps``: inputs of the map plot)."""
    config = (config or MoonsConfig()).validate()
    X, y, Z, erase = moons_data(config)
    model = SparseGPClassifier(Z)
    total = len(config.shard_modes) * len(config.shards) * len(config.methods) * len(config.lambdas)
    bar = tqdm(total=total, desc="vbu moons", unit="run", disable=not progress)
    rows, fits = [], []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _grid(config, model, X, y, erase, bar, rows, fits)
    maps = next(iter(fits), {}).pop("extra", None)
    for fit in fits:
        fit.pop("extra", None)
    data = {"n": len(X), "erased_indices": erase.tolist(), "num_inducing": len(Z), "fits": fits}
    data["jitter_warnings"] = sum("jitter" in str(w.message) for w in caught)
    data["wall_seconds"] = time.perf_counter() - start
    return {"config": asdict(config), "data": data, "rows": rows, "best": best_rows(rows), "maps": maps, "X": X, "y": y}


def _grid(config, model, X, y, erase, bar, rows, fits) -> None:
    try:
        for mode in config.shard_modes:
            for num_shards in config.shards:
                new_rows, extra = _run_shards(model, X, y, erase, mode, int(num_shards), config, bar)
                rows += new_rows
                fit = {"shard_mode": mode, "num_shards": num_shards, "fit_seconds": extra["fit_seconds"]}
                fits.append({**fit, "extra": (mode, num_shards, extra) if not fits else None})
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------- outputs


def map_panels(result: dict) -> tuple[dict, tuple]:
    """The probability-map panels of a :func:`run_moons` result, and their ``(xx, yy)`` grid.

    For the first (shard mode, S) run and the first aggregation: the predictive probabilities of the retrained
    posterior, of the full ``q(theta|D)`` and of each method's best ``lambda`` (best: smallest KL on ``D_e``).
    """
    mode, num_shards, extra = result["maps"]
    X, vbu, posteriors = result["X"], extra["vbu"], extra["posteriors"]
    agg = result["config"]["aggregations"][0]
    xx, yy = np.meshgrid(np.linspace(X[:, 0].min() - 0.5, X[:, 0].max() + 0.5, 70), np.linspace(-1.2, 1.7, 60))
    grid = np.c_[xx.ravel(), yy.ravel()]
    ps = result["config"]["predict_samples"]
    panels = {"retrained on D_r": vbu.predict_proba(grid, agg, posteriors["retrained"], ps)}
    panels["full q(theta|D)"] = vbu.predict_proba(grid, agg, posteriors["full"], ps)
    for row in result["best"]:
        if (row["shard_mode"], row["num_shards"], row["aggregation"]) == (mode, num_shards, agg):
            if row["method"] != "full":
                lam = "" if row["lambda"] is None else f"lambda={row['lambda']:g}, "
                title = f"{row['method']} ({lam}S={num_shards})"
                panels[title] = vbu.predict_proba(grid, agg, posteriors[(row["method"], row["lambda"])], ps)
    return panels, (xx, yy)


def write_moons(result: dict, out_dir) -> list[str]:
    """Write a :func:`run_moons` result into ``out_dir``: results.json, one KL-vs-lambda figure per shard mode and
    aggregation, laplace_vs_vbu.png (with method laplace) and maps.png; returns the file names written."""
    data = result["data"]
    write_json(
        out_dir / "results.json",
        {"config": result["config"], "data": data, "rows": result["rows"], "best": result["best"]},
    )
    names = ["results.json"]
    for mode in result["config"]["shard_modes"]:
        for agg in result["config"]["aggregations"]:
            name = f"kl_vs_lambda_{mode}_{agg}.png"
            plot_kl_vs_lambda(result["rows"], out_dir / name, mode, agg)
            names.append(name)
    if LAPLACE in result["config"]["methods"]:
        plot_laplace_vs_vbu(result["rows"], out_dir / "laplace_vs_vbu.png")
        names.append("laplace_vs_vbu.png")
    panels, grid = map_panels(result)
    plot_maps(panels, grid, result["X"], result["y"], np.asarray(data["erased_indices"]), out_dir / "maps.png")
    return [*names, "maps.png"]
