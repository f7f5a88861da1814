"""ESD (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023): negative-guidance distillation.

    erase("tiny-sd", "esd", ["seven"], {"train": "xattn", "learning_rate": 5e-4, "max_train_steps": 100}, output_dir="out")

The UNet being trained, conditioned on the concept ``c``, learns to predict what a frozen copy of the original
predicts with classifier-free guidance *away* from the concept:

    eps_theta(x_t, c)  ->  eps*(x_t, "") - negative_guidance * (eps*(x_t, c) - eps*(x_t, ""))

so that sampling with ``c`` afterwards steers away from it. ``train`` picks the parameters, as in the paper:

- ``"noxattn"`` (ESD-u, the default): every UNet weight except the cross-attention layers (``attn2``), the time
  embedding and the output layers (``conv_norm_out``, ``conv_out``), as the reference code does. The paper recommends
  it for erasing objects and NSFW content globally, whatever the prompt; the toolkit's concepts are objects.
- ``"xattn"`` (ESD-x): the cross-attention layers only, recommended for artistic styles: the erasure stays tied
  to the prompt's words and the artifact is a small weights adapter.

**The one deliberate departure, for speed.** The paper makes each ``x_t`` by sampling with the model being trained,
DDIM from pure noise down to a random step ``t`` (up to ~50 UNet calls per training step). Here ``x_t`` is a latent of
the concept that the original model generated once before training (:func:`~concept_erase.diffusion.base.concept_data`),
noised to a random timestep with the forward process: one UNet call per step instead of up to fifty, and the same
distribution of ``x_t`` as the original model's samples of the concept (the paper's early steps match it too).

**An opt-in extension, off by default.** ``preserve_weight > 0`` adds ``preserve_weight * MSE(eps_theta(x_r, c_r),
eps*(x_r, c_r))`` on latents generated for the retain concepts: the trained model keeps the frozen model's
predictions for them. The paper has no such term (``preserve_weight: 0`` is the paper's ESD). It matters when concept
embeddings are close: on the tiny model "seven"'s text state has cosine 0.8 with "zero" and "four", so any change
that erases "seven" also damages them, and plain ESD cannot erase "seven" without losing ~10 points of retain
accuracy.

**Every family and prediction type.** Both terms distil the frozen copy's own predictions (guided or not) into
the trained UNet: whatever the UNet predicts (noise, velocity or clean latents), the guided combination is formed in
that same space, as the pipeline's classifier-free guidance forms it, so the loss needs no
:func:`~concept_erase.diffusion.families.training_target` and is right for epsilon and v-prediction models alike.
The unconditional prediction uses the pipeline's own unconditional conditioning
(:func:`~concept_erase.diffusion.base.empty_prompt`: the empty prompt, or SDXL's zeros), and every UNet call goes
through :func:`~concept_erase.diffusion.base.unet_prediction` (SDXL's pooled embeddings and time ids).

**Adversarial erasure, opt-in** (``adversarial``: ``ti``, ``prompt`` or ``both``; off by default), in the manner of
AdvUnlearn (Zhang et al., NeurIPS 2024, which builds on ESD): before every ``adversarial_every`` steps the attacks
of :mod:`~concept_erase.diffusion.inversion` run against the UNet being trained, and the trained UNet conditioned on
each conditioning found so far must also predict the negatively guided target of the concept's own prompt (weight
``adversarial_weight``). The loop is :mod:`~concept_erase.diffusion.methods.advunlearn` (shared with salun).

Defaults are the paper's (``train-esd.py``): negative guidance 1.0, learning rate 1e-5, 1000 iterations, batch 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from concept_erase.core.config import FINITE, check_numbers
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.registry import register_method
from concept_erase.diffusion.base import (
    ConceptDataset,
    ErasureConfig,
    ErasureOutcome,
    ErasureRequest,
    batch_embeddings,
    concept_data,
    empty_prompt,
    frozen_copy,
    make_trainer,
    noise_scheduler,
    replace_config,
    unet_prediction,
)
from concept_erase.diffusion.families import PromptEmbeddings
from concept_erase.diffusion.methods.advunlearn import (
    ADVERSARIAL_RANGES,
    AdversarialSettings,
    adversarial_rounds,
    attacks_of,
    check_adversarial_family,
    pick_adversarial,
)

__all__ = ["ESDConfig", "TRAIN_PATTERNS", "esd"]

# Which UNet parameters each ``train`` setting updates (regex, searched in diffusers parameter names).
TRAIN_PATTERNS: dict[str, str] = {
    "xattn": r"\battn2\.",  # ESD-x: cross-attention only
    "noxattn": r"^(?!.*\battn2\.|time_embedding\.|conv_norm_out\.|conv_out\.)",  # ESD-u
}


@dataclass
class ESDConfig(AdversarialSettings, ErasureConfig):
    """ESD's settings; the defaults are the paper's."""

    max_train_steps: int = 1000
    learning_rate: float = 1e-5
    train_batch_size: int = 1
    negative_guidance: float = 1.0  # eta: how far past the unconditional prediction the concept is pushed
    train: Literal["xattn", "noxattn"] = "noxattn"  # ESD-x or ESD-u
    preserve_weight: float = 0.0  # not in the paper (0 = the paper's ESD): keep retain prompts' predictions

    NUMBER_RANGES: ClassVar[dict] = {"negative_guidance": FINITE, **ADVERSARIAL_RANGES}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self)
        if self.train not in TRAIN_PATTERNS:
            raise ConfigError(
                f"train: invalid value {excerpt(self.train)}; accepted values: {', '.join(TRAIN_PATTERNS)}"
            )

    def check_family(self, family: str) -> None:
        check_adversarial_family(self, family, "esd")


def _noised(scheduler, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, t)``: ``latents`` noised by the forward process at uniformly drawn timesteps."""
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
    return scheduler.add_noise(latents, torch.randn_like(latents), steps), steps


