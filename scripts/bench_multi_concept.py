"""Several concepts in one erasure request: every method erases 1, 2, 3 and 5 digits at once, scored per concept.

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_multi_concept.py               # every set x method, seed 0
    python scripts/bench_multi_concept.py --methods uce-digit esd --sets seven,two --seeds 0 1
    python scripts/bench_multi_concept.py --wait_minutes 120      # wait up to 2 h for oracles still being trained
    python scripts/bench_multi_concept.py --toy --oracle none --output /tmp/toy.json --plot /tmp/toy.png   # smoke test
    python scripts/bench_multi_concept.py --methods rece --output /tmp/rece.json --plot /tmp/rece.png   # in parallel,
    python scripts/bench_multi_concept.py --merge /tmp/rece.json --wait_minutes 0    # then joined to the main file

For each concept set (``--sets``, comma-separated digits; default ``seven``, ``seven,two``, ``seven,two,five``,
``seven,two,five,three,eight``), each method entry and each erasure seed, the embedded tiny SD is erased of the whole
set in one request (the entry's keys over the model's presets, ``erasure_presets.json``; the uce and rece entries
are fixed settings, without presets) and scored by the harness
(``--num_images`` per concept, held-out paraphrases) against the original and the retrain oracle trained without
the whole set. Each row records the forget accuracy (mean over the set and per concept), the retain accuracy on the
other digits, the original's and the oracle's figures on the same sets, the gaps (forget minus the oracle's; the
original's retain minus the erased model's) and the erasure's seconds.

**Oracles are never trained here.** ``--oracle auto`` uses the shipped or cached oracle of each set
(:func:`~concept_erase.diffusion.oracle.find_oracle`); the sets whose oracle exists run first, and the script then
waits (up to ``--wait_minutes``, polling every minute) for the others, which a separate job trains
(``concept-erase``'s ``get_oracle``); a set whose oracle never came is recorded under ``pending``. ``--oracle none``
scores without oracles.

A method entry is a label of :data:`ENTRIES` (``uce-digit``: UCE mapping each digit to the word "digit") or
``label=method:key=value,key=value``. ``--output`` is rewritten atomically after every row, with the summary (per set
and method: means over seeds, the goals: retain within 5 points of the original's, forget within 10 points of the
oracle's) and ``--plot`` redrawn; a rerun skips the rows already there with the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend state

from concept_erase.core.config import config_to_dict, parse_overrides
from concept_erase.core.errors import ConfigError, UnknownNameError
from concept_erase.core.io import atomic_file, package_versions, write_json
from concept_erase.core.readers import read_json_object
from concept_erase.core.registry import get_method, list_methods
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, model_fingerprint
from concept_erase.diffusion.oracle import find_oracle
from concept_erase.diffusion.presets import resolve_settings
from concept_erase.diffusion.tiny_sd import resolve_model

SETS = ("seven", "seven,two", "seven,two,five", "seven,two,five,three,eight")
TINY_UCE = {"guide_concepts": ["digit"], "erase_scale": 10.0, "preserve_scale": 2.0, "preserve_positions": "all"}
# label -> (registered method, its keys, whether the model's presets fill the other keys); rece joins when registered.
# The UCE and RECE entries are fixed settings (the papers' defaults, or the issue's keys), never the model's presets.
ENTRIES: dict[str, tuple[str, dict, bool]] = {
    "fmn": ("fmn", {}, True),
    "salun": ("salun", {}, True),
    "esd": ("esd", {}, True),
    "uce": ("uce", {}, False),  # the paper's defaults (guide: the empty word)
    "uce-digit": ("uce", {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0}, False),
    "rece": ("rece", {}, False),
    "rece-digit": ("rece", {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0}, False),
    "uce-preset": ("uce", {}, True),  # the model's uce preset (tiny SD: guide "digit", every preserved position)
    "rece-preset": ("rece", dict(TINY_UCE), False),  # rece with the tiny SD's uce preset keys
}
RETAIN_POINTS, FORGET_POINTS = 0.05, 0.10  # the goals: retain within 5 points of the original's, forget within 10
ENTRY = re.compile(r"^(?:(?P<label>[\w.-]+)=)?(?P<method>[\w-]+)(?::(?P<keys>.*))?$")
# --toy: the smallest erasure and evaluation that still run every part
TOY_ERASE = {"max_train_steps": 2, "num_images": 2, "generation_steps": 2, "textual_inversion_steps": 2}
TOY_EVALUATION = {"num_images": 2, "num_inference_steps": 2, "grid_seeds": 1}
POLL_SECONDS = 60


@dataclasses.dataclass
class Entry:
    label: str
    method: str
    keys: dict  # the entry's own keys
    user: dict  # what goes over the presets: the toy sizes (--toy), the entry's keys
    presets: bool = True  # the model's presets fill the keys the entry does not set

    def settings(self, model: Path, seed: int):
        entry = get_method(self.method, tag="diffusion")
        return resolve_settings(entry, model, {**self.user, "seed": seed, "show_progress": False}, self.presets)


def _default_methods() -> list[str]:
    registered = set(list_methods("diffusion"))
    return [label for label, (method, _, _) in ENTRIES.items() if method in registered]


def _parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="ENTRY",
        help=f"labels of {', '.join(ENTRIES)} or label=method:key=value,... (default: every registered one)",
    )
    parser.add_argument(
        "--sets", nargs="+", default=list(SETS), help="concept sets, comma-separated (default: 1/2/3/5)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="erasure seeds (default: 0)")
    parser.add_argument("--model", default="tiny-sd", help="the model erased (default: tiny-sd)")
    parser.add_argument("--num_images", type=int, default=64, help="images per concept in the evaluation (default 64)")
    parser.add_argument(
        "--oracle", choices=("auto", "none"), default="auto", help="auto: shipped or cached, never trained"
    )
    parser.add_argument(
        "--wait_minutes", type=float, default=0.0, help="how long to wait for missing oracles (default 0)"
    )
    parser.add_argument("--toy", action="store_true", help="tiny erasures and evaluations: a smoke test")
    parser.add_argument("--output", default="bench_results/multi_concept.json")
    parser.add_argument("--plot", default="docs/img/multi_concept.png")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="JSON",
        help="rows of other result files (e.g. another method run in parallel) join the output (its own rows win)",
    )
    return parser.parse_args(argv), parser


def _sets(specs: list[str]) -> list[list[str]]:
    out = []
    for spec in specs:
        concepts = [c.strip().lower() for c in spec.split(",") if c.strip()]
        if not concepts or len(set(concepts)) != len(concepts):
            raise ConfigError(f"--sets: {spec!r} must name distinct concepts separated by commas (seven,two)")
        out.append(concepts)
    return out


def _entries(specs: list[str], model: Path, toy: bool) -> list[Entry]:
    """Each ``--methods`` entry, its keys checked against the method's config before any work."""
    out: list[Entry] = []
    for spec in specs:
        spec = spec.strip()
        match = ENTRY.match(spec)
        if match is None:
            raise ConfigError(
                f"--methods: cannot read {spec!r}; write a label ({', '.join(ENTRIES)}) or label=method:k=v"
            )
        presets = True
        if match["label"] is None and match["keys"] is None and spec in ENTRIES:
            method, keys, presets = ENTRIES[spec]
            label = spec
        else:
            label, method = match["label"] or match["method"], match["method"]
            try:
                keys = parse_overrides([p for p in (match["keys"] or "").split(",") if p.strip()])
            except ConfigError as exc:
                raise ConfigError(f"--methods {spec!r}: {exc.args[0]}") from None
        try:
            info = get_method(method, tag="diffusion")
        except (ConfigError, UnknownNameError) as exc:
            raise ConfigError(f"--methods {spec!r}: {exc.args[0]}") from None
        fields = {f.name for f in dataclasses.fields(info.config_cls)}
        toy_keys = {k: v for k, v in TOY_ERASE.items() if k in fields} if toy else {}
        entry = Entry(label, info.name, keys, {**toy_keys, **keys}, presets)
        if any(e.label == entry.label for e in out):
            raise ConfigError(f"--methods: label {entry.label!r} is given twice; give each configuration its own label")
        try:
            entry.settings(model, 0)
        except ConfigError as exc:
            raise ConfigError(f"--methods {spec!r}: {exc.args[0]}") from None
        out.append(entry)
    return out


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _scores(metrics: dict | None, forget: list[str]) -> dict | None:
    """Forget accuracy (mean and per concept) and retain accuracy of one scored model."""
    if metrics is None:
        return None
    per = metrics["per_concept"]
    return {
        "forget_accuracy": metrics["forget_accuracy"],
        "forget_per_concept": {c: per[c].get("accuracy") for c in forget},
        "retain_accuracy": metrics["retain_accuracy"],
    }


