"""Adversarial erasure shared by salun and esd (their ``adversarial`` setting), in the manner of AdvUnlearn.

AdvUnlearn (Zhang et al., "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion
Models", NeurIPS 2024) erases against an attacker in the loop: training runs in rounds of ``adversarial_every``
steps, and before each round the attacks of :mod:`~concept_erase.diffusion.inversion` run against the UNet being
trained, on the method's forget images and its training templates:

- ``ti``: concept inversion (Pham et al., ICLR 2024), a new token learned for the concept;
- ``prompt``: adversarial prefix search (UnlearnDiffAtk), ``adversarial_tokens`` real tokens in front of each
  training prompt that leaves room for them (the prefix found is then written in front of every template).

Each attack yields one conditioning per (concept, template); every conditioning found so far (they accumulate over
the rounds) joins the method's forgetting term as another way of asking for the concept. Budgets default to those
of the attacks the erasure must resist (:data:`ADVERSARIAL_DEFAULTS`: ``attack_erasure``'s tiny defaults).

Determinism: each round's trainer is seeded ``seed + round`` and each attack ``seed + 1000 * (round + 1)``; the
shared trainer re-seeds the global RNG at the start of each, so every draw follows from ``seed``. Attacks and rounds
never overlap (an attack's trainer would reset the Accelerate state of a running one).

This module is not a method: it holds the loop the methods call. It imports the inversion, never the attack driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from concept_erase.core.config import COUNT, NON_NEGATIVE
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.trainer import TrainResult
from concept_erase.diffusion.base import ErasureRequest, encode_prompts
from concept_erase.diffusion.families import PromptEmbeddings
from concept_erase.diffusion.inversion import invert_concept, search_prompt

__all__ = [
    "ADVERSARIAL",
    "ADVERSARIAL_DEFAULTS",
    "ADVERSARIAL_RANGES",
    "AdversarialSettings",
    "adversarial_rounds",
    "attacks_of",
    "check_adversarial",
    "check_adversarial_family",
    "pick_adversarial",
]

ADVERSARIAL = ("none", "ti", "prompt", "both")
# The attacks' budgets inside the loop when not set: those of attack_erasure's tiny defaults (ti: 100 steps at
# 5e-2; prompt: 40 steps at 1e-2 with weight decay 0.1), the attacks the erasure must resist.
ADVERSARIAL_DEFAULTS = {"ti": {"steps": 100, "learning_rate": 5e-2}, "prompt": {"steps": 40, "learning_rate": 1e-2}}
# The number ranges of the adversarial fields (a config merges them into its NUMBER_RANGES).
ADVERSARIAL_RANGES = {
    "adversarial_every": COUNT,
    "adversarial_steps": COUNT,
    "adversarial_tokens": COUNT,
    "adversarial_weight": NON_NEGATIVE,
}


@dataclass
class AdversarialSettings:
    """The adversarial-erasure keys a method's config inherits (``class SalUnConfig(AdversarialSettings,
    ErasureConfig)``): they are validated here, after the base config's own checks; merge
    :data:`ADVERSARIAL_RANGES` into the config's ``NUMBER_RANGES``."""

    # adversarial erasure (AdvUnlearn-style): attacks against the UNet being trained, every adversarial_every steps
    adversarial: Literal["none", "ti", "prompt", "both"] = "none"
    adversarial_every: int = 25  # training steps per round (an attack before each round)
    adversarial_steps: int | None = None  # each attack's optimisation steps; None: ti 100, prompt 40
    adversarial_learning_rate: float | None = None  # None: ti 5e-2, prompt 1e-2
    adversarial_tokens: int = 3  # prompt: adversarial prefix tokens
    adversarial_weight: float = 1.0  # weight of the forgetting term on the attacks' conditionings
    adversarial_batch_size: int = 4  # each attack's batch of forget images

    def __post_init__(self) -> None:
        super().__post_init__()  # the base config (ErasureConfig) comes after this mixin in the MRO
        check_adversarial(self)

    def attacks(self) -> list[str]:
        """The attacks run in the loop: none, one, or both (ti first)."""
        return attacks_of(self)


def attacks_of(config) -> list[str]:
    """The attacks ``config.adversarial`` runs in the loop: none, one, or both (ti first)."""
    return {"none": [], "ti": ["ti"], "prompt": ["prompt"], "both": ["ti", "prompt"]}[config.adversarial]


def check_adversarial(config) -> None:
    """Refuse an unknown ``adversarial`` value (the numbers are checked by their ranges)."""
    if config.adversarial not in ADVERSARIAL:
        raise ConfigError(
            f"adversarial: invalid value {excerpt(config.adversarial)}; accepted values: {', '.join(ADVERSARIAL)}"
        )


def check_adversarial_family(config, family: str, method: str) -> None:
    """The prompt attack types one prefix for SD 1.x/2.x's single text encoder, not SDXL's two."""
    if family == "sdxl" and config.adversarial in ("prompt", "both"):
        raise ConfigError(
            f"{method}: adversarial {config.adversarial} is not implemented for SDXL (the prompt attack needs one "
            "text encoder); use adversarial: ti"
        )