def _esd_loss(
    request: ErasureRequest,
    config: ESDConfig,
    teacher: torch.nn.Module,
    retain,
    adversarial: PromptEmbeddings | None = None,
):
    """MSE to the frozen model's negatively guided prediction ``e0 - eta * (ec - e0)``; with ``retain`` data also
    ``preserve_weight`` times the MSE to the frozen model's prediction for retain prompts. One UNet call each for the
    trained and the frozen model per step. ``adversarial``: the attacks' conditionings (see
    :func:`~concept_erase.diffusion.methods.advunlearn.pick_adversarial`); with it each forget row is also drawn
    under one of them, and the trained UNet must predict the same guided target (of the plain prompt) there too."""
    pipe, scheduler = request.pipe, noise_scheduler(request.pipe)
    empty = empty_prompt(pipe)
    concepts, templates = len(request.concepts), len(request.templates)

    def loss(unet, batch):
        latents, text = batch["latents"].to(unet.device), batch_embeddings(batch, unet.device)
        plain = n = len(latents)
        student = text
        if adversarial is not None:  # the same images again; the teacher sees the plain prompt, the student the found
            found = pick_adversarial(adversarial, batch["concept_ids"], batch["template_ids"], concepts, templates)
            student = PromptEmbeddings.cat([text, found.to(unet.device)])
            latents, text, n = torch.cat([latents, latents]), PromptEmbeddings.cat([text, text]), 2 * plain
        if retain is not None:
            picks = torch.randint(0, len(retain.latents), (plain,))
            latents = torch.cat([latents, retain.latents[picks].to(latents)])
            kept_text = retain.text.take(picks).to(unet.device)
            text, student = PromptEmbeddings.cat([text, kept_text]), PromptEmbeddings.cat([student, kept_text])
        noisy, steps = _noised(scheduler, latents)
        with torch.no_grad():
            both = PromptEmbeddings.cat([empty.expand(n).to(unet.device), text])
            frozen = unet_prediction(teacher, pipe, torch.cat([noisy[:n], noisy]), torch.cat([steps[:n], steps]), both)
            frozen = frozen.float()
        uncond, cond, kept = frozen[:n], frozen[n : 2 * n], frozen[2 * n :]
        pred = unet_prediction(unet, pipe, noisy, steps, student).float()
        guided = uncond - config.negative_guidance * (cond - uncond)
        value = F.mse_loss(pred[:plain], guided[:plain])
        if n > plain:
            value = value + config.adversarial_weight * F.mse_loss(pred[plain:n], guided[plain:])
        return value + config.preserve_weight * F.mse_loss(pred[n:], kept) if retain is not None else value

    return loss


@register_method(
    "esd", ESDConfig, tags=("diffusion",), description="ESD (Gandikota et al. 2023): negative-guidance distillation"
)
def esd(request: ErasureRequest, config: ESDConfig) -> ErasureOutcome:
    """Erase ``request.concepts`` from ``request.unet`` in place (see the module docstring)."""
    data = concept_data(request, request.concepts, config, desc="concept images")
    retain = None
    if config.preserve_weight > 0:
        if not request.retain_concepts:
            raise ConfigError("esd: preserve_weight > 0 needs at least one retain concept (retain_concepts)")
        offset = len(data.prompts)
        retain = concept_data(request, request.retain_concepts, config, seed_offset=offset, desc="retain images")
    teacher = frozen_copy(request.unet)
    template_ids = torch.arange(len(data.prompts)) % config.num_images % len(request.templates)
    dataset = ConceptDataset(data.latents, data.text, concept_ids=data.concept_ids, template_ids=template_ids)

    def train(steps: int, seed: int, adversarial: PromptEmbeddings | None):
        trainer = make_trainer(
            request,
            replace_config(config, max_train_steps=steps, seed=seed),
            dataset,
            _esd_loss(request, config, teacher, retain, adversarial),
            trainable=TRAIN_PATTERNS[config.train],
            method="esd",
        )
        return trainer.train()

    details = {
        "train": config.train,
        "variant": "ESD-x" if config.train == "xattn" else "ESD-u",
        "images": len(data.prompts),
        "retain_images": len(retain.prompts) if retain is not None else 0,
    }
    if not attacks_of(config):
        result = train(config.max_train_steps, config.seed, None)
    else:
        result, details["adversarial"] = adversarial_rounds(
            request, config, data.latents, data.concept_ids, config.max_train_steps, train
        )
    return ErasureOutcome(result, details=details)