def _row(entry: Entry, seed: int, concepts: list[str], record: dict, metrics: dict, key: str, seconds: float) -> dict:
    erased = _scores(metrics, concepts)
    original, oracle = _scores(metrics["original"], concepts), _scores(metrics["oracle"], concepts)
    forget_gap = None if oracle is None else erased["forget_accuracy"] - oracle["forget_accuracy"]
    retain_drop = original["retain_accuracy"] - erased["retain_accuracy"]
    return {
        "set": ",".join(concepts),
        "concepts": concepts,
        "size": len(concepts),
        "method": entry.label,
        "registered_method": entry.method,
        "seed": seed,
        **erased,
        "original": original,
        "oracle": oracle,
        "forget_gap_to_oracle": forget_gap,
        "forget_gap_per_concept": None
        if oracle is None
        else {c: erased["forget_per_concept"][c] - oracle["forget_per_concept"][c] for c in concepts},
        "retain_drop": retain_drop,
        "retain_goal": bool(retain_drop <= RETAIN_POINTS + 1e-9),
        "forget_goal": None if forget_gap is None else bool(forget_gap <= FORGET_POINTS + 1e-9),
        "retain": metrics["retain"],
        "erasure_seconds": record["seconds"],
        "steps": record.get("steps"),
        "keys": entry.keys,
        "config": record["config"],
        "config_sources": record["config_sources"],
        "oracle_source": metrics["oracle_source"],
        "evaluation_images": metrics["settings"]["num_images"],
        "settings_key": key,
        "seconds": round(seconds, 1),
    }


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _summary(rows: list[dict]) -> list[dict]:
    """Per set and method (in the rows' order): means over seeds and the goals on the means."""
    out = []
    for set_name, label in dict.fromkeys((r["set"], r["method"]) for r in rows):
        mine = [r for r in rows if r["set"] == set_name and r["method"] == label]
        concepts = mine[0]["concepts"]
        forget_gap = _mean([r["forget_gap_to_oracle"] for r in mine])
        retain_drop = _mean([r["retain_drop"] for r in mine])
        out.append(
            {
                "set": set_name,
                "size": len(concepts),
                "method": label,
                "seeds": [r["seed"] for r in mine],
                "forget_accuracy": _mean([r["forget_accuracy"] for r in mine]),
                "forget_per_concept": {c: _mean([r["forget_per_concept"][c] for r in mine]) for c in concepts},
                "retain_accuracy": _mean([r["retain_accuracy"] for r in mine]),
                "original_forget_accuracy": mine[0]["original"]["forget_accuracy"],
                "original_retain_accuracy": mine[0]["original"]["retain_accuracy"],
                "oracle_forget_accuracy": (mine[0]["oracle"] or {}).get("forget_accuracy"),
                "oracle_retain_accuracy": (mine[0]["oracle"] or {}).get("retain_accuracy"),
                "oracle_forget_per_concept": (mine[0]["oracle"] or {}).get("forget_per_concept"),
                "forget_gap_to_oracle": forget_gap,
                "retain_drop": retain_drop,
                "retain_goal": retain_drop is not None and retain_drop <= RETAIN_POINTS + 1e-9,
                "forget_goal": None if forget_gap is None else forget_gap <= FORGET_POINTS + 1e-9,
                "erasure_seconds": _mean([r["erasure_seconds"] for r in mine]),
            }
        )
    return out


