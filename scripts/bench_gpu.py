"""Step time and peak GPU memory of each diffusion method on an SD 1.5-shaped pipeline at 512 px (random weights).

    python scripts/bench_gpu.py --output bench_results/gpu.json     # one GPU, about 6 minutes (--budget_s 420)
    python scripts/bench_gpu.py --toy --output /tmp/gpu-toy.json    # tiny pipeline, CPU, 1 step: a smoke run

The pipeline (``scripts/_sd15.py``: SD 1.5's UNet, VAE and noise schedule, a CLIP-L-shaped text encoder) is built
once and saved to a temporary directory; then every measurement runs in a fresh interpreter, so its peak memory
(``torch.cuda.max_memory_allocated``) is its own. In order of importance:

1. ``steps``: each method (fmn, esd, salun; uce if it is registered) with its paper's training settings at 64x64
   latents, in fp32, with SDPA attention (and later in bf16 mixed precision, and with xformers: recorded as
   ``not installed`` when it cannot be imported). A warm-up call of one step comes first; the figures are the second
   call's: seconds per optimizer step and the peak allocation over that call (the pipeline's own weights included;
   SalUn reuses the warm-up's saliency mask so that its figure is training only).
2. ``fmn_end_to_end``: FMN's paper run (35 steps, every UNet weight) through ``concept_erase.diffusion.erasure.erase``
   with the artifact written, against its authors' "about 30 s".
3. ``salun_saliency``: SalUn's saliency mask over the full UNet (8 forget images, one batch of 8), seconds and peak
   memory, against the 17-31 GB that users report for SalUn's mask generation on SD.
4. ``steps`` in bf16, then in fp32 with ``gradient_checkpointing`` (where the method's config has it), then the
   xformers runs.

Each run has a timeout (``--run_timeout_s``) and all of them share ``--budget_s``; a run that no longer fits is
recorded as skipped for time. The JSON names the device, the torch / diffusers versions and the exact command.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _sd15 import command_line, registered, run_isolated, run_worker_or_benchmark, save_sd15_pipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from concept_erase.core.io import package_versions, peak_memory_bytes
from concept_erase.core.registry import get_method
from concept_erase.diffusion.base import GENERIC_TEMPLATES, ErasureRequest, concept_data
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.methods.salun import saliency_mask

CONCEPT = "van gogh"
RETAIN = ["a dog", "a house"]
FMN_AUTHORS_SECONDS = 30  # FMN README: "as few as 35 optimization steps, which typically takes about 30 seconds"
SALUN_PUBLIC_GB = (17, 31)  # reported peak memory of SalUn's SD mask generation
METHODS = ("fmn", "esd", "salun", "uce")
# Per method: images generated per concept (SalUn's paper batch is 8) and what makes the run its paper's setting.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "fmn": {"num_images": 1, "train": "unet"},
    "esd": {"num_images": 1, "train": "noxattn"},
    "salun": {"num_images": 8, "mask_ratio": 0.5},
    "uce": {"num_images": 1},
}


# ---------------------------------------------------------------------------------------------------- the workers


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_figures() -> dict[str, Any]:
    """Peak GPU allocation since the last reset (None on CPU) and the process's peak RSS."""
    gpu = torch.cuda.is_available()
    return {
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()) if gpu else None,
        "peak_gpu_reserved_bytes": int(torch.cuda.max_memory_reserved()) if gpu else None,
        "peak_rss_bytes": peak_memory_bytes()["cpu_peak_rss"],
    }


