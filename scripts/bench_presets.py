"""The embedded tiny SD's erasure presets, measured on every digit: do they meet the demo's goals for each one?

    OMP_NUM_THREADS=2 nice python scripts/bench_presets.py                        # all digits and methods (~1 h)
    python scripts/bench_presets.py --digits seven --methods fmn                   # one pair
    python scripts/bench_presets.py --methods esd --set max_train_steps=150 --output bench_results/presets_esd150.json
    python scripts/bench_presets.py --toy --digits one --methods esd --output /tmp/toy.json   # smoke test (seconds)

For each digit (zero..nine) and method it erases the digit from the model with the model's presets
(``erasure_presets.json``; ``--set`` keys override them, as a user's would) and scores the erasure with the harness
(``--num_images`` per concept from the held-out paraphrases, the digit judge, no oracle). A pair meets the goal when
its forget accuracy is at most 10% and its retain accuracy is within 3 points of the original's. Writes ``--output``
(JSON) and the per-digit table beside it (``.md``) after every pair; a rerun resumes, redoing only the pairs whose
settings changed (a method's preset, ``--set``, ``--num_images``, ``--toy``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

from concept_erase.core.config import config_to_dict, parse_overrides
from concept_erase.core.digits import CONCEPTS
from concept_erase.core.io import package_versions, write_json
from concept_erase.core.readers import read_json_object
from concept_erase.core.registry import get_method
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, model_fingerprint
from concept_erase.diffusion.presets import resolve_settings
from concept_erase.diffusion.tiny_sd import resolve_model

METHODS = ("fmn", "salun", "esd")
FORGET_GOAL = 0.10  # forget accuracy at most this
RETAIN_GOAL = 0.03  # retain accuracy at most this far below the original's
# --toy: the smallest erasure and evaluation that still run every part (seconds on one CPU thread)
TOY_ERASE = {"max_train_steps": 2, "num_images": 2, "generation_steps": 2, "textual_inversion_steps": 2}
TOY_EVALUATION = {"num_images": 2, "num_inference_steps": 2, "grid_seeds": 1}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", nargs="+", default=list(CONCEPTS), choices=CONCEPTS, help="default: all ten")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="default: all three")
    parser.add_argument("--model", default="tiny-sd", help="the model whose presets are measured (default: tiny-sd)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="method config keys over presets")
    parser.add_argument("--num_images", type=int, default=64, help="evaluation images per concept (default 64)")
    parser.add_argument("--toy", action="store_true", help="tiny erasures and evaluations: a smoke test")
    parser.add_argument("--output", default="bench_results/presets.json")
    return parser.parse_args()


def _user_keys(method: str, args: argparse.Namespace) -> dict:
    """The keys given over the presets: ``--set``, and with ``--toy`` the toy sizes the method's config has."""
    fields = {f.name for f in dataclasses.fields(get_method(method, tag="diffusion").config_cls)}
    toy = {k: v for k, v in TOY_ERASE.items() if k in fields} if args.toy else {}
    return {**toy, **parse_overrides(args.set), "show_progress": False}


def _settings_key(config: dict, evaluation: EvaluationConfig, model_key: str) -> str:
    """What a pair's result depends on: the model's content, the resolved method config and the evaluation settings
    (a retrained model under the same name is measured again, not resumed)."""
    blob = json.dumps([model_key, config, evaluation.generation_key()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _measure(model, digit: str, method: str, user: dict, evaluation: EvaluationConfig, tmp: Path) -> dict:
    """Erase ``digit`` with ``method`` and score it: one row of the table."""
    out = tmp / f"{method}-{digit}"
    start = time.perf_counter()
    record = erase(model, method, [digit], user, output_dir=out, overwrite=True)
    metrics = evaluate_erasure(out, evaluation, oracle="none")
    original = metrics["original"]
    forget, retain = metrics["forget_accuracy"], metrics["retain_accuracy"]
    met = forget <= FORGET_GOAL and retain >= original["retain_accuracy"] - RETAIN_GOAL
    return {
        "digit": digit,
        "method": method,
        "forget_accuracy": forget,
        "retain_accuracy": retain,
        "original_forget_accuracy": original["forget_accuracy"],
        "original_retain_accuracy": original["retain_accuracy"],
        "goal_met": bool(met),
        "erase_seconds": record["seconds"],
        "seconds": round(time.perf_counter() - start, 1),
        "evaluation_images": evaluation.num_images,
        "user_keys": user,
        "config": record["config"],
        "config_sources": record["config_sources"],
    }


def _table(rows: list[dict]) -> str:
    """The per-digit markdown table, then each method's count of digits that met the goal."""
    lines = [
        "| digit | method | forget % | retain % | original forget % | original retain % | goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        values = [r[k] * 100 for k in ("forget_accuracy", "retain_accuracy", "original_forget_accuracy")]
        values.append(r["original_retain_accuracy"] * 100)
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {r['digit']} | {r['method']} | {cells} | {'yes' if r['goal_met'] else '**no**'} |")
    lines.append("")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        missed = [r["digit"] for r in mine if not r["goal_met"]]
        tail = f" (missed: {', '.join(missed)})" if missed else ""
        lines.append(f"- `{method}`: goal met on {len(mine) - len(missed)} of {len(mine)} digits{tail}")
    goal = f"forget <= {FORGET_GOAL:.0%} and retain within {RETAIN_GOAL * 100:.0f} points of the original's"
    return "\n".join(lines) + f"\n\nGoal: {goal}.\n"


def _write(output: Path, rows: dict, args: argparse.Namespace) -> None:
    ordered = sorted(rows.values(), key=lambda r: (CONCEPTS.index(r["digit"]), METHODS.index(r["method"])))
    result = {
        "model": args.model,
        "num_images": args.num_images,
        "toy": args.toy,
        "overrides": args.set,
        "goal": {"forget_at_most": FORGET_GOAL, "retain_below_original_at_most": RETAIN_GOAL},
        "rows": ordered,
        "versions": package_versions(),
    }
    write_json(output, result)
    output.with_suffix(".md").write_text(_table(ordered))


def main() -> None:
    args = _parse()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_json_object(output, "bench result")["rows"] if output.is_file() else []
    rows = {(r["digit"], r["method"]): r for r in done}
    model = resolve_model(args.model)
    model_key = model_fingerprint(model)
    toy = TOY_EVALUATION if args.toy else {}
    with tempfile.TemporaryDirectory() as tmp:
        for digit in args.digits:
            evaluation = EvaluationConfig(forget=[digit], **{"num_images": args.num_images, **toy})
            for method in args.methods:
                user = _user_keys(method, args)
                config = resolve_settings(get_method(method, tag="diffusion"), model, user).config
                key = _settings_key(config_to_dict(config), evaluation, model_key)
                if rows.get((digit, method), {}).get("settings_key") == key:
                    continue
                row = {**_measure(model, digit, method, user, evaluation, Path(tmp)), "settings_key": key}
                rows[(digit, method)] = row
                print(json.dumps({k: v for k, v in row.items() if "config" not in k and k != "user_keys"}), flush=True)
                _write(output, rows, args)
    _write(output, rows, args)


if __name__ == "__main__":
    main()
