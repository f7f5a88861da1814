"""Benchmark grids: every method on every scenario over several seeds, scored against the retrain oracle.

    summary = run_bench(BenchConfig(dataset="mnist5k", model="cnn", scenarios=["class:3", "random:0.1"]), "out/bench")

Writes ``results.csv`` (one row per scenario, seed and method, the oracle's rows included), ``summary.json`` (mean and
std per scenario and method), ``report.md`` with one table per scenario (metrics as rows, the oracle first and the
methods as columns, like the DiStruction paper's tables), and per scenario two plots: UA/RA/TA/MIA bars with the
oracle's value as a dashed line, and per-class test accuracy before and after.

A method entry is a registered name with optional config overrides, ``NAME[:key=value,key=value]`` (for example
``grad_ascent:mask=saliency``); the entry is also its column label.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.data import Scenario, dataset_path, scenario_paths
from classifiers.harness import UnlearnJob, load_splits, per_class_fractions, run_job
from classifiers.methods import get_classifier_method
from classifiers.metrics import plot_metric_bars, plot_per_class_comparison
from classifiers.training import warm_up
from concept_erase.core.config import check_numbers, config_to_dict, parse_overrides
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.io import check_disjoint, config_paths, write_json

__all__ = ["BenchConfig", "COLUMNS", "ORACLE", "ORIGINAL", "bench_inputs", "parse_method", "run_bench"]

ORACLE = "oracle (retrain)"
ORIGINAL = "original"  # the model before unlearning (the DiStruction tables' "baseline" column)
# (metrics key, label in the tables), in table order
COLUMNS = (
    ("ua", "UA"),
    ("ra", "RA"),
    ("ta", "TA"),
    ("ta_remaining", "TA (remaining classes)"),
    ("mia_efficacy", "MIA-efficacy"),
    ("mia_loss", "MIA (loss, LR)"),
    ("ulira_auc", "U-LiRA AUC"),
    ("ulira_balanced_accuracy", "U-LiRA bal. acc."),
    ("avg_gap", "Avg. Gap"),
    ("l2_to_original", "L2 to original"),
    ("l2_to_oracle", "L2 to oracle"),
    ("kl_to_oracle_forget", "KL to oracle (forget)"),
    ("cost_ratio", "cost / oracle"),
    ("seconds", "seconds"),
)
_DEFAULT_METHODS = [
    "finetune",
    "grad_ascent",
    "random_label",
    "salun",
    "salun_random_mask",
    "boundary_shrink",
    "boundary_expand",
]


@dataclass
class BenchConfig:
    """A benchmark grid. ``method_configs`` maps a method name or entry (``salun``, ``salun@random`` for one
    scenario kind only) to config values."""

    dataset: str = "mnist5k"
    model: str = "cnn"
    model_config: dict = field(default_factory=dict)
    scenarios: list[str] = field(default_factory=lambda: ["class:3", "random:0.1"])
    methods: list[str] = field(default_factory=lambda: list(_DEFAULT_METHODS))
    method_configs: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    superclasses: list[list[int]] | None = None
    recipe: dict = field(default_factory=dict)
    test_size: float = 0.25
    data_seed: int = 0
    cache: bool = True
    skip: list[str] = field(default_factory=list)  # ENTRY@KIND pairs not run (unsir@random: unsir refuses them)
    ulira: dict | None = None  # U-LiRA settings (classifiers.ulira.ULiRAConfig keys): adds its columns

    def __post_init__(self) -> None:
        check_numbers(self)
        if not self.scenarios or not self.methods or not self.seeds:
            raise ConfigError("scenarios, methods and seeds must each name at least one entry")
        kinds = ("class", "subclass", "random", "indices")
        for item in self.skip:
            name, _, kind = item.partition("@")
            if name not in {parse_method(e)[0] for e in self.methods} or kind not in kinds:
                raise ConfigError(
                    f"skip entries are METHOD@KIND with a listed method and KIND in {kinds}, got {excerpt(item)}"
                )
        for spec in self.scenarios:
            Scenario.parse(spec)

        for entry in self.methods:
            get_classifier_method(parse_method(entry)[0])
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods lists an entry twice: {self.methods}")


def parse_method(entry: str) -> tuple[str, dict]:
    """``"grad_ascent:mask=saliency,epochs=3"`` -> ``("grad_ascent", {"mask": "saliency", "epochs": 3})``."""
    name, _, rest = entry.partition(":")
    overrides = [item for item in rest.split(",") if item.strip()]
    return name.strip(), parse_overrides(overrides) if overrides else {}


def _method_values(config: BenchConfig, entry: str, kind: str) -> dict:
    name, overrides = parse_method(entry)
    keys = (name, f"{name}@{kind}", entry, f"{entry}@{kind}")
    values: dict = {}
    for key in dict.fromkeys(keys):
        values.update(config.method_configs.get(key) or {})
    return {**values, **overrides}


def _job(config: BenchConfig, scenario: str, seed: int, entry: str) -> UnlearnJob:
    kind = Scenario.parse(scenario).kind
    return UnlearnJob(
        method=parse_method(entry)[0],
        method_config=_method_values(config, entry, kind),
        dataset=config.dataset,
        model=config.model,
        model_config=dict(config.model_config),
        forget=scenario,
        superclasses=config.superclasses,
        seed=seed,
        recipe=dict(config.recipe),
        test_size=config.test_size,
        data_seed=config.data_seed,
        cache=config.cache,
        ulira=dict(config.ulira) if config.ulira is not None else None,
    )


def _skipped(config: BenchConfig, scenario: str, entry: str) -> bool:
    return f"{entry}@{Scenario.parse(scenario).kind}" in config.skip


def _row(scenario: str, seed: int, method: str, metrics: dict) -> dict:
    return {"scenario": scenario, "seed": seed, "method": method, **{k: metrics.get(k) for k, _ in COLUMNS}}


def bench_inputs(config: BenchConfig) -> list[str | None]:
    """The local paths a benchmark reads: a dataset given as a path, ``indices:FILE`` scenarios' files and the paths
    in the method configs and entries (``mask_path``, ...). An output overlapping one of them would destroy it."""
    paths = [dataset_path(config.dataset), *scenario_paths(*config.scenarios), *config_paths(config.method_configs)]
    return paths + [p for entry in config.methods for p in config_paths(parse_method(entry)[1])]


def run_bench(config: BenchConfig, out_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Run the grid and write its results into ``out_dir`` (an existing directory); return the summary."""
    out_dir = Path(out_dir)
    check_disjoint(out_dir, bench_inputs(config))  # never write over what the grid reads
    warm_up()
    rows: list[dict] = []
    per_class: dict[str, dict] = {}
    grid = [(sc, e) for sc in config.scenarios for e in config.methods if not _skipped(config, sc, e)]
    total, done = len(grid) * len(config.seeds), 0
    for scenario in config.scenarios:
        entries = [e for sc, e in grid if sc == scenario]
        if not entries:
            continue
        splits = load_splits(_job(config, scenario, config.seeds[0], entries[0]))
        for seed in config.seeds:
            for entry in entries:
                result = run_job(_job(config, scenario, seed, entry), splits=splits)
                done += 1
                m = result.metrics
                if entry == entries[0]:
                    rows.append(_row(m["scenario"], seed, ORIGINAL, m["original"]))
                    rows.append(_row(m["scenario"], seed, ORACLE, {**m["oracle"], "cost_ratio": 1.0}))
                    if seed == config.seeds[0]:
                        per_class[m["scenario"]] = {ORIGINAL: m["original"], ORACLE: m["oracle"]}
                rows.append(_row(m["scenario"], seed, entry, m))
                if seed == config.seeds[0]:
                    per_class[m["scenario"]][entry] = m
                log(
                    f"[{done}/{total}] {m['scenario']} seed {seed} {entry}: UA {m['ua']:.1f} RA {m['ra']:.1f} "
                    f"TA {m['ta']:.1f} MIA {m['mia_efficacy']:.1f} gap {m['avg_gap']:.2f} cost {m['cost_ratio']:.3f}"
                )
    summary = summarize(rows, config)
    _write(out_dir, rows, summary, per_class, config)
    return summary


