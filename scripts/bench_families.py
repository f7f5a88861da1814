"""Each diffusion method on each family of the embedded tiny model: erasing "seven" from an epsilon SD, a
v-prediction SD and an SDXL-architecture model trained with the same recipe.

    python scripts/bench_families.py                                    # tiny-sd, tiny-sd-v, tiny-sdxl x fmn, salun, esd
    python scripts/bench_families.py --models tiny-sd-v --methods esd --num_images 16
    python scripts/bench_families.py --toy --output /tmp/families.json  # random weights, 1 step, 2 images: seconds

Every erasure uses the demo's settings (``pipelines/configs/demo.yaml``): where the embedded model ships
``erasure_presets.json`` the demo leaves the settings to it, so each model's own presets apply (the variants carry a
copy of the epsilon model's). Each erased model is scored as the demo scores it (64 images per concept from the
held-out paraphrases, the digit judge; no oracle: the variants have none shipped), next to its original's own
per-concept accuracy. Writes ``--output`` (JSON) and a markdown table beside it (``.md``). A method that refuses a
model (an unsupported family, say) or fails on it is a row with its error, not a crash.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from concept_erase.core.config import read_yaml
from concept_erase.core.io import package_versions, write_json
from concept_erase.core.readers import read_json_object
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure
from concept_erase.diffusion.presets import PRESETS_FILE
from concept_erase.diffusion.tiny_sd import (
    DEFAULT_MODEL,
    TinySDConfig,
    build_pipeline,
    resolve_model,
    save_pipeline,
)
from pipelines.cli import CONFIGS_DIR

MODELS = ("tiny-sd", "tiny-sd-v", "tiny-sdxl")
METHODS = ("fmn", "salun", "esd")
CONCEPT = "seven"
# --toy: random-weight models of each variant (build_pipeline), one training step, one image per concept
TOY_MODELS = {"tiny-sd": {}, "tiny-sd-v": {"prediction_type": "v_prediction"}, "tiny-sdxl": {"family": "sdxl"}}
TOY_SETTINGS = {"max_train_steps": 1, "num_images": 1, "generation_steps": 1, "retain_concepts": ["one"]}
TOY_METHOD_SETTINGS = {"fmn": {"textual_inversion_steps": 1}}


def demo_settings() -> dict[str, dict[str, Any] | None]:
    """Per method, the demo's erasure settings: None (the model's presets apply) when the embedded model ships
    presets, else the demo step's own ``config``."""
    steps = [s["config"] for s in read_yaml(CONFIGS_DIR / "demo.yaml")["steps"] if s["step"] == "erase"]
    presets = (DEFAULT_MODEL / PRESETS_FILE).is_file()
    return {step["method"]: None if presets else dict(step.get("config") or {}) for step in steps}


def toy_models(directory: Path, names: list[str]) -> dict[str, Path]:
    """Random-weight pipelines of the named variants, saved under ``directory``."""
    paths = {}
    for name in names:
        paths[name] = directory / name
        save_pipeline(build_pipeline(TinySDConfig(**TOY_MODELS[name])), paths[name])
    return paths


def describe(path: str | Path, original: dict[str, Any]) -> dict[str, Any]:
    """The original model's pipeline class and prediction type (read from its directory) and its own accuracy,
    per concept."""
    index = read_json_object(Path(path) / "model_index.json", "model index")
    scheduler = read_json_object(Path(path) / "scheduler" / "scheduler_config.json", "scheduler config")
    return {
        "path": str(path),
        "pipeline": index.get("_class_name"),
        "prediction_type": scheduler.get("prediction_type", "epsilon"),
        "forget_accuracy": original["forget_accuracy"],
        "retain_accuracy": original["retain_accuracy"],
        "per_concept": {c: entry["accuracy"] for c, entry in original["per_concept"].items()},
    }


