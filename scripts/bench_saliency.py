"""Memory and time of SalUn saliency on a Stable Diffusion 1.5-sized UNet (random weights, CPU, no download).

Each measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is clean:

- ``model_only``: build the UNet;
- ``baseline``: build the UNet and run a plain forward + backward over the batches (gradients kept, as in training);
- ``saliency``: build the UNet, ``compute_saliency`` over the same batches, global top-``ratio`` threshold (radix
  select), save the bit-packed mask.

The figure of merit is ``extra = peak(saliency) - peak(baseline)`` over the parameter bytes (goal <= 1.5), and the
saved mask's size over ``num_params / 8`` bytes (goal about 1.0). A full ``torch.sort`` of all scores is only
estimated (values + int64 indices = 12 bytes per weight), never run.

    python scripts/bench_saliency.py --output bench_results/saliency.json
    python scripts/bench_saliency.py --small            # tiny UNet, seconds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _sd15 import SD15_UNET

from concept_erase.core.io import package_versions, write_json
from concept_erase.core.saliency import SaliencyMask, compute_saliency

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "cross_attention_dim": 8,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
WORKERS = ("model_only", "baseline", "saliency")


def build_unet(small: bool):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**(TINY_UNET if small else SD15_UNET))


def make_batches(model, count: int, latent_size: int, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    batches = []
    for _ in range(count):
        latents = torch.randn(batch_size, cfg.in_channels, latent_size, latent_size, generator=g)
        text = torch.randn(batch_size, 77, cfg.cross_attention_dim, generator=g)
        timesteps = torch.randint(0, 1000, (batch_size,), generator=g)
        batches.append((latents, timesteps, text, torch.randn(latents.shape, generator=g)))
    return batches


def denoising_loss(model, batch) -> torch.Tensor:
    latents, timesteps, text, noise = batch
    return torch.nn.functional.mse_loss(model(latents, timesteps, encoder_hidden_states=text).sample, noise)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_worker(kind: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    model = build_unet(args.small)
    out: dict = {"kind": kind, "build_seconds": round(time.perf_counter() - start, 3)}
    out["num_params"] = sum(p.numel() for p in model.parameters())
    out["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = make_batches(model, args.batches, args.latent_size, args.batch_size)
    if kind == "baseline":
        start = time.perf_counter()
        for batch in batches:
            denoising_loss(model, batch).backward()
        out["forward_backward_seconds"] = round(time.perf_counter() - start, 3)
    elif kind == "saliency":
        out.update(saliency_steps(model, batches, args.ratio))
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def saliency_steps(model, batches, ratio: float) -> dict:
    timer = time.perf_counter
    start = timer()
    scores = compute_saliency(model, batches, denoising_loss, show_progress=False)
    t_saliency = timer()
    mask = SaliencyMask.from_scores(scores, ratio=ratio, mode="global", loss_name="denoising_mse")
    t_threshold = timer()
    del scores
    with tempfile.TemporaryDirectory() as tmp:
        path = mask.save(Path(tmp) / "mask.safetensors")
        t_save = timer()
        file_bytes = path.stat().st_size
    stats = mask.summary()
    return {
        "saliency_seconds": round(t_saliency - start, 3),
        "threshold_seconds": round(t_threshold - t_saliency, 3),
        "save_seconds": round(t_save - t_threshold, 3),
        "threshold": mask.metadata["threshold"],
        "kept": stats["kept"],
        "fraction_kept": stats["fraction_kept"],
        "mask_file_bytes": file_bytes,
        "mask_data_bytes": sum((m.numel() + 7) // 8 for m in mask.masks.values()),
        "num_tensors": len(mask),
    }


def measure_all(args: argparse.Namespace) -> dict[str, dict]:
    """Run each worker in a fresh interpreter (one after the other; all at once with --small) and collect results."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: Path(tmp) / f"{kind}.json" for kind in WORKERS}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if args.small else {})}
        procs = []
        for kind, result in results.items():
            command = [sys.executable, __file__, "--_worker", kind, "--_result", str(result), *worker_flags(args)]
            procs.append(subprocess.Popen(command, env=env))
            if not args.small:  # sequential: the machine's memory and cores go to one measurement at a time
                procs[-1].wait()
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"benchmark worker {proc.args[3]} failed with status {proc.returncode}")
        return {kind: json.loads(result.read_text()) for kind, result in results.items()}