def _stats(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(rows: list[dict], config: BenchConfig) -> dict:
    """Mean and std over seeds of every metric, per scenario and method (the oracle first)."""
    out: dict = {"config": _plain(config), "scenarios": {}}
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        methods = dict.fromkeys(r["method"] for r in rows if r["scenario"] == scenario)
        out["scenarios"][scenario] = {
            method: {
                key: _stats([r[key] for r in rows if r["scenario"] == scenario and r["method"] == method])
                for key, _ in COLUMNS
            }
            for method in methods
        }
    return out


def _plain(config: BenchConfig) -> dict:

    return config_to_dict(config)


def _cell(stats: dict | None, key: str) -> str:
    if stats is None:
        return "-"
    digits = 3 if key in ("cost_ratio", "kl_to_oracle_forget") else 2
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def markdown_table(scenario: str, methods: dict[str, dict], classwise: bool) -> str:
    """One scenario's table: metrics as rows, the oracle then each method as columns."""
    names = list(methods)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in COLUMNS:
        if key == "ta_remaining" and not classwise:
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(methods[n].get(key), key) for n in names) + " |")
    return "\n".join(lines)


PAPER_ROWS = (("ra", "D_r accuracy"), ("forget_accuracy", "D_f accuracy"), ("mia_efficacy", "MIA"),
              ("cost_ratio", "cost / retrain"))  # fmt: skip


