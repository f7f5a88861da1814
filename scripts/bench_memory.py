"""Peak memory of each diffusion method on an SD 1.5-shaped pipeline on CPU, and what each memory option saves.

    python scripts/bench_memory.py --output bench_results/memory_sd15.json      # ~20 GB and minutes to hours per run
    python scripts/bench_memory.py --only "fmn lora"                            # one configuration (the cheapest)
    python scripts/bench_memory.py --toy --output /tmp/memory-toy.json          # tiny pipeline: a smoke run

The pipeline is ``scripts/_sd15.py``'s (SD 1.5's UNet, VAE and noise schedule, a CLIP-L-shaped text encoder, random
weights) at 64 px (8x8 latents). Every configuration runs ``concept_erase.diffusion.erasure.erase`` (2 training steps,
2 images per concept, 2 generation steps, no artifact written) in a fresh interpreter and records that process's peak
resident memory (``ru_maxrss``). The configurations are each method's paper setting (fmn ``train=unet``, esd
``noxattn``, salun's full-UNet mask at ``mask_ratio=0.5``) and the options that fit a consumer GPU: gradient
checkpointing (where the diffusion config has it), training a subset (fmn ``cross_attention`` /
``cross_attention_keys``, esd ``xattn``, salun with a smaller ``mask_ratio``) and LoRA (fmn ``train=lora``). The JSON
gives each option's saving against its method's paper setting, and the size of the copies the erase driver and the
methods hold (from the parameter counts: estimates, not measurements).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from _sd15 import command_line, run_isolated, run_worker_or_benchmark, save_sd15_pipeline

from concept_erase.core.io import package_versions, peak_memory_bytes
from concept_erase.core.registry import get_method
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.methods.esd import TRAIN_PATTERNS

CONCEPT = "van gogh"
COMMON = {"max_train_steps": 2, "num_images": 2, "generation_steps": 2, "retain_concepts": ["a dog", "a house"]}
# (name, method, settings, the paper configuration it is an option of; None: it is the paper's)
CONFIGURATIONS: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("fmn paper (train=unet)", "fmn", {"train": "unet"}, None),
    ("esd paper (noxattn)", "esd", {"train": "noxattn"}, None),
    ("salun paper (mask_ratio=0.5)", "salun", {"mask_ratio": 0.5}, None),
    ("fmn lora", "fmn", {"train": "lora"}, "fmn paper (train=unet)"),
    ("fmn cross_attention_keys", "fmn", {"train": "cross_attention_keys"}, "fmn paper (train=unet)"),
    ("fmn cross_attention", "fmn", {"train": "cross_attention"}, "fmn paper (train=unet)"),
    ("esd xattn", "esd", {"train": "xattn"}, "esd paper (noxattn)"),
    ("salun mask_ratio=0.1", "salun", {"mask_ratio": 0.1}, "salun paper (mask_ratio=0.5)"),
    ("fmn gradient_checkpointing", "fmn", {"train": "unet", "gradient_checkpointing": True}, "fmn paper (train=unet)"),
    ("esd gradient_checkpointing", "esd", {"train": "noxattn", "gradient_checkpointing": True}, "esd paper (noxattn)"),
    (
        "salun gradient_checkpointing",
        "salun",
        {"mask_ratio": 0.5, "gradient_checkpointing": True},
        "salun paper (mask_ratio=0.5)",
    ),
]


# ---------------------------------------------------------------------------------------------------- the workers


def erase_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One erasure (no artifact), and this process's peak RSS."""
    start = time.perf_counter()
    config = {**COMMON, **spec["settings"], "show_progress": False}
    record = erase(spec["model_dir"], spec["method"], [CONCEPT], config)
    return {
        "peak_rss_bytes": peak_memory_bytes()["cpu_peak_rss"],
        "seconds": round(time.perf_counter() - start, 1),
        "trained_parameter_count": record["trained_parameter_count"],
        "steps": record["steps"],
    }


def load_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The pipeline loaded and every weight read once (safetensors maps files lazily: unread weights are not
    resident), nothing else: the floor every erasure starts from."""
    pipe = load_pipeline(spec["model_dir"])
    for name in ("unet", "text_encoder", "vae"):
        for param in getattr(pipe, name).parameters():
            param.detach().sum()
    return {"peak_rss_bytes": peak_memory_bytes()["cpu_peak_rss"]}


def build_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build and save the pipeline at 8x8 latents (unless it exists); count the bytes each held copy is made of."""
    exists = (Path(spec["model_dir"]) / "model_index.json").is_file()
    info = {"given": True} if exists else save_sd15_pipeline(spec["model_dir"], toy=spec["toy"], latent_size=8)
    unet = load_pipeline(spec["model_dir"]).unet
    sizes = {name: p.numel() * p.element_size() for name, p in unet.named_parameters()}

    def matching(pattern: str) -> int:
        return sum(size for name, size in sizes.items() if re.search(pattern, name))

    numel = sum(p.numel() for p in unet.parameters())
    return {
        **info,
        "unet_bytes": sum(sizes.values()),
        "unet_numel": numel,
        "attn2_bytes": matching(TRAIN_PATTERNS["xattn"]),
        "noxattn_bytes": matching(TRAIN_PATTERNS["noxattn"]),
    }


