"""Unified Concept Editing (Gandikota et al., WACV 2024, "Unified Concept Editing in Diffusion Models").

    record = erase("tiny-sd", "uce", ["seven"], {"guide_concepts": [""]}, output_dir="out/uce-seven")

No training: every cross-attention key and value projection ``W`` (``attn2.to_k``, ``attn2.to_v``) is replaced in
closed form by the ``W'`` that minimises

    erase_scale * sum_i ||W' c_i - W g_i||^2 + preserve_scale * sum_j ||W' p_j - W p_j||^2 + lamb * ||W' - W||^2

where ``c_i`` are the text-encoder states of the erased concepts' prompts, ``g_i`` those of the same prompts with the
guide concept in their place (default the empty word: the concept is mapped to what the prompt means without it), and
``p_j`` those of the preserved concepts' prompts (default: the retain concepts), each taken at the prompt positions
``positions`` chooses. The solution is
``W' = (lamb W + erase_scale sum W g c^T + preserve_scale sum W p p^T) (lamb I + erase_scale sum c c^T +
preserve_scale sum p p^T)^-1``. Only ``attn2`` projections change, so the artifact is a small weights adapter. It
works on every supported family: the projections read the states the UNet reads (SDXL: both encoders' states
concatenated).

``positions``: ``concept_to_end`` (the paper's code: from the concept's last token to the end of the context, end of
text and padding included, aligned between a prompt and its guide version), ``concept`` (only the concept's tokens'
positions, the last one for a guide that is shorter) or ``all`` (every position). ``preserve_positions`` (default:
the same as ``positions``) chooses the preserved prompts' positions on its own: ``all`` keeps every state of the
preserved prompts, template words and start of text included, where it was, which on the embedded tiny SD is what
lets the edit erase hard without moving the other digits (its preset).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from concept_erase.core.config import NON_NEGATIVE, check_numbers
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.registry import register_method
from concept_erase.core.trainer import TrainResult
from concept_erase.diffusion.attention import cross_attention_layers
from concept_erase.diffusion.base import ErasureConfig, ErasureOutcome, ErasureRequest, encode_prompts
from concept_erase.diffusion.families import tokenizers
from concept_erase.diffusion.loading import concept_token_ids

__all__ = ["POSITIONS", "UCEConfig", "edit_projections", "erase", "prepare_edit"]

POSITIONS = ("concept_to_end", "concept", "all")


@dataclass
class UCEConfig(ErasureConfig):
    """UCE settings; defaults are the paper's code's (erase scale 1, ``lamb`` 0.1, preserve scale
    ``max(0.1, 1 / number of preserved prompts)`` when not given)."""

    guide_concepts: list[str] = field(default_factory=lambda: [""])  # one, or one per erased concept
    preserve_concepts: list[str] | None = None  # default: the request's retain concepts
    erase_scale: float = 1.0
    preserve_scale: float | None = None
    lamb: float = 0.1  # keeps W' near W (and the system solvable)
    positions: Literal["concept_to_end", "concept", "all"] = "concept_to_end"
    preserve_positions: Literal["concept_to_end", "concept", "all"] | None = None  # None: the same as positions
    edit_values: bool = True  # also edit to_v (the paper edits both)

    NUMBER_RANGES: ClassVar[dict] = {"erase_scale": NON_NEGATIVE, "preserve_scale": NON_NEGATIVE, "lamb": NON_NEGATIVE}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self)
        for key in ("positions", "preserve_positions"):
            value = getattr(self, key)
            if value not in POSITIONS and not (key == "preserve_positions" and value is None):
                raise ConfigError(f"{key}: invalid value {excerpt(value)}; accepted values: {', '.join(POSITIONS)}")
        if not self.guide_concepts:
            raise ConfigError(
                "guide_concepts is empty: give one guide ('' maps the concept to nothing) or one per concept"
            )
        self.guide_concepts = [str(g).strip().lower() for g in self.guide_concepts]
        if self.preserve_concepts is not None:
            self.preserve_concepts = [str(p).strip().lower() for p in self.preserve_concepts]


def _last_concept_token(pipe, prompt: str, concept: str) -> int:
    """Position (in the first tokenizer's input, start token included) of the concept's last token in ``prompt``."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    if not concept:
        return len(ids) - 2  # no concept: the prompt's last word (before end of text)
    target = concept_token_ids(tokenizer, concept)
    for start in range(len(ids) - len(target), -1, -1):
        if ids[start : start + len(target)] == target:
            return start + len(target) - 1
    return len(ids) - 2


def _selected(states: torch.Tensor, pipe, prompt: str, concept: str, positions: str, length: int | None = None):
    """The rows of one prompt's states ``(L, D)`` that enter the edit."""
    if positions == "all":
        return states
    last = _last_concept_token(pipe, prompt, concept)
    if positions == "concept":
        count = len(concept_token_ids(pipe.tokenizer, concept)) if concept else 1
        rows = states[last - count + 1 : last + 1]
        return rows if length is None else rows[-length:] if len(rows) >= length else rows[-1:].expand(length, -1)
    rows = states[last:]
    return rows if length is None else rows[:length]


def _pairs(request: ErasureRequest, config: UCEConfig):
    """``(erased rows, guide rows)`` aligned position by position, and the preserved rows, all ``(N, D)``."""
    pipe = request.pipe
    guides = config.guide_concepts
    if len(guides) not in (1, len(request.concepts)):
        raise ConfigError(
            f"guide_concepts has {len(guides)} entries; give one, or one per erased concept ({len(request.concepts)})"
        )
    for guide in guides:
        if guide:
            for name, tokenizer in tokenizers(pipe).items():
                concept_token_ids(tokenizer, guide, name)
    preserve = config.preserve_concepts if config.preserve_concepts is not None else list(request.retain_concepts)
    overlap = sorted(set(preserve) & set(request.concepts))
    if overlap:
        raise ConfigError(f"uce: {', '.join(overlap)} is both erased and preserved; remove it from preserve_concepts")
    old_prompts, new_prompts, owners = [], [], []
    for index, concept in enumerate(request.concepts):
        guide = guides[index if len(guides) > 1 else 0]
        for template in request.templates:
            old_prompts.append(template.format(concept))
            new_prompts.append(" ".join(template.format(guide).split()))
            owners.append((concept, guide))
    kept = [template.format(p) for p in preserve for template in request.templates]
    prompts = old_prompts + new_prompts + kept
    unique = list(dict.fromkeys(prompts))  # a guide's prompts recur once per erased concept: each is encoded once
    encoded = encode_prompts(pipe, unique).states.double()
    position = {prompt: i for i, prompt in enumerate(unique)}
    states = [encoded[position[prompt]] for prompt in prompts]
    old, new, rest = (
        states[: len(old_prompts)],
        states[len(old_prompts) : 2 * len(old_prompts)],
        states[2 * len(old_prompts) :],
    )
    erased, guided = [], []
    for row, (prompt, guide_prompt, (concept, guide)) in enumerate(zip(old_prompts, new_prompts, owners)):
        a = _selected(old[row], pipe, prompt, concept, config.positions)
        b = _selected(new[row], pipe, guide_prompt, guide, config.positions, length=len(a))
        n = min(len(a), len(b))
        erased.append(a[:n])
        guided.append(b[:n])
    preserved = [
        _selected(rest[row], pipe, prompt, concept, config.preserve_positions or config.positions)
        for row, (prompt, concept) in enumerate(
            (template.format(p), p) for p in preserve for template in request.templates
        )
    ]
    preserved_rows = torch.cat(preserved) if preserved else encoded.new_zeros((0, encoded.shape[-1]))
    return torch.cat(erased), torch.cat(guided), preserved_rows, len(kept)


def edit_projections(
    unet: torch.nn.Module,
    erased: torch.Tensor,
    guided: torch.Tensor,
    preserved: torch.Tensor,
    *,
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
    edit_values: bool = True,
) -> list[str]:
    """Replace every ``attn2.to_k`` (and ``to_v``) weight ``W`` of ``unet``, in place, by UCE's closed-form ``W'``
    for the rows ``erased`` -> ``guided`` and ``preserved`` (``(N, D)``, float64); the targets are what the current
    ``W`` makes of ``guided`` and ``preserved``. Returns the edited parameters' names. A singular system (``lamb`` 0
    and rows that do not span the states) is refused with a :class:`ConfigError`."""
    c_outer = erased.T @ erased  # (D, D)
    p_outer = preserved.T @ preserved
    dim = c_outer.shape[0]
    if lamb == 0 and int(torch.linalg.matrix_rank(erase_scale * c_outer + preserve_scale * p_outer)) < dim:
        raise ConfigError(
            f"the closed-form edit is singular: lamb is 0 and the {len(erased)} erased and {len(preserved)} "
            f"preserved rows do not span the {dim} state dimensions; give lamb > 0"
        )
    # W' = (lamb W + erase_scale W G^T C + preserve_scale W P^T P) R^-1 = W M with one (D, D) map M = L R^-1 for
    # every projection (L = lamb I + erase_scale G^T C + preserve_scale P^T P): one solve, then a product per weight
    eye = torch.eye(dim, dtype=c_outer.dtype)
    right = lamb * eye + erase_scale * c_outer + preserve_scale * p_outer
    mapping = torch.linalg.solve(right, (lamb * eye + erase_scale * guided.T @ erased + preserve_scale * p_outer).T).T
    names = []
    with torch.no_grad():
        for name, module in unet.named_modules():
            if not name.endswith(".attn2"):
                continue
            for proj in ("to_k", "to_v") if edit_values else ("to_k",):
                linear = getattr(module, proj)
                linear.weight.copy_((linear.weight.double() @ mapping).to(linear.weight.dtype))  # R is symmetric
                names.append(f"{name}.{proj}.weight")
    return names


def prepare_edit(request: ErasureRequest, config: UCEConfig, method: str):
    """``(erased, guided, preserved, solve)`` for :func:`edit_projections`: the rows of :func:`_pairs` and the solve's
    keyword arguments (``preserve_scale`` resolved: ``max(0.1, 1 / preserved prompts)`` when not given), after
    checking that the UNet has cross-attention layers to edit (``method`` names the refusal)."""
    if not cross_attention_layers(request.unet):
        raise ConfigError(f"{method}: the model's {type(request.unet).__name__} has no cross-attention layers to edit")
    erased, guided, preserved, preserve_prompts = _pairs(request, config)
    preserve_scale = (
        config.preserve_scale if config.preserve_scale is not None else max(0.1, 1 / max(preserve_prompts, 1))
    )
    solve = dict(
        erase_scale=config.erase_scale, preserve_scale=preserve_scale, lamb=config.lamb, edit_values=config.edit_values
    )
    return erased, guided, preserved, solve


@register_method(
    "uce",
    UCEConfig,
    tags=("diffusion",),
    description="Unified Concept Editing (Gandikota et al., WACV 2024): closed-form attn2 edit",
)
def erase(request: ErasureRequest, config: UCEConfig) -> ErasureOutcome:
    """Edit ``request.unet``'s cross-attention key (and value) projections in closed form, in place."""
    start = time.perf_counter()
    erased, guided, preserved, solve = prepare_edit(request, config, "uce")
    names = edit_projections(request.unet, erased, guided, preserved, **solve)
    preserve_scale = solve["preserve_scale"]
    seconds = time.perf_counter() - start
    result = TrainResult(global_step=0, losses=[], seconds=seconds, trained_parameters=names)
    details = {
        "edited_layers": len(names),
        "erased_rows": len(erased),
        "preserved_rows": len(preserved),
        "preserve_scale": preserve_scale,
        "positions": config.positions,
        "preserve_positions": config.preserve_positions or config.positions,
    }
    return ErasureOutcome(result, details=details)