def adversarial_rounds(
    request: ErasureRequest,
    config,
    latents: torch.Tensor,
    concept_ids: torch.Tensor,
    steps: int,
    train: Callable[[int, int, PromptEmbeddings], TrainResult],
) -> tuple[TrainResult, dict[str, Any]]:
    """``steps`` training steps in rounds of ``adversarial_every``, each after attacking ``request.unet`` as it is on
    the forget ``latents`` (``concept_ids``: their concepts). ``train(round_steps, seed, found)`` trains one round
    with the conditionings ``found`` so far, row ``(attack * C + concept) * T + template``. Returns the rounds'
    merged result and a record of the attacks (first prompt, first and last loss of each)."""
    found: list[PromptEmbeddings] = []
    results, record = [], []
    for index, start in enumerate(range(0, steps, config.adversarial_every)):
        seed = config.seed + 1000 * (index + 1)
        for attack in attacks_of(config):
            text, each = _attack(request, config, latents, concept_ids, attack, seed)
            found.append(text)
            first = next(iter(each.values()))
            entry = {"step": start, "attack": attack, "prompts": first["prompts"], "loss": first["loss"]}
            if len(each) > 1:  # several concepts: each one's attack (the keys above are the first concept's)
                entry["per_concept"] = each
            record.append(entry)
        round_steps = min(config.adversarial_every, steps - start)
        results.append(train(round_steps, config.seed + index, PromptEmbeddings.cat(found)))
    merged = TrainResult(
        global_step=sum(r.global_step for r in results),
        losses=[x for r in results for x in r.losses],
        seconds=sum(r.seconds for r in results),
        trained_parameters=results[0].trained_parameters,
        samples_seen=sum(r.samples_seen for r in results),
        extra={**results[0].extra, "rounds": len(results)},
    )
    return merged, {"rounds": len(results), "attacks": record}


def pick_adversarial(
    found: PromptEmbeddings, concept_ids: torch.Tensor, template_ids: torch.Tensor, concepts: int, templates: int
) -> PromptEmbeddings:
    """For each forget row, one of the conditionings found for its concept and template, drawn at random."""
    attacks = len(found.states) // (concepts * templates)
    rows = (torch.randint(0, attacks, (len(concept_ids),)) * concepts + concept_ids) * templates + template_ids
    return found.take(rows)


def _attack(request: ErasureRequest, config, latents, concept_ids, attack: str, seed: int):
    """One attack on ``request.unet`` per concept, on its forget images and the training templates: the found
    conditionings (row ``concept * T + template``) and, per concept, its first prompt and first and last losses."""
    budget = ADVERSARIAL_DEFAULTS[attack]
    common = {
        "steps": config.adversarial_steps or budget["steps"],
        "learning_rate": config.adversarial_learning_rate or budget["learning_rate"],
        "batch_size": config.adversarial_batch_size,
        "seed": seed,
        "show_progress": False,
    }
    texts, each = [], {}
    for index, concept in enumerate(request.concepts):
        images = latents[concept_ids == index]
        if attack == "ti":
            inverted = invert_concept(request.pipe, images, concept, request.templates, unet=request.unet, **common)
            written = inverted.prompts
        else:
            plain = [template.format(concept) for template in request.templates]
            room = _fitting(request.pipe, plain, config.adversarial_tokens)
            inverted = search_prompt(request.pipe, images, room, config.adversarial_tokens, **common)
            written = [f"{inverted.details['prefix']} {prompt}" for prompt in plain]  # every template, prefixed
        with _quiet_truncation():  # a prompt that left no room for the prefix loses its end, as an attacker's would
            texts.append(encode_prompts(inverted.pipe, written))
        each[concept] = {"prompts": written[:1], "loss": [round(inverted.losses[0], 5), round(inverted.losses[-1], 5)]}
    return PromptEmbeddings.cat(texts), each


@contextlib.contextmanager
def _quiet_truncation():
    """Silence the pipeline's and tokenizer's warnings about a prompt truncated to the text encoder's context."""
    saved = [(lib, lib.get_verbosity()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in saved:
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, verbosity in saved:
            lib.set_verbosity(verbosity)


def _fitting(pipe, prompts: list[str], tokens: int) -> list[str]:
    """The prompts that leave room for a ``tokens``-token prefix in the tokenizer's context (the search runs on
    those; the prefix it finds is then written in front of every template)."""
    tokenizer = pipe.tokenizer
    room = tokenizer.model_max_length - tokens
    fitting = [prompt for prompt in prompts if len(tokenizer(prompt).input_ids) <= room]
    if not fitting:
        raise ConfigError(
            f"no training prompt leaves room for {tokens} adversarial prefix tokens in the tokenizer's "
            f"{tokenizer.model_max_length}-token context; lower adversarial_tokens"
        )
    return fitting