def reset_peak() -> None:
    """Free what earlier calls left (a trainer and its closure form a cycle) and restart the peak count."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def make_request(model_dir: str, attention: str) -> ErasureRequest:
    """The pipeline on the device with every attention layer on ``attention`` (sdpa | xformers)."""
    pipe = load_pipeline(model_dir, device=str(device()))
    if attention == "xformers":
        pipe.unet.enable_xformers_memory_efficient_attention()
    else:
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    return ErasureRequest(pipe, [CONCEPT], "sd15-random", list(RETAIN), list(GENERIC_TEMPLATES), device())


def config_fields(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_method(method, tag="diffusion").config_cls)}


def method_config(method: str, values: dict[str, Any]):
    """The method's config with ``values``, keeping only the fields its config class has (uce's may differ)."""
    entry, fields = get_method(method, tag="diffusion"), config_fields(method)
    return entry, entry.make_config({k: v for k, v in values.items() if k in fields})


def steps_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """A one-step warm-up call, then ``spec['steps']`` steps measured (time per step, peak memory of the call)."""
    request = make_request(spec["model_dir"], spec["attention"])
    settings = {
        **PAPER_SETTINGS[spec["method"]],
        "generation_steps": 2,
        "mixed_precision": "bf16" if spec["precision"] == "bf16" else "no",
        "attention_backend": spec["attention"],
        "gradient_checkpointing": spec.get("gradient_checkpointing", False),
        "show_progress": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        mask = str(Path(tmp) / "mask.safetensors")
        entry, warm = method_config(spec["method"], {**settings, "max_train_steps": 1, "save_mask_path": mask})
        entry.target(request, warm)
        reset_peak()
        _, config = method_config(spec["method"], {**settings, "max_train_steps": spec["steps"], "mask_path": mask})
        start = time.perf_counter()
        outcome = entry.target(request, config)
        seconds = time.perf_counter() - start
    result = outcome.train_result
    return {
        "steps": result.global_step,
        "step_seconds": round(result.seconds / result.global_step, 4) if result.global_step else None,
        "method_seconds": round(seconds, 2),
        "trained_tensors": len(result.trained_parameters),
        "batch_images": getattr(config, "train_batch_size", None),
        **memory_figures(),
    }


def end_to_end_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """FMN's paper run through the driver (``erase``): load, generate, train, write the artifact."""
    settings = {"show_progress": False, "retain_concepts": list(RETAIN), "templates": list(GENERIC_TEMPLATES)}
    if spec["toy"]:
        settings.update(max_train_steps=1, num_images=1, generation_steps=1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = erase(spec["model_dir"], "fmn", [CONCEPT], settings, output_dir=Path(tmp) / "fmn")
        seconds = time.perf_counter() - start
    return {
        "erase_seconds": round(seconds, 2),
        "method_seconds": record["seconds"],
        "train_seconds": record["train_seconds"],
        "steps": record["steps"],
        "num_images": record["config"]["num_images"],
        "generation_steps": record["config"]["generation_steps"],
        "artifact": record["artifact"]["format"],
        "authors_seconds": FMN_AUTHORS_SECONDS,
        **memory_figures(),
    }


def saliency_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """SalUn's mask over every UNet weight from one batch of its forget images (fp32, as the paper computes it)."""
    request = make_request(spec["model_dir"], "sdpa")
    _, config = method_config("salun", {**PAPER_SETTINGS["salun"], "generation_steps": 2, "show_progress": False})
    forget = concept_data(request, request.concepts, config, desc="forget images")
    reset_peak()
    start = time.perf_counter()
    mask = saliency_mask(request, config, forget)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "forget_images": len(forget.prompts),
        "fraction_kept": mask.summary()["fraction_kept"],
        "public_gb": list(SALUN_PUBLIC_GB),
        **memory_figures(),
    }


def build_worker(spec: dict[str, Any]) -> dict[str, Any]:
    return save_sd15_pipeline(spec["model_dir"], toy=spec["toy"], device=str(device()))


WORKERS = {
    "build": build_worker,
    "steps": steps_worker,
    "fmn_end_to_end": end_to_end_worker,
    "salun_saliency": saliency_worker,
}


