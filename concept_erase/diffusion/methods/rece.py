"""RECE (Gong et al., ECCV 2024, "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models").

    record = erase("tiny-sd", "rece", ["seven"], {"guide_concepts": ["digit"]}, output_dir="out/rece-seven")

UCE (:mod:`concept_erase.diffusion.methods.uce`) followed by ``rounds`` rounds of: find, in closed form, the text
embedding that regenerates the erased concept on the edited model, and edit the model again so that this embedding
is mapped to the guide too. No training: every step is a linear solve, and only the ``attn2`` key and value
projections change, so the artifact is a small weights adapter.

The adversarial embedding. With ``W_l`` the original projections and ``W'_l`` the current (edited) ones, over every
cross-attention ``to_k`` and ``to_v`` (all read the text states), the embedding ``c'`` of a concept state ``c`` is

    c' = argmin_x  sum_l ||W'_l x - W_l c||^2 + adversarial_lamb * ||x||^2
       = (sum_l W'_l^T W'_l + adversarial_lamb I)^-1 sum_l W'_l^T W_l c,

one ``D x D`` map applied to every row: the edited model's keys and values for ``c'`` are as close as they can be to
what the original model made of the concept, while ``c'`` stays small (the paper's regulariser towards the zero
vector, ``close_regzero`` in its code; the code's other variants, towards the old guide's embedding, are not built).

The re-solve is UCE's closed form on the current weights (the paper's ``edit_model_adversarial``): ``W''`` minimises
``lamb ||W'' - W'||^2 + erase_scale sum ||W'' c' - W' g||^2 + preserve_scale sum ||W'' p - W' p||^2`` with ``g`` the
guide's states aligned with ``c`` and ``p`` the preserved rows. As in the paper's code each round's erase set is that
round's adversarial embeddings only: the earlier edits are kept by the ``lamb`` anchor on ``W'``, not re-solved.

Defaults are the paper's scripts' (``scripts/nudity.sh``, ``train_object.py``): 5 rounds (``--epochs 5``),
``adversarial_lamb`` 1e-3 (``--regular_scale``: ``train_object.py``'s default; the nudity script and some objects use
0.1), erase scale 1, ``lamb`` 0.1, preserve scale 0.1 for the rounds' preservation of the empty prompt (the code's
``retain_texts = [''] + preserve_concepts``: ``preserve_empty_prompt``). The UCE stage and its preservation are
:class:`~concept_erase.diffusion.methods.uce.UCEConfig`'s (this config inherits every key; ``preserve_scale``
default ``max(0.1, 1 / preserved prompts)`` as UCE's code, applied to the rounds too).

Deviations from the paper's code: the adversarial embeddings are computed for the erased prompts' rows that the UCE
stage edits (``templates`` x ``positions``), not for the bare concept word at all 77 positions, so the rounds and the
UCE stage see the same positions; the code keeps the round whose images a detector scores best (it needs an image
classifier in the loop), here the last round is the result (``details["rounds"]`` records every round's residuals).

SDXL: the projections read both text encoders' states concatenated (``D`` = 768 + 1280 on SDXL), so the adversarial
embedding lives in that concatenated state space, the one ``to_k``/``to_v`` read; it is not a token embedding of
either encoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from concept_erase.core.config import NON_NEGATIVE
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.registry import register_method
from concept_erase.core.trainer import TrainResult
from concept_erase.diffusion.base import ErasureOutcome, ErasureRequest, encode_prompts
from concept_erase.diffusion.methods.uce import UCEConfig, edit_projections, prepare_edit

__all__ = ["RECEConfig", "adversarial_embedding", "erase", "projections", "regeneration_residual"]


@dataclass
class RECEConfig(UCEConfig):
    """RECE settings: UCE's (every key, same defaults) plus the rounds; defaults are the paper's scripts'."""

    rounds: int = 5  # adversarial rounds after the UCE stage (the code's --epochs); 0 is plain UCE
    adversarial_lamb: float = 1e-3  # the adversarial embedding's regulariser (the code's --regular_scale)
    preserve_empty_prompt: bool = True  # the rounds also preserve the empty prompt (the code's retain_texts [''])

    NUMBER_RANGES: ClassVar[dict] = {"rounds": NON_NEGATIVE, "adversarial_lamb": NON_NEGATIVE}

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int):
            raise ConfigError(f"rounds must be a whole number >= 0, got {excerpt(self.rounds)}")
        if not isinstance(self.preserve_empty_prompt, bool):
            raise ConfigError(
                f"preserve_empty_prompt: invalid value {excerpt(self.preserve_empty_prompt)}; accepted values: "
                "true, false"
            )
        super().__post_init__()


