"""Train the embedded tiny Stable Diffusion (or its retrain oracle) and save it in diffusers format.

    python scripts/train_tiny_sd.py                                    # -> concept_erase/diffusion/assets/tiny-sd
    python scripts/train_tiny_sd.py --exclude_concept seven \\
        --output_dir concept_erase/diffusion/assets/tiny-sd-without-seven        # the oracle shipped for the demo
    python scripts/train_tiny_sd.py --prediction_type v_prediction \
        --output_dir concept_erase/diffusion/assets/tiny-sd-v                    # SD 2.x-style v-prediction
    python scripts/train_tiny_sd.py --family sdxl \
        --output_dir concept_erase/diffusion/assets/tiny-sdxl                    # StableDiffusionXLPipeline

The shipped models were produced by exactly these commands (seed 0, digits). Every component is a real
diffusers / transformers class; the result loads with ``StableDiffusionPipeline.from_pretrained(output_dir)``
(``StableDiffusionXLPipeline`` for ``--family sdxl``).
``concept-erase oracle --concept NAME`` runs the same recipe and caches the result instead.
"""

from __future__ import annotations

import argparse

from concept_erase.core.io import atomic_output_dir, peak_memory_bytes
from concept_erase.diffusion.tiny_sd import (
    DEFAULT_MODEL,
    FAMILIES,
    PREDICTION_TYPES,
    TinySDConfig,
    save_pipeline,
    train_tiny_sd,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(DEFAULT_MODEL))
    parser.add_argument(
        "--exclude_concept", nargs="*", default=[], help="concepts whose images and prompts are removed"
    )
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet_steps", type=int, default=TinySDConfig.unet_steps)
    parser.add_argument("--vae_steps", type=int, default=TinySDConfig.vae_steps)
    parser.add_argument("--learning_rate", type=float, default=TinySDConfig.learning_rate)
    parser.add_argument(
        "--ema_decay", type=float, default=TinySDConfig.ema_decay, help="EMA of the UNet's weights (0: none)"
    )
    parser.add_argument(
        "--filler_words",
        type=int,
        default=TinySDConfig.filler_words,
        help="random prompts: up to this many filler words on each side of the concept",
    )
    parser.add_argument(
        "--text_position_scale",
        type=float,
        default=TinySDConfig.text_position_scale,
        help="scale of the random text encoder's position embeddings",
    )
    parser.add_argument("--prediction_type", default=TinySDConfig.prediction_type, choices=list(PREDICTION_TYPES))
    parser.add_argument("--family", default=TinySDConfig.family, choices=list(FAMILIES))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    config = TinySDConfig(
        dataset=args.dataset,
        resolution=args.resolution,
        exclude_concepts=args.exclude_concept,
        seed=args.seed,
        unet_steps=args.unet_steps,
        vae_steps=args.vae_steps,
        learning_rate=args.learning_rate,
        ema_decay=args.ema_decay,
        filler_words=args.filler_words,
        text_position_scale=args.text_position_scale,
        prediction_type=args.prediction_type,
        family=args.family,
    )
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
        pipe = train_tiny_sd(config)
        save_pipeline(pipe, tmp)
    recipe = pipe.tiny_sd_recipe
    print(
        f"saved {args.output_dir}: {recipe['training_images']} training images, final UNet loss "
        f"{recipe['final_unet_loss']:.4f}, {recipe['seconds']:.0f} s, "
        f"peak RSS {peak_memory_bytes()['cpu_peak_rss'] / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
