"""SalUn for diffusion (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
ICLR 2024): saliency-masked fine-tuning that re-labels the concept.

    erase("tiny-sd", "salun", ["seven"], {"learning_rate": 2e-4, "max_train_steps": 150, "alpha": 4.0}, output_dir="out")

1. **Saliency.** ``|sum over the forget data of d loss / d w|`` of the ordinary denoising loss on latents the model
   generates for the concept's prompts (:func:`concept_erase.core.saliency.compute_saliency`). The top ``mask_ratio`` of
   all UNet weights (one global threshold) are salient; ``random_mask`` keeps as many weights per tensor at random
   positions instead (the paper's ablation); ``mask_path`` loads a mask saved with ``SaliencyMask.save`` (or by an
   earlier run's ``save_mask_path``), as the paper computes the mask once and reuses it.
2. **Forgetting by random labelling.** On a noised concept latent the UNet's prediction for the concept prompt is
   pulled to its own (stop-gradient) prediction for a misaligned prompt: the same template with a retain concept,
   drawn at random every step. ``alpha`` times the ordinary denoising loss on latents generated for the retain
   concepts keeps the rest of the model.
3. **Only salient weights change.** Gradient hooks zero the other entries' gradients (so clipping sees salient
   gradients only) and a :class:`~concept_erase.core.saliency.MaskApplier` restores them after every optimizer step, so they
   stay bit-identical whatever the optimizer's momentum or weight decay does.

Defaults are the paper's Stable Diffusion settings (``random_label.py --train_method full --alpha 0.5 --lr 1e-5
--epochs 5``, batch 8, mask ratio 0.5). ``num_train_epochs`` counts passes over the forget images (the paper's unit);
``max_train_steps``, when given, overrides it as in diffusers' scripts.

Both regressions onto a denoising target (the saliency loss and the retain term) use the scheduler's own target
(:func:`~concept_erase.diffusion.families.training_target`: the noise, the velocity of a v-prediction model such as
SD 2.x 768, or the clean latents), and every UNet call goes through
:func:`~concept_erase.diffusion.base.unet_prediction`, so SD 1.x/2.x and SDXL models are erased the same way. The
forgetting term needs no target: it pulls one prediction onto another of the same model.

**Adversarial erasure** (``adversarial``: ``ti``, ``prompt`` or ``both``; off by default), in the manner of
AdvUnlearn (Zhang et al., "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion
Models", NeurIPS 2024): training runs in rounds of ``adversarial_every`` steps, and before each round the attacks of
:mod:`~concept_erase.diffusion.inversion` run against the UNet being trained, on the forget images and the training
templates: ``ti`` inverts a new token for the concept (Pham et al.), ``prompt`` searches real prefix tokens
(UnlearnDiffAtk). Every conditioning found so far joins a second forgetting term (weight ``adversarial_weight``):
the UNet's prediction under it is pulled to its prediction for the misaligned prompt of the same template, as the
plain prompt's is. The retain term is unchanged. The loop, its seeding and the attacks' budgets are in
:mod:`~concept_erase.diffusion.methods.advunlearn` (shared with esd).

    erase("tiny-sd", "salun", ["seven"], {"adversarial": "both", "adversarial_every": 25}, output_dir="out")
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from concept_erase.core.config import NON_NEGATIVE, check_numbers
from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import register_method
from concept_erase.core.saliency import SaliencyMask, compute_saliency
from concept_erase.diffusion.base import (
    ConceptDataset,
    ErasureConfig,
    ErasureOutcome,
    ErasureRequest,
    batch_embeddings,
    concept_data,
    encode_prompts,
    make_trainer,
    noise_scheduler,
    replace_config,
    unet_prediction,
)
from concept_erase.diffusion.families import PromptEmbeddings, training_target
from concept_erase.diffusion.methods.advunlearn import (
    ADVERSARIAL_RANGES,
    AdversarialSettings,
    adversarial_rounds,
    check_adversarial_family,
    pick_adversarial,
)

__all__ = ["SalUnConfig", "salun"]


@dataclass
class SalUnConfig(AdversarialSettings, ErasureConfig):
    """SalUn's settings; the defaults are the paper's for Stable Diffusion."""

    max_train_steps: int | None = None  # None: num_train_epochs passes over the forget images
    num_train_epochs: int = 5
    learning_rate: float = 1e-5
    train_batch_size: int = 8
    alpha: float = 0.5  # weight of the retain denoising loss
    mask_ratio: float = 0.5  # fraction of UNet weights that may change (global top-k of the saliency)
    random_mask: bool = False  # ablation: the same number of weights per tensor at random positions
    mask_path: str | None = None  # a saved SaliencyMask to use instead of computing one
    save_mask_path: str | None = None  # write the mask trained through here (bit-packed safetensors) for reuse

    NUMBER_RANGES: ClassVar[dict] = {"alpha": NON_NEGATIVE, **ADVERSARIAL_RANGES}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self)

    def check_family(self, family: str) -> None:
        check_adversarial_family(self, family, "salun")


def _denoising_loss(pipe, scheduler, generator: torch.Generator | None = None):
    """``fn(unet, batch) -> MSE(unet(x_t, t, c), target)`` at random timesteps, ``target`` the scheduler's own
    (:func:`~concept_erase.diffusion.families.training_target`), on a :class:`ConceptDataset` batch."""

    def loss(unet, batch):
        latents, text = batch["latents"].to(unet.device), batch_embeddings(batch, unet.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
        steps = steps.to(latents.device)
        pred = unet_prediction(unet, pipe, scheduler.add_noise(latents, noise, steps), steps, text)
        return F.mse_loss(pred.float(), training_target(scheduler, latents, noise, steps).float())

    return loss


def saliency_mask(request: ErasureRequest, config: SalUnConfig, forget) -> SaliencyMask:
    """The mask SalUn trains through: loaded from ``mask_path``, or the saliency of the forgetting loss."""
    unet = request.unet
    if config.mask_path is not None:
        mask = SaliencyMask.load(config.mask_path, model=unet)
    else:
        loader = DataLoader(ConceptDataset(forget.latents, forget.text), batch_size=config.train_batch_size)
        generator = torch.Generator().manual_seed(config.seed)
        scores = compute_saliency(
            unet,
            loader,
            _denoising_loss(request.pipe, noise_scheduler(request.pipe), generator),
            params=".",
            show_progress=config.show_progress,
        )
        mask = SaliencyMask.from_scores(scores, ratio=config.mask_ratio, loss_name="denoising_mse")
        del scores
    return SaliencyMask.random_like(mask, seed=config.seed) if config.random_mask else mask


def _misaligned_states(request: ErasureRequest, config: SalUnConfig) -> tuple[PromptEmbeddings, torch.Tensor]:
    """Conditioning of every (template, retain concept) prompt, row ``template * R + retain``, and each forget row's
    template index (rows follow ``concept_data``: the templates take turns within each concept)."""
    templates, retain = request.templates, request.retain_concepts
    prompts = [template.format(concept) for template in templates for concept in retain]
    rows = len(request.concepts) * config.num_images
    template_ids = torch.arange(rows) % config.num_images % len(templates)
    return encode_prompts(request.pipe, prompts), template_ids


def _salun_loss(
    request: ErasureRequest,
    config: SalUnConfig,
    retain,
    misaligned: PromptEmbeddings,
    adversarial: PromptEmbeddings | None = None,
):
    """Forget (re-labelling) loss + alpha * retain denoising loss, one UNet pass with gradients for both.

    ``adversarial``: the attacks' conditionings, row ``(found * C + concept) * T + template`` (C concepts, T
    templates); with it, each forget row is also drawn under one of its concept's and template's found
    conditionings, picked at random, and pulled to a misaligned prediction (weight ``adversarial_weight``)."""
    pipe, scheduler = request.pipe, noise_scheduler(request.pipe)
    steps_total, retain_count = scheduler.config.num_train_timesteps, len(request.retain_concepts)
    concepts, templates = len(request.concepts), len(request.templates)

    def loss(unet, batch):
        latents, template_ids = batch["latents"], batch["template_ids"]
        n, device = len(latents), unet.device
        forget_text = batch_embeddings(batch)
        copies = 1
        if adversarial is not None:  # the same images again under the conditionings the attacks found
            found = pick_adversarial(adversarial, batch["concept_ids"], template_ids, concepts, templates)
            forget_text = PromptEmbeddings.cat([forget_text, found])
            latents, template_ids, copies = torch.cat([latents, latents]), torch.cat([template_ids, template_ids]), 2
        m = len(latents)
        picks = torch.randint(0, len(retain.latents), (n,))
        other = misaligned.take(template_ids * retain_count + torch.randint(0, retain_count, (m,))).to(device)
        clean = torch.cat([latents, retain.latents[picks]]).to(device)
        noise = torch.randn_like(clean)
        steps = torch.randint(0, steps_total, (m + n,), device=device)
        noisy = scheduler.add_noise(clean, noise, steps)
        with torch.no_grad():
            target = unet_prediction(unet, pipe, noisy[:m], steps[:m], other).float()
        text = PromptEmbeddings.cat([forget_text, retain.text.take(picks)]).to(device)
        pred = unet_prediction(unet, pipe, noisy, steps, text).float()
        forget_loss = F.mse_loss(pred[:n], target[:n])
        if copies == 2:
            forget_loss = forget_loss + config.adversarial_weight * F.mse_loss(pred[n:m], target[n:])
        retain_target = training_target(scheduler, clean[m:], noise[m:], steps[m:])
        return forget_loss + config.alpha * F.mse_loss(pred[m:], retain_target.float())

    return loss


@register_method(
    "salun", SalUnConfig, tags=("diffusion",), description="SalUn (Fan et al., ICLR 2024): saliency-masked fine-tuning"
)
def salun(request: ErasureRequest, config: SalUnConfig) -> ErasureOutcome:
    """Erase ``request.concepts`` from ``request.unet`` in place (see the module docstring)."""
    if not request.retain_concepts:
        raise ConfigError("salun needs at least one retain concept (retain_concepts) to re-label the concept with")
    forget = concept_data(request, request.concepts, config, desc="forget images")
    retain = concept_data(
        request, request.retain_concepts, config, seed_offset=len(forget.prompts), desc="retain images"
    )
    mask = saliency_mask(request, config, forget)
    if config.save_mask_path is not None:
        mask.save(config.save_mask_path)
    misaligned, template_ids = _misaligned_states(request, config)
    dataset = ConceptDataset(forget.latents, forget.text, template_ids=template_ids, concept_ids=forget.concept_ids)
    steps = config.max_train_steps or config.num_train_epochs * math.ceil(len(dataset) / config.train_batch_size)
    salient = [name for name, keep in mask.masks.items() if keep.any()]
    applier = mask.applier(request.unet)
    details = {
        "salient_tensors": len(salient),
        "forget_images": len(forget.prompts),
        "retain_images": len(retain.prompts),
    }

    def train(round_steps: int, seed: int, adversarial: PromptEmbeddings | None):
        trainer = make_trainer(
            request,
            replace_config(config, max_train_steps=round_steps, seed=seed),
            dataset,
            _salun_loss(request, config, retain, misaligned, adversarial),
            trainable=[f"^{re.escape(name)}$" for name in salient],
            after_step=applier,
            method="salun",
        )
        return _train_with_hooks(trainer, applier, request.unet, salient)

    if not config.attacks():
        result = train(steps, config.seed, None)
    else:
        result, details["adversarial"] = adversarial_rounds(
            request, config, forget.latents, forget.concept_ids, steps, train
        )
    return ErasureOutcome(result, mask=mask.summary() | {"metadata": mask.metadata}, details=details)


def _train_with_hooks(trainer, applier, unet: torch.nn.Module, salient: list[str]):
    """Train with the frozen entries' gradients zeroed as they are computed; leave ``requires_grad`` as found."""
    params = dict(unet.named_parameters())
    saved = {name: params[name].requires_grad for name in salient}
    for name in salient:
        params[name].requires_grad_(True)  # a hook needs a tensor that requires grad
    applier.register_grad_hooks()
    try:
        return trainer.train()
    finally:
        applier.remove_grad_hooks()
        for name, flag in saved.items():
            params[name].requires_grad_(flag)