def paper_table(methods: dict[str, dict]) -> str:
    """The DiStruction paper's layout: D_r accuracy, D_f accuracy (= 100 - UA) and MIA as rows, the original
    ("baseline") and the retrained model first."""
    names = list(methods)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in PAPER_ROWS:
        cells = []
        for name in names:
            stats = methods[name].get("ua" if key == "forget_accuracy" else key)
            if key == "forget_accuracy" and stats is not None:
                stats = {**stats, "mean": 100.0 - stats["mean"]}
            cells.append(_cell(stats, key))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(scenario: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in scenario).strip("_")


def _write(out_dir: Path, rows: list[dict], summary: dict, per_class: dict, config: BenchConfig) -> None:

    with (out_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(out_dir / "summary.json", summary)
    seeds = ", ".join(map(str, config.seeds))
    lines = [
        f"# Classifier unlearning: {config.dataset}, {config.model}",
        "",
        f"Mean ± std over seeds {seeds}. Percentages except L2, KL, cost (method seconds / oracle training seconds) "
        "and seconds. UA = 100 - forget accuracy; RA retain accuracy; TA test accuracy; MIA-efficacy: RBF SVC "
        "(C=3, gamma='auto') on true-class confidence, trained on retain vs test, % of forget samples called "
        "non-members; Avg. Gap = mean |method - oracle| over UA, MIA-efficacy, RA, TA.",
    ]
    for scenario, methods in summary["scenarios"].items():
        slug = _slug(scenario)
        classwise = Scenario.parse(scenario).classwise if not scenario.startswith("indices") else False
        lines += ["", f"## {scenario}", "", markdown_table(scenario, methods, classwise), ""]
        lines += ["In the DiStruction paper's layout:", "", paper_table(methods), ""]
        bars = {}  # the oracle's row is named "oracle": plot_metric_bars draws it as the reference line
        for name, stats in methods.items():
            if name == ORIGINAL:
                continue
            means = {k: (v or {}).get("mean") for k, v in stats.items()}
            bars["oracle" if name == ORACLE else name] = {
                **means,
                **{f"{k}_std": (v or {}).get("std") for k, v in stats.items()},
            }
        plot_metric_bars(bars, out_dir / f"bars_{slug}.png", title=f"{config.dataset} {config.model}: {scenario}")
        forget = list(Scenario.parse(scenario).classes) if classwise else []
        runs = {name: per_class_fractions(m, forget) or {"per_class_accuracy": {}, "forget_classes": forget}
                for name, m in per_class[scenario].items()}  # fmt: skip
        plot_per_class_comparison(runs, out_dir / f"per_class_{slug}.png", title=f"per-class test accuracy: {scenario}")
        lines += [f"![UA/RA/TA/MIA]({f'bars_{slug}.png'})", f"![per-class accuracy]({f'per_class_{slug}.png'})"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
