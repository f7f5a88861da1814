"""The embedded default's goals, measured in one run: quality of the tiny SD and its oracle, evaluation speed.

    python scripts/bench_evaluate.py --output bench_results/evaluate.json

1. Quality: the original model's mean per-concept accuracy (goal >= 90%); the shipped oracle without "seven": its
   forget accuracy next to the unseen-word baseline, and its retain accuracy against the original's (goal: within
   3 points). Held-out templates only, 64 images per concept, the harness's default settings.
2. Speed: evaluating one model on 10 concepts x 64 images (generation + judging; goal <= 60 s on 2 CPU cores), with
   a cold cache (original, oracle and unseen-word baselines generated too) and a warm one (only the model under test:
   a weights adapter that changes nothing measurable but forces generation).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from concept_erase.core.io import package_versions
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure
from concept_erase.diffusion.loading import load_pipeline, save_weights_adapter
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, RECIPE_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench_results/evaluate.json")
    parser.add_argument("--num_images", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CONCEPT_ERASE_CACHE"] = str(Path(tmp) / "cache")
        adapter = Path(tmp) / "identity.safetensors"
        weight = load_pipeline(DEFAULT_MODEL).unet.state_dict()["conv_out.bias"]
        save_weights_adapter(adapter, {"unet.conv_out.bias": torch.zeros_like(weight)}, mode="delta")
        config = EvaluationConfig(forget=["seven"], num_images=args.num_images)
        start = time.perf_counter()
        cold = evaluate_erasure(DEFAULT_MODEL, config, adapter=adapter)
        cold_seconds = time.perf_counter() - start
        start = time.perf_counter()
        warm = evaluate_erasure(DEFAULT_MODEL, config, adapter=adapter)
        warm_seconds = time.perf_counter() - start
    original, oracle = warm["original"], warm["oracle"]
    all_concepts = [original["forget_accuracy"]] + [
        v["accuracy"] for k, v in original["per_concept"].items() if k != "seven"
    ]
    result = {
        "model": str(DEFAULT_MODEL.name),
        "training_seconds": json.loads((DEFAULT_MODEL / RECIPE_FILE).read_text())["seconds"],
        "settings": warm["settings"],
        "original_mean_per_concept_accuracy": sum(all_concepts) / len(all_concepts),
        "original_per_concept_accuracy": {k: v["accuracy"] for k, v in original["per_concept"].items()},
        "original_forget_accuracy": original["forget_accuracy"],
        "original_retain_accuracy": original["retain_accuracy"],
        "oracle_forget_accuracy": oracle["forget_accuracy"],
        "oracle_retain_accuracy": oracle["retain_accuracy"],
        "retain_drop_points": 100 * (original["retain_accuracy"] - oracle["retain_accuracy"]),
        "unseen_word_baseline": warm["unseen_word_baseline"],
        "frechet_to_real": {"original": original["frechet_to_real"], "oracle": oracle["frechet_to_real"]},
        "images_per_model": warm["images_per_model"],
        "cold_cache_seconds": round(cold_seconds, 2),
        "warm_cache_seconds": round(warm_seconds, 2),
        "warm_generation_seconds": warm["generation_seconds"],
        "cold_equals_warm": cold["per_concept"] == warm["per_concept"],
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings", "versions")}, indent=2))


if __name__ == "__main__":
    main()