def projections(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every cross-attention key and value projection's weight (float64 copies), by parameter name."""
    return {
        f"{name}.{proj}.weight": getattr(module, proj).weight.detach().double().clone()
        for name, module in unet.named_modules()
        if name.endswith(".attn2")
        for proj in ("to_k", "to_v")
    }


def adversarial_embedding(
    edited: dict[str, torch.Tensor], original: dict[str, torch.Tensor], states: torch.Tensor, lamb: float
) -> torch.Tensor:
    """The rows ``x`` (``(N, D)``) minimising ``sum_l ||W'_l x - W_l c||^2 + lamb ||x||^2`` for each row ``c`` of
    ``states``: ``x = (sum W'^T W' + lamb I)^-1 sum W'^T W c``."""
    dim = states.shape[-1]
    gram = lamb * torch.eye(dim, dtype=torch.float64)
    cross = torch.zeros((dim, dim), dtype=torch.float64)
    for name, new in edited.items():
        gram = gram + new.T @ new
        cross = cross + new.T @ original[name]
    if lamb == 0 and int(torch.linalg.matrix_rank(gram)) < dim:
        raise ConfigError(
            f"rece: the adversarial embedding is not unique: adversarial_lamb is 0 and the projections do not span "
            f"the {dim} state dimensions; give adversarial_lamb > 0"
        )
    mapping = torch.linalg.solve(gram, cross)  # (D, D): x = mapping @ c
    return states.double() @ mapping.T


def regeneration_residual(
    edited: dict[str, torch.Tensor], original: dict[str, torch.Tensor], embedding: torch.Tensor, states: torch.Tensor
) -> float:
    """``sqrt(sum_l ||W'_l x - W_l c||^2)`` over the rows: how far the edited model's keys and values for
    ``embedding`` are from what the original made of the concept's ``states`` (0: it regenerates them exactly)."""
    total = sum(float(((embedding @ new.T - states @ original[name].T) ** 2).sum()) for name, new in edited.items())
    return total**0.5


@register_method(
    "rece",
    RECEConfig,
    tags=("diffusion",),
    description=(
        "RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024): UCE, then rounds of closed-form "
        "adversarial embeddings erased in closed form"
    ),
)
def erase(request: ErasureRequest, config: RECEConfig) -> ErasureOutcome:
    """UCE on ``request.unet``'s cross-attention projections, then ``config.rounds`` adversarial rounds, in place."""
    start = time.perf_counter()
    erased, guided, preserved, solve = prepare_edit(request, config, "rece")
    preserve_scale = solve["preserve_scale"]
    original = projections(request.unet)
    names = edit_projections(request.unet, erased, guided, preserved, **solve)
    uce_residual = regeneration_residual(projections(request.unet), original, erased, erased)
    kept = preserved
    if config.preserve_empty_prompt:
        kept = torch.cat([preserved, encode_prompts(request.pipe, [""]).states[0].double()])
    rounds = []
    for index in tqdm(range(config.rounds), desc="rece rounds", disable=not config.show_progress):
        edited = projections(request.unet)
        adversarial = adversarial_embedding(edited, original, erased, config.adversarial_lamb)
        before = regeneration_residual(edited, original, adversarial, erased)
        edit_projections(request.unet, adversarial, guided, kept, **solve)
        after = regeneration_residual(projections(request.unet), original, adversarial, erased)
        rounds.append(
            {
                "round": index + 1,
                "adversarial_norm": float(adversarial.norm(dim=-1).mean()),
                "residual_before": before,
                "residual_after": after,
            }
        )
    seconds = time.perf_counter() - start
    result = TrainResult(global_step=0, losses=[], seconds=seconds, trained_parameters=names)
    details = {
        "edited_layers": len(names),
        "erased_rows": len(erased),
        "preserved_rows": len(preserved),
        "round_preserved_rows": len(kept),
        "preserve_scale": preserve_scale,
        "positions": config.positions,
        "concept_norm": float(erased.norm(dim=-1).mean()),
        "uce_residual": uce_residual,  # the concept's own states on the model after the UCE stage
        "rounds": rounds,
    }
    return ErasureOutcome(result, details=details)