# ---------------------------------------------------------------------------------------------------- the plan


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run, most important first: fp32 steps, FMN end to end, SalUn's saliency, bf16 steps, fp32 steps with
    gradient checkpointing (where the method's config has it), then xformers."""
    methods = [m for m in args.methods if registered(m)]  # uce only where a plug-in registers it
    steps = 1 if args.toy else args.steps

    def step_runs(precision: str, attention: str, checkpointing: bool = False) -> list[dict[str, Any]]:
        if precision not in args.precisions or attention not in args.attention:
            return []
        common = {"kind": "steps", "precision": precision, "attention": attention, "steps": steps}
        if checkpointing:
            common["gradient_checkpointing"] = True
            chosen = [m for m in methods if "gradient_checkpointing" in config_fields(m)]
        else:
            chosen = methods
        tail = " gradient_checkpointing" if checkpointing else ""
        return [{**common, "name": f"{m} {precision} {attention}{tail}", "method": m} for m in chosen]

    runs = step_runs("fp32", "sdpa")
    if "fmn" in methods:
        runs.append({"kind": "fmn_end_to_end", "name": "fmn 35 steps end to end"})
    if "salun" in methods:
        runs.append({"kind": "salun_saliency", "name": "salun saliency mask"})
    runs += step_runs("bf16", "sdpa") + step_runs("fp32", "sdpa", checkpointing=True)
    return runs + step_runs("fp32", "xformers") + step_runs("bf16", "xformers")


def execute(runs: list[dict[str, Any]], args: argparse.Namespace, model_dir: str, deadline: float) -> list[dict]:
    """Each run in its own interpreter within the remaining budget; xformers runs without the package are not run."""
    xformers = importlib.util.find_spec("xformers") is not None
    done = []
    for run in runs:
        spec = {**run, "model_dir": model_dir, "toy": args.toy}
        left = deadline - time.monotonic()
        if run.get("attention") == "xformers" and not xformers:
            done.append({**run, "status": "not installed"})
        elif left < args.min_run_s:
            done.append({**run, "status": "skipped for time"})
        else:
            print(f"[{left:5.0f} s left] {run['name']}", flush=True)
            done.append({**run, **run_isolated(__file__, spec, min(args.run_timeout_s, left))})
    return done


def comparisons(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The two published figures next to ours (None where the run did not complete)."""
    by_kind = {r["kind"]: r for r in runs if r.get("status") == "ok"}
    fmn, sal = by_kind.get("fmn_end_to_end"), by_kind.get("salun_saliency")
    gpu = sal.get("peak_gpu_bytes") if sal else None
    return {
        "fmn_end_to_end_seconds": fmn["erase_seconds"] if fmn else None,
        "fmn_authors_seconds": FMN_AUTHORS_SECONDS,
        "salun_saliency_peak_gb": round(gpu / 1e9, 2) if gpu else None,
        "salun_public_peak_gb": list(SALUN_PUBLIC_GB),
    }


def check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One line naming the accepted values for a bad --methods, --precisions or --attention entry."""
    for flag, accepted in (("methods", METHODS), ("precisions", ("fp32", "bf16")), ("attention", ("sdpa", "xformers"))):
        bad = [v for v in getattr(args, flag) if v not in accepted]
        if bad:
            parser.error(f"--{flag}: invalid value {bad[0]!r}; accepted values: {', '.join(accepted)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench_results/gpu.json")
    parser.add_argument("--toy", action="store_true", help="tiny pipeline, 1 step: a smoke run (CPU is fine)")
    parser.add_argument("--budget_s", type=float, default=420, help="all runs together, pipeline build included")
    parser.add_argument("--run_timeout_s", type=float, default=150)
    parser.add_argument("--min_run_s", type=float, default=25, help="a run is skipped when less than this is left")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per run (after one warm-up)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16"])
    parser.add_argument("--attention", type=lambda s: s.split(","), default=["sdpa", "xformers"])
    parser.add_argument("--model_dir", help="an SD 1.5-shaped pipeline saved by an earlier run (skips the build)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_choices(parser, args)
    run_worker_or_benchmark(args, WORKERS, benchmark)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + args.budget_s
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(Path(tmp) / "sd15")
        spec = {"kind": "build", "model_dir": model_dir, "toy": args.toy}
        build = run_isolated(__file__, spec, args.run_timeout_s) if not args.model_dir else {"status": "given"}
        if build["status"] not in ("ok", "given"):
            raise SystemExit(f"building the SD 1.5-shaped pipeline failed: {build}")
        runs = execute(plan(args), args, model_dir, deadline)
    return {
        "benchmark": "gpu",
        "command": command_line(),
        "toy": args.toy,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cuda": torch.version.cuda,
        "methods_not_registered": [m for m in args.methods if not registered(m)],
        "model": {"concept": CONCEPT, "latents": "8x8" if args.toy else "64x64 (512 px)", **build},
        "budget_s": args.budget_s,
        "runs": runs,
        "skipped_for_time": [r["name"] for r in runs if r["status"] in ("skipped for time", "timeout")],
        "comparisons": comparisons(runs),
        "total_seconds": round(time.monotonic() - start, 1),
        "versions": package_versions(),
    }


if __name__ == "__main__":
    main()