WORKERS = {"build": build_worker, "load": load_worker, "erase": erase_worker}


# ---------------------------------------------------------------------------------------------------- the plan


def available(method: str, settings: dict[str, Any]) -> str | None:
    """Why a configuration cannot run here (a setting its config class does not have), or None."""
    fields = {f.name for f in dataclasses.fields(get_method(method, tag="diffusion").config_cls)}
    missing = sorted(set(settings) - fields)
    return f"not available: {method}'s config has no {', '.join(missing)}" if missing else None


def execute(args: argparse.Namespace, model_dir: str) -> dict[str, dict[str, Any]]:
    """The load-only floor, then each chosen configuration, one fresh interpreter each."""
    runs = {"load only": run_isolated(__file__, {"kind": "load", "model_dir": model_dir}, args.run_timeout_s)}
    for name, method, settings, option_of in CONFIGURATIONS:
        if args.only and name not in args.only:
            continue
        entry = {"method": method, "settings": settings, "option_of": option_of}
        reason = available(method, settings)
        if reason:
            runs[name] = {**entry, "status": reason}
            continue
        print(f"{name} ...", flush=True)
        spec = {"kind": "erase", "model_dir": model_dir, "method": method, "settings": settings}
        runs[name] = {**entry, **run_isolated(__file__, spec, args.run_timeout_s)}
    return runs


def savings(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each option's peak against its method's paper configuration (where both ran)."""
    out = {}
    for name, run in runs.items():
        paper = runs.get(run.get("option_of") or "", {})
        if run.get("status") == "ok" and paper.get("status") == "ok":
            saved = paper["peak_rss_bytes"] - run["peak_rss_bytes"]
            out[name] = {
                "against": run["option_of"],
                "saved_bytes": saved,
                "saved_fraction": round(saved / paper["peak_rss_bytes"], 4),
            }
    return out


def held_copies(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the driver and the methods keep beside the UNet, sized from its parameter counts (estimates)."""
    unet, numel = build["unet_bytes"], build["unet_numel"]
    return {
        "esd frozen teacher (a deep copy of the UNet)": {
            "bytes": unet,
            "avoidable": f"for xattn, all but the trained attn2 tensors ({build['attn2_bytes']} bytes) could be "
            f"shared with the student; for noxattn ({build['noxattn_bytes']} bytes trained) hardly",
        },
        "salun MaskApplier: frozen values at mask_ratio 0.5": {
            "bytes": unet // 2,
            "avoidable": "no: the frozen entries' original values are what it restores (more at a smaller ratio)",
        },
        "salun MaskApplier: its own ~mask per tensor (bool)": {
            "bytes": numel,
            "avoidable": "yes: the SaliencyMask already holds the mask; the complement can be taken per step",
        },
    }


def check_only(parser: argparse.ArgumentParser, only: list[str]) -> None:
    names = [c[0] for c in CONFIGURATIONS]
    for name in only:
        if name not in names:
            parser.error(f"--only: unknown configuration {name!r}; accepted values: {', '.join(names)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench_results/memory_sd15.json")
    parser.add_argument("--toy", action="store_true", help="tiny pipeline: a smoke run of every configuration")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these configurations")
    parser.add_argument("--run_timeout_s", type=float, default=3600)
    parser.add_argument("--model_dir", help="an SD 1.5-shaped pipeline saved by an earlier run (skips the build)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_only(parser, args.only)
    run_worker_or_benchmark(args, WORKERS, benchmark)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(Path(tmp) / "sd15")
        spec = {"kind": "build", "model_dir": model_dir, "toy": args.toy}
        build = run_isolated(__file__, spec, args.run_timeout_s)
        if build["status"] != "ok":
            raise SystemExit(f"building the SD 1.5-shaped pipeline failed: {build}")
        runs = execute(args, model_dir)
    return {
        "benchmark": "memory_sd15",
        "command": command_line(),
        "toy": args.toy,
        "model": {"concept": CONCEPT, "latents": "8x8 (64 px)", "erase_settings": COMMON, **build},
        "runs": runs,
        "savings": savings(runs),
        "held_copies": held_copies(build),
        "total_seconds": round(time.monotonic() - start, 1),
        "versions": package_versions(),
    }


if __name__ == "__main__":
    main()
