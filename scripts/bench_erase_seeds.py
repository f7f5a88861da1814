"""How much the demo's erasure results depend on the erasure seed.

    python scripts/bench_erase_seeds.py --seeds 0 1 2 --output bench_results/erase_seeds.json
    python scripts/bench_erase_seeds.py --methods esd --seeds 0 --set preserve_weight=0 --output ...  # paper's ESD loss
    python scripts/bench_erase_seeds.py --defaults --seeds 0 --output ...       # every method with its paper defaults

Runs each method of the demo (``pipelines/configs/demo.yaml``, the same settings) with each seed on the embedded
tiny SD, erasing "seven", and scores it with the harness's defaults (64 images per concept, held-out paraphrases;
the oracle is not needed for these two numbers). Seed 0 is the demo itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from concept_erase.core.config import parse_overrides, read_yaml
from concept_erase.core.io import package_versions
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure
from pipelines.cli import CONFIGS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all in the demo)")
    parser.add_argument("--defaults", action="store_true", help="the methods' own (paper) defaults, not the demo's")
    parser.add_argument("--set", nargs="+", default=[], help="KEY=VALUE overrides of the method configs")
    parser.add_argument("--output", default="bench_results/erase_seeds.json")
    args = parser.parse_args()
    steps = [s for s in read_yaml(CONFIGS_DIR / "demo.yaml")["steps"] if s["step"] == "erase"]
    steps = [s for s in steps if args.methods is None or s["config"]["method"] in args.methods]
    overrides = parse_overrides(args.set)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps:
            method = step["config"]["method"]
            for seed in args.seeds:
                demo = {} if args.defaults else step["config"].get("config", {})  # the model's presets fill the rest
                config = {**demo, **overrides, "seed": seed, "show_progress": False}
                out = Path(tmp) / f"{method}-{seed}"
                model, concepts = step["config"]["model"], step["config"]["concepts"]
                record = erase(model, method, concepts, config, output_dir=out, presets=not args.defaults)
                metrics = evaluate_erasure(out, EvaluationConfig(), oracle="none")
                row = {"method": method, "seed": seed, "config": record["config"]}
                row["forget_accuracy"] = metrics["forget_accuracy"]
                row.update(retain_accuracy=metrics["retain_accuracy"], seconds=record["seconds"])
                row["original_retain_accuracy"] = metrics["original"]["retain_accuracy"]
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"rows": rows, "versions": package_versions()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