def _best(summary: list[dict]) -> dict[str, dict]:
    """Per set, the method closest to both goals: the smallest sum of the points each goal is missed by, then the
    smallest forget gap plus retain drop."""
    best = {}
    for set_name in dict.fromkeys(s["set"] for s in summary):
        mine = [s for s in summary if s["set"] == set_name and s["forget_gap_to_oracle"] is not None]
        if not mine:
            continue

        def miss(s):
            over = max(s["forget_gap_to_oracle"] - FORGET_POINTS, 0) + max(s["retain_drop"] - RETAIN_POINTS, 0)
            return over, s["forget_gap_to_oracle"] + s["retain_drop"]

        top = min(mine, key=miss)
        best[set_name] = {
            "method": top["method"],
            "forget_gap_to_oracle": top["forget_gap_to_oracle"],
            "retain_drop": top["retain_drop"],
            "both_goals": bool(top["forget_goal"] and top["retain_goal"]),
        }
    return best


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _table(summary: list[dict]) -> str:
    lines = [
        "| set | method | forget % (per concept) | oracle forget % | original forget % | retain % | original retain % "
        "| forget gap | retain drop | goals (forget, retain) | erasure s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        per = " / ".join(f"{c} {_pct(v)}" for c, v in s["forget_per_concept"].items())
        goals = f"{'n/a' if s['forget_goal'] is None else ('yes' if s['forget_goal'] else 'no')}, "
        goals += "yes" if s["retain_goal"] else "no"
        cells = [
            s["set"],
            s["method"],
            f"{_pct(s['forget_accuracy'])} ({per})",
            _pct(s["oracle_forget_accuracy"]),
            _pct(s["original_forget_accuracy"]),
            _pct(s["retain_accuracy"]),
            _pct(s["original_retain_accuracy"]),
            _pct(s["forget_gap_to_oracle"]),
            _pct(s["retain_drop"]),
            goals,
            f"{s['erasure_seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(summary: list[dict], path: Path) -> None:
    """Forget accuracy (with the oracle's and the original's) and retain accuracy (with the original's) against
    the number of concepts erased at once, one line per method."""
    fig = Figure(figsize=(13, 4.5))
    left, right = fig.subplots(1, 2)
    sizes = sorted({s["size"] for s in summary})
    reference = {size: next(s for s in summary if s["size"] == size) for size in sizes}
    for k, label in enumerate(dict.fromkeys(s["method"] for s in summary)):
        mine = sorted((s for s in summary if s["method"] == label), key=lambda s: s["size"])
        x = [s["size"] for s in mine]
        style = dict(color=f"C{k % 10}", marker="os^Dv"[k // 10 % 5], linestyle=("-", "--", "-.")[k // 10 % 3])
        left.plot(x, [100 * s["forget_accuracy"] for s in mine], label=label, **style)  # past 10 methods: new marks
        right.plot(x, [100 * s["retain_accuracy"] for s in mine], label=label, **style)
    oracle = [
        (n, reference[n]["oracle_forget_accuracy"]) for n in sizes if reference[n]["oracle_forget_accuracy"] is not None
    ]
    if oracle:
        left.plot([n for n, _ in oracle], [100 * v for _, v in oracle], "kx:", lw=2, label="retrain oracle")
    left.plot(
        sizes, [100 * reference[n]["original_forget_accuracy"] for n in sizes], "s--", color="gray", label="original"
    )
    right.plot(
        sizes, [100 * reference[n]["original_retain_accuracy"] for n in sizes], "s--", color="gray", label="original"
    )
    right.plot(
        sizes,
        [100 * (reference[n]["original_retain_accuracy"] - RETAIN_POINTS) for n in sizes],
        "_:",
        color="red",
        markersize=14,
        label=f"retain goal: original - {100 * RETAIN_POINTS:g} points",
    )
    for ax, what in (
        (left, "forget accuracy (%), mean over the erased digits"),
        (right, "retain accuracy (%), other digits"),
    ):
        ax.set_xticks(sizes)
        ax.set_xlabel("digits erased in one request")
        ax.set_ylabel(what)
        ax.set_ylim(-3, 103)
    low = min(100 * s[k] for s in summary for k in ("retain_accuracy", "original_retain_accuracy"))
    right.set_ylim(max(low - 15, 0), 101)  # the retain differences are a few points
    # one legend beside the axes (the methods and the references of both panels), never over the curves
    legend: dict = {}
    for ax in (left, right):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    columns = 1 + (len(legend) - 1) // 16
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center right", ncol=columns, frameon=False)
    sets = " | ".join(dict.fromkeys(s["set"] for s in sorted(summary, key=lambda s: s["size"])))
    fig.suptitle(f"several concepts erased in one request (sets: {sets}; seed mean)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 0.11 * columns, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _write(output: Path, result: dict) -> None:
    """Atomically: a half-written file never replaces the last complete one."""
    with atomic_file(output) as tmp:
        write_json(tmp, result)


def main(argv: list[str] | None = None) -> None:
    args, parser = _parse(argv)
    try:
        model = resolve_model(args.model)
        model_key = model_fingerprint(model)  # a retrained model under the same name is measured again
        sets = _sets(args.sets)
        entries = _entries(args.methods or _default_methods(), model, args.toy)
        evaluation = EvaluationConfig(**{"num_images": args.num_images, **(TOY_EVALUATION if args.toy else {})})
        if args.wait_minutes < 0:
            raise ConfigError(f"--wait_minutes must be >= 0, got {args.wait_minutes:g}")
    except ConfigError as exc:
        parser.error(str(exc))
    output, plot = Path(args.output), Path(args.plot)
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = read_json_object(output, "bench result") if output.is_file() else {}
    rows = {(r["set"], r["method"], r["seed"]): r for r in previous.get("rows", [])}
    for other in args.merge:
        for r in read_json_object(Path(other), "bench result to merge").get("rows", []):
            rows.setdefault((r["set"], r["method"], r["seed"]), r)
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    labels = {e.label: i for i, e in enumerate(entries)}
    pending: dict[str, list[str]] = {}

    def write() -> list[dict]:
        ordered = sorted(
            rows.values(),
            key=lambda r: (r["size"], r["set"], labels.get(r["method"], len(labels)), r["seed"]),  # stable over reruns
        )
        summary = _summary(ordered)
        result = {
            "command": command,
            "model": args.model,
            "toy": args.toy,
            "evaluation": {"num_images": evaluation.num_images, "oracle": args.oracle},
            "goals": {
                "retain_within_points": 100 * RETAIN_POINTS,
                "forget_within_points_of_oracle": 100 * FORGET_POINTS,
            },
            "best": _best(summary),
            "summary": summary,
            "pending": [{"set": name, "methods": methods} for name, methods in pending.items()],
            "rows": ordered,
            "versions": package_versions(),
        }
        _write(output, result)
        if summary:
            _plot(summary, plot)
        return summary

    def oracle_of(concepts: list[str]) -> Path | None:
        return find_oracle(model, concepts) if args.oracle == "auto" else None

    def run_set(concepts: list[str], oracle: Path | None, tmp: str) -> None:
        name = ",".join(concepts)
        oracle_key = model_fingerprint(oracle) if oracle else None  # hashed once per set, not per row
        for entry in entries:
            for seed in args.seeds:
                settings = entry.settings(model, seed)
                key = _key(
                    model_key,
                    concepts,
                    entry.method,
                    config_to_dict(settings.config),
                    evaluation.generation_key(),
                    oracle_key,
                )
                if rows.get((name, entry.label, seed), {}).get("settings_key") == key:
                    continue
                out = Path(tmp) / f"{entry.label}-{seed}-{len(concepts)}"
                start = time.perf_counter()
                record = erase(model, entry.method, concepts, settings, output_dir=out, overwrite=True)
                metrics = evaluate_erasure(out, replace_forget(evaluation, concepts), oracle=oracle or "none")
                row = _row(entry, seed, concepts, record, metrics, key, time.perf_counter() - start)
                rows[(name, entry.label, seed)] = row
                brief = (
                    "set",
                    "method",
                    "seed",
                    "forget_accuracy",
                    "forget_per_concept",
                    "retain_accuracy",
                    "forget_gap_to_oracle",
                    "retain_drop",
                    "erasure_seconds",
                )
                print(json.dumps({k: row[k] for k in brief}), flush=True)
                write()

    todo = list(sets)
    for concepts in todo:  # a set without its oracle is pending (the file says so while the run waits)
        if args.oracle == "auto" and oracle_of(concepts) is None:
            pending[",".join(concepts)] = [e.label for e in entries]
    if rows:
        write()  # merged rows are in the output from the start, not only after the next measured row
    deadline = time.monotonic() + 60 * args.wait_minutes
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            ready = [s for s in todo if args.oracle == "none" or oracle_of(s) is not None]
            for concepts in ready:
                todo.remove(concepts)
                pending.pop(",".join(concepts), None)
                run_set(concepts, oracle_of(concepts), tmp)
            for concepts in todo:
                pending[",".join(concepts)] = [e.label for e in entries]
            if not todo or time.monotonic() >= deadline:
                break
            if not ready:
                names = "; ".join(",".join(s) for s in todo)
                print(f"waiting for the oracles of: {names} (polling every {POLL_SECONDS} s)", flush=True)
                time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
    summary = write()
    for name in pending:
        print(f"pending (no oracle yet, not measured): {name}", flush=True)
    print(_table(summary), end="")


def replace_forget(config: EvaluationConfig, concepts: list[str]) -> EvaluationConfig:
    return dataclasses.replace(config, forget=list(concepts))


if __name__ == "__main__":
    main()
