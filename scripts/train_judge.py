"""Train the evaluation classifier that judges generated digits and check it on held-out real digits.

    python scripts/train_judge.py                 # -> concept_erase/diffusion/assets/digit-judge (seed 0)

It is trained on the same fixed training split as the tiny Stable Diffusion and used only to label generated images
and to provide the features of the Frechet distance; its held-out accuracy is stored in ``judge_config.json``.
"""

from __future__ import annotations

import argparse

from concept_erase.core.io import atomic_output_dir
from concept_erase.diffusion.judge import DEFAULT_JUDGE, JudgeConfig, save_judge, train_judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(DEFAULT_JUDGE))
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_accuracy", type=float, default=0.97, help="refuse to save a judge below this")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    judge = train_judge(JudgeConfig(dataset=args.dataset, resolution=args.resolution, seed=args.seed))
    accuracy = judge.config.test_accuracy
    print(f"held-out accuracy on real digits: {100 * accuracy:.2f}%")
    if accuracy < args.min_accuracy:
        raise SystemExit(f"accuracy {accuracy:.4f} is below --min_accuracy {args.min_accuracy}; not saved")
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
        save_judge(judge, tmp)
    print(f"saved {args.output_dir}")


if __name__ == "__main__":
    main()