def worker_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--batches", str(args.batches), "--latent-size", str(args.latent_size)]
    flags += ["--batch-size", str(args.batch_size), "--ratio", str(args.ratio)]
    return flags + (["--small"] if args.small else [])


def summarize(runs: dict[str, dict], args: argparse.Namespace) -> dict:
    sal, base, alone = runs["saliency"], runs["baseline"], runs["model_only"]
    numel, param_bytes = sal["num_params"], sal["param_bytes"]
    extra = sal["peak_rss_bytes"] - base["peak_rss_bytes"]
    return {
        "benchmark": "saliency",
        "model": "tiny-unet" if args.small else "sd15-unet",
        "num_params": numel,
        "param_bytes": param_bytes,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "latent_size": args.latent_size,
        "ratio": args.ratio,
        "peak_rss_bytes": {kind: run["peak_rss_bytes"] for kind, run in runs.items()},
        "extra_bytes": extra,
        "extra_over_param_bytes": round(extra / param_bytes, 4),
        "goal_extra_over_param_bytes": 1.5,
        "saliency_over_model_only_over_param_bytes": round(
            (sal["peak_rss_bytes"] - alone["peak_rss_bytes"]) / param_bytes, 4
        ),
        "seconds": {
            "build_model": sal["build_seconds"],
            "baseline_forward_backward": base["forward_backward_seconds"],
            "saliency": sal["saliency_seconds"],
            "threshold": sal["threshold_seconds"],
            "save_mask": sal["save_seconds"],
        },
        "threshold": sal["threshold"],
        "kept": sal["kept"],
        "fraction_kept": sal["fraction_kept"],
        "mask_file_bytes": sal["mask_file_bytes"],
        "mask_file_over_numel_div_8": round(sal["mask_file_bytes"] / (numel / 8), 5),
        "mask_data_over_numel_div_8": round(sal["mask_data_bytes"] / (numel / 8), 5),
        "full_sort_estimate_bytes": numel * (4 + 8),
        "full_sort_estimate_over_param_bytes": round(numel * 12 / param_bytes, 4),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


def print_summary(res: dict) -> None:
    gib = 1 << 30
    print(f"model {res['model']}: {res['num_params']:,} params, {res['param_bytes'] / gib:.3f} GiB")
    for kind, value in res["peak_rss_bytes"].items():
        print(f"  peak RSS {kind:<10} {value / gib:8.3f} GiB")
    print(
        f"  extra (saliency - baseline) {res['extra_bytes'] / gib:.3f} GiB = {res['extra_over_param_bytes']:.3f}x params"
    )
    secs = res["seconds"]
    print(f"  saliency {secs['saliency']:.2f}s  threshold {secs['threshold']:.2f}s  save {secs['save_mask']:.2f}s")
    print(f"  mask file {res['mask_file_bytes']:,} bytes = {res['mask_file_over_numel_div_8']:.4f}x numel/8")
    print(f"  a full sort would need ~{res['full_sort_estimate_bytes'] / gib:.2f} GiB (estimate, not run)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench_results/saliency.json")
    parser.add_argument("--small", action="store_true", help="a tiny UNet: a quick smoke run")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--latent-size", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--_worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args._worker:
        result = run_worker(args._worker, args)
        Path(args._result).write_text(json.dumps(result))
        return result
    runs = measure_all(args)
    res = summarize(runs, args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, res)
    print_summary(res)
    return res


if __name__ == "__main__":
    main()