def bench_method(name: str, path: Path, method: str, settings: dict | None, evaluation, work: Path) -> dict:
    """One erasure of ``CONCEPT`` and its scores; an exception becomes the row's ``error`` (its class and line)."""
    row: dict[str, Any] = {"model": name, "method": method}
    start = time.perf_counter()
    try:
        record = erase(path, method, [CONCEPT], settings, output_dir=work / f"{name}-{method}")
        metrics = evaluate_erasure(work / f"{name}-{method}", evaluation, oracle="none")
    except Exception as exc:  # a refusal (or a failure) is this row's result: the other rows still run
        return {**row, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - start, 1)}
    row.update(forget_accuracy=metrics["forget_accuracy"], retain_accuracy=metrics["retain_accuracy"])
    row.update(
        original_forget_accuracy=metrics["original"]["forget_accuracy"],
        original_retain_accuracy=metrics["original"]["retain_accuracy"],
        seconds=record["seconds"],
        config=record["config"],
        config_sources=record.get("config_sources"),
    )
    return row


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def markdown(models: dict[str, dict], rows: list[dict]) -> str:
    """The results as a markdown table, one row per erasure."""
    lines = [
        f'Erasing "{CONCEPT}" (forget %: its images judged {CONCEPT}; retain %: the other digits judged right)',
        "",
        "| model | method | forget % | retain % | original forget % | original retain % | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        original = models[row["model"]]
        if "error" in row:
            cells = [row["model"], row["method"], f"error: {row['error']}", "", "", "", ""]
        else:
            cells = [row["model"], row["method"], _percent(row["forget_accuracy"]), _percent(row["retain_accuracy"])]
            cells += [_percent(original["forget_accuracy"]), _percent(original["retain_accuracy"])]
            cells.append(f"{row['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(output: Path, result: dict[str, Any]) -> None:
    """``output`` (JSON) and the markdown table beside it, rewritten after every row (a long run keeps its rows)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result)
    output.with_suffix(".md").write_text(markdown(result["models"], result["rows"]))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    num_images = args.num_images or (2 if args.toy else 64)
    extra = {"num_inference_steps": 1, "grid_seeds": 2} if args.toy else {}
    evaluation = EvaluationConfig(forget=[CONCEPT], num_images=num_images, **extra)
    paths = toy_models(work / "models", args.models) if args.toy else {name: name for name in args.models}
    demo = demo_settings()
    models, rows = {}, []
    result = {"concept": CONCEPT, "num_images": num_images, "toy": args.toy, "complete": False}
    result.update(models=models, rows=rows, versions=package_versions())
    for name, path in paths.items():
        original = evaluate_erasure(path, evaluation, oracle="none")  # the original alone: its own accuracy
        models[name] = describe(resolve_model(path), original)
        for method in args.methods:
            settings = {**(demo.get(method) or {}), "show_progress": False}  # (a user key over the presets)
            if args.toy:
                settings.update(TOY_SETTINGS, **TOY_METHOD_SETTINGS.get(method, {}))
            rows.append(bench_method(name, Path(path), method, settings, evaluation, work))
            print({k: v for k, v in rows[-1].items() if k not in ("config", "config_sources")}, flush=True)
            write(Path(args.output), result)
    result["complete"] = True
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="shipped asset names or model directories")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--num_images", type=int, default=None, help="images per concept (default 64; --toy: 2)")
    parser.add_argument("--output", default="bench_results/families.json")
    parser.add_argument("--toy", action="store_true", help="random-weight models, one step, two images (smoke test)")
    args = parser.parse_args()
    if args.toy and set(args.models) - set(TOY_MODELS):
        parser.error(f"--toy builds only {', '.join(TOY_MODELS)}; got {', '.join(args.models)}")
    if args.num_images is not None and args.num_images < 1:
        parser.error(f"--num_images must be >= 1, got {args.num_images}")
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(args.output), run(args, Path(tmp)))
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.md')}")


if __name__ == "__main__":
    main()
