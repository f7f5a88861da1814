"""``concept-erase attack``: can an attacker bring an erased concept back? The attack's success rate on the erased
model, scored against the original (the ceiling) and the retrain oracle (the floor) with one budget and one set of
seeds (:mod:`concept_erase.diffusion.attack`)."""

from __future__ import annotations

import argparse

from pipelines.cli._common import add_output_options, add_seed_option, check_output, pct, say

__all__ = ["ATTACK_NAMES", "add_parsers", "cmd_attack"]

ATTACK_NAMES = ("ti", "prompt")  # concept_erase.diffusion.attack.ATTACKS (a test keeps them equal; no torch here)
_BUDGET_FLAGS = ("steps", "learning_rate", "num_images", "num_tokens", "eval_images")
_SAMPLING_FLAGS = ("num_inference_steps", "guidance_scale", "seed")


def _config(args: argparse.Namespace):
    """The :class:`AttackConfig` of the flags (validated now: a zero budget or an unknown attack is refused here)."""
    from concept_erase.core.errors import ConfigError
    from concept_erase.diffusion.attack import AttackConfig

    if args.num_tokens is not None and args.attack == "ti":
        raise ConfigError("--num_tokens is the prompt attack's prefix length; attack ti has none (drop it)")
    keys = {name: getattr(args, name) for name in _BUDGET_FLAGS + _SAMPLING_FLAGS if getattr(args, name) is not None}
    return AttackConfig(attack=args.attack, show_progress=not args.quiet, **keys)


def _inputs(args: argparse.Namespace) -> list:
    """What an attack reads: the model (an erasure directory: also its base model), the adapter, the original, an
    oracle directory and a judge or CLIP model directory."""
    from concept_erase.diffusion.erasure import erasure_inputs
    from concept_erase.diffusion.evaluation import EvaluationConfig, judge_inputs
    from concept_erase.diffusion.tiny_sd import resolve_model

    inputs = [args.adapter, resolve_model(args.original), *erasure_inputs(resolve_model(args.model))]
    inputs += judge_inputs(args.judge, args.clip_model, EvaluationConfig())
    if args.oracle not in (None, "auto", "none"):
        inputs.append(resolve_model(args.oracle))
    return inputs


def cmd_attack(args: argparse.Namespace) -> int:
    from concept_erase.diffusion.attack import attack_erasure

    config = _config(args)
    out = check_output(args, _inputs(args))
    metrics = attack_erasure(
        args.model,
        config,
        concept=args.concept,
        adapter=args.adapter,
        original=args.original,
        oracle=args.oracle,
        judge=args.judge,
        clip_model=args.clip_model,
        output_dir=out,
        overwrite=args.overwrite,
        cache=not args.no_cache,
    )
    _print_attack(metrics)
    say(f"wrote {out} (attack.json, grid.png, loss.png, report.md)")
    return 0


def _print_attack(metrics: dict) -> None:
    """Each model's attack success rate (and its share without the attack), the prompts found, time and budget."""
    method = f" (erased with {metrics['method']})" if metrics.get("method") else ""
    say(f"attack {metrics['attack']} on {metrics['concept']!r}{method}, judge {metrics['judge']}")
    cached = metrics.get("cached") or {}
    for name, m in metrics["models"].items():
        if m is None:
            say(f"{name:>9}: no oracle ({metrics['oracle_source']})")
            continue
        note = " (cached)" if cached.get(name) else ""
        say(f"{name:>9}: ASR {pct(m['asr'])} under attack, {pct(m['unattacked'])} without it{note}")
    if metrics["asr_gap_to_oracle"] is not None:
        say(f"  gap to the oracle (erased - oracle ASR): {100 * metrics['asr_gap_to_oracle']:+.1f} points")
    if metrics["attack"] == "prompt":
        for prompt in metrics["models"]["erased"]["prompts"]:
            say(f"  attack prompt: {prompt}")
    budget = metrics["budget"]
    shown = ", ".join(f"{key} {value}" for key, value in budget.items() if key != "defaults")
    say(f"  budget: {shown} ({budget['defaults']} defaults)")
    cost = metrics.get("cost_relative_to_erasure")
    relative = f", {cost:.2f}x the erasure's time" if cost is not None else ""
    say(
        f"attacked in {metrics['seconds']:.1f} s (the attack on the erased model {metrics['attack_seconds']:.1f} s"
        f"{relative})"
    )


def add_parsers(sub, parents: list) -> None:
    """Register ``attack`` on the CLI's subparsers."""
    help_text = "attack an erasure (concept inversion or adversarial prompts): ASR vs the original and the oracle"
    p = sub.add_parser("attack", parents=parents, help=help_text)
    p.add_argument(
        "--model",
        required=True,
        help="the erased model: an erasure output directory, or a diffusers pipeline (with --adapter, --concept)",
    )
    p.add_argument(
        "--attack",
        required=True,
        metavar="|".join(ATTACK_NAMES),
        help="ti: concept inversion (a learned token); prompt: adversarial prompt search (plain text, not SDXL)",
    )
    p.add_argument("--concept", default=None, help="the erased concept (default: the one erasure.json records)")
    p.add_argument("--adapter", default=None, help="erasure adapter (LoRA or weights safetensors/dir) on --model")
    p.add_argument("--original", default=None, help="the model before erasure (default: the erasure's base model)")
    p.add_argument("--oracle", default="auto", help="retrain oracle: auto (shipped/cached/trained), none, or DIR")
    p.add_argument(
        "--judge",
        default=None,
        help="digits (the embedded digit classifier, default), clip, nudenet or a digit-judge directory",
    )
    p.add_argument("--clip_model", default=None, help="the clip judge's CLIPModel (hub id or directory)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the model's budget)")
    p.add_argument("--learning_rate", type=float, default=None, help="attack learning rate (default: the budget's)")
    p.add_argument(
        "--num_images", type=int, default=None, help="images of the concept the attacker has (by the original)"
    )
    p.add_argument("--num_tokens", type=int, default=None, help="prompt: adversarial prefix tokens (default 3 / 5)")
    p.add_argument("--eval_images", type=int, default=None, help="generations scored per model (default 32)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="sampler steps (default 20)")
    p.add_argument("--guidance_scale", type=float, default=None, help="CFG scale (default 3.0)")
    add_seed_option(p, help="seed of the attack and of the scored generations (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars during the optimisation")
    p.add_argument(
        "--no_cache",
        action="store_true",
        help="attack the original and the oracle again instead of reusing their cached results",
    )
    add_output_options(p)
    p.set_defaults(func=cmd_attack)
