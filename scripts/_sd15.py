"""What the SD 1.5 benchmarks share (``bench_gpu.py``, ``bench_memory.py``; ``bench_saliency.py`` its UNet config):
the SD 1.5-shaped pipeline with random weights, and running each measurement in a fresh interpreter so that its peak
memory is its own.

The pipeline is a real ``StableDiffusionPipeline`` built from Stable Diffusion 1.5's component configs
(runwayml/stable-diffusion-v1-5: ``unet/config.json``, ``vae/config.json``, ``scheduler/scheduler_config.json``) and a
CLIP-L-shaped text encoder, with random weights: nothing is downloaded. The tokenizer is the toolkit's own small BPE
vocabulary (any ASCII text is representable) with SD's 77-token context; the vocabulary is small, so the text
encoder's embedding table is smaller than CLIP-L's (about 1 MB instead of 152 MB), which changes no UNet figure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from concept_erase.core.io import write_json
from concept_erase.core.registry import list_methods
from concept_erase.diffusion.loading import pipeline_class
from concept_erase.diffusion.tiny_sd import build_tokenizer, save_pipeline

SD15_UNET = {  # the Stable Diffusion 1.5 UNet's config (runwayml/stable-diffusion-v1-5, unet/config.json)
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
SD15_TEXT = {  # CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14)
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 512,
}
SD15_SCHEDULER = {  # SD 1.5's noise schedule (it ships a PNDM scheduler with these betas; DDIM samples with them)
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
TOY = {  # the same architecture families at the smallest sizes that run: for smoke tests
    "unet": {
        **SD15_UNET,
        "sample_size": 8,
        "block_out_channels": (8, 16, 16, 16),
        "layers_per_block": 1,
        "cross_attention_dim": 16,
        "attention_head_dim": 2,
        "norm_num_groups": 4,
    },
    "text": {**SD15_TEXT, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "vae": {**SD15_VAE, "block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4},
}
FULL = {"unet": SD15_UNET, "text": SD15_TEXT, "vae": SD15_VAE}


def build_sd15_pipeline(toy: bool = False, device: str = "cpu", latent_size: int | None = None, seed: int = 0):
    """The SD 1.5-shaped ``StableDiffusionPipeline`` with random weights (``toy``: the tiny variant), built on
    ``device`` (initialising 860M weights is several times faster on a GPU). ``latent_size`` sets the UNet's
    ``sample_size``, the side of the latents the pipeline generates by default (64: 512 px; the weights do not
    depend on it)."""
    sizes = TOY if toy else FULL
    unet_config = {**sizes["unet"], **({"sample_size": latent_size} if latent_size else {})}
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        tokenizer = build_tokenizer(tmp, max_length=sizes["text"]["max_position_embeddings"])
        special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **sizes["text"], **special))
        vae = AutoencoderKL(**sizes["vae"])
        unet = UNet2DConditionModel(**unet_config)
    pipe = pipeline_class()(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_sd15_pipeline(
    directory: str | Path, toy: bool = False, device: str = "cpu", latent_size: int | None = None
) -> dict[str, Any]:
    """Build the pipeline and save it (safetensors) to ``directory``; returns its parameter counts and build time."""
    start = time.perf_counter()
    pipe = build_sd15_pipeline(toy, device, latent_size)
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")
    }
    save_pipeline(pipe, directory)
    return {"parameters": counts, "build_and_save_seconds": round(time.perf_counter() - start, 1)}


def run_isolated(script: str | Path, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``script --worker SPEC_JSON`` in a fresh interpreter and return the JSON object its last stdout line holds,
    with ``status`` ``ok``, ``timeout`` (killed after ``timeout_s``) or ``failed`` (its last stderr line)."""
    command = [sys.executable, str(script), "--worker", json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": round(timeout_s, 1)}
    wall = round(time.perf_counter() - start, 1)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        errors = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return {"status": "failed", "error": errors[-1][:500], "wall_seconds": wall}
    return {"status": "ok", **json.loads(lines[-1]), "wall_seconds": wall}


def finish_worker(result: dict[str, Any]) -> None:
    """A worker's last act: its result as one JSON line on stdout."""
    print(json.dumps(result), flush=True)


def run_worker_or_benchmark(
    args: argparse.Namespace,
    workers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
    benchmark: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """A benchmark script's main once its arguments are checked: with ``--worker SPEC_JSON``, the worker the spec's
    ``kind`` names (its result printed by ``finish_worker``); otherwise ``benchmark(args)``, written to ``--output``."""
    if args.worker:
        spec = json.loads(args.worker)
        finish_worker(workers[spec["kind"]](spec))
        return
    write_json(args.output, benchmark(args))
    print(f"wrote {args.output}")


def command_line() -> str:
    """The command that started this script, as one shell line (the interpreter's name, then ``sys.argv``)."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def registered(method: str) -> bool:
    """Whether ``method`` is a registered diffusion method (a benchmark skips the ones that are not)."""
    return method in list_methods("diffusion")
