"""The erasure goals, measured in one run of the main job (the ``demo`` pipeline) from a cold cache.

    python scripts/bench_erase.py --output bench_results/erase.json

For each method (fmn, salun, esd) erasing "seven" from the embedded tiny SD: forget accuracy against the retrain
oracle's (goal: within 10 points), retain accuracy against the original's (goal: within 3 points), erasure wall time
as a share of the oracle's training time (goals: fmn <= 2%, salun and esd <= 10%), peak memory and artifact size as a
share of the UNet (adapters <= 10%). Also the demo's total wall time (goal <= 10 minutes on 2 CPU cores, fresh
install: the reference generations of the original and the oracle are not cached yet).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from concept_erase.core.io import package_versions
from pipelines.cli import CONFIGS_DIR
from pipelines.runner import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench_results/erase.json")
    parser.add_argument("--set", nargs="*", default=[], help="pipeline overrides, as for concept-erase run")
    parser.add_argument("--keep", default=None, help="also keep the demo's output directory here (its report, grids)")
    args = parser.parse_args()
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        # a pipeline resumes what its output directory already holds: the demo would not run from scratch
        parser.error(f"--keep: {args.keep} is not empty; the demo must run from scratch to be timed: pick a new dir")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CONCEPT_ERASE_CACHE"] = str(Path(tmp) / "cache")  # cold: nothing generated yet
        out = Path(args.keep) if args.keep else Path(tmp) / "demo"
        pipeline = load_pipeline(CONFIGS_DIR / "demo.yaml", args.set, output_dir=out)
        start = time.perf_counter()
        manifest = pipeline.run(log=print)
        seconds = time.perf_counter() - start
        report = json.loads(Path(manifest["steps"]["report"]["outputs"]["report_json"]).read_text())
    keep = (
        "forget_accuracy",
        "retain_accuracy",
        "frechet_to_real",
        "original",
        "oracle",
        "seconds",
        "oracle_seconds",
        "time_share",
        "peak_memory_mb",
        "artifact_format",
        "artifact_bytes",
        "artifact_fraction",
        "goals",
    )
    result = {
        "demo_seconds": round(seconds, 1),
        "demo_goal_seconds": 600,
        "methods": {row["name"]: {k: row.get(k) for k in keep} for row in report["rows"]},
        "cpu_threads": os.cpu_count(),
        "versions": package_versions(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=2))


if __name__ == "__main__":
    main()
