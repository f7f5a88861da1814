"""Cross-attention utilities for diffusion UNets: steering/capturing processors, concept-token positions, backends.

    positions = concept_positions(pipe.tokenizer, prompts, ["seven"] * len(prompts))    # (N, L) bool
    with steer_cross_attention(pipe.unet, attention_backend="auto") as steering:
        steering.set_positions(positions[:4])
        pipe.unet(noisy, timesteps, states[:4])
        loss = steering.loss()          # norm of the attention probabilities on the concept tokens

Fused kernels (SDPA, xformers) never materialise attention probabilities. :func:`steer_cross_attention` installs a
:class:`SteeringAttnProcessor`, which computes them explicitly, only on the cross-attention layers (``attn2``); every
other layer keeps its fast kernel. The originals are restored on exit, also after an error. If the steering
processors are replaced while installed (``enable_xformers_memory_efficient_attention()``, ``set_attn_processor``),
the next forward pass raises a :class:`~concept_erase.core.errors.TrainingError` instead of silently giving a zero loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, XFormersAttnProcessor

from concept_erase.core.errors import ConfigError, TrainingError
from concept_erase.diffusion.families import tokenizers
from concept_erase.diffusion.loading import concept_token_ids

__all__ = [
    "AttentionBackend",
    "Steering",
    "SteeringAttnProcessor",
    "concept_positions",
    "cross_attention_layers",
    "pipeline_concept_positions",
    "resolve_attention_backend",
    "steer_cross_attention",
]

AttentionBackend = Literal["sdpa", "xformers", "auto"]
BACKENDS = ("sdpa", "xformers", "auto")
_PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor")  # safe to swap for a backend


# ---------------------------------------------------------------------------------------------------- backends


def _xformers_importable() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention_backend(backend: str, device: torch.device | str) -> str:
    """``"sdpa"`` or ``"xformers"`` for ``backend`` on ``device``; ``"auto"`` picks xformers when it is importable
    and the device is CUDA, else SDPA. Asking for xformers without the package or a GPU raises :class:`ConfigError`."""
    if backend not in BACKENDS:
        raise ConfigError(f"attention_backend: invalid value {backend!r}; accepted values: {', '.join(BACKENDS)}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "xformers" if on_cuda and _xformers_importable() else "sdpa"
    if backend == "xformers":
        if not _xformers_importable():
            raise ConfigError(
                "attention_backend 'xformers' needs the xformers package: pip install concept-erase[xformers]"
            )
        if not on_cuda:
            raise ConfigError("attention_backend 'xformers' needs a CUDA GPU; use attention_backend sdpa on CPU")
    return backend


def _fast_processor(backend: str):

    return XFormersAttnProcessor() if backend == "xformers" else AttnProcessor2_0()


# ---------------------------------------------------------------------------------------------------- processor


class Steering:
    """Shared state of one installation: the concept-token mask of the current batch and what each layer recorded."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None  # (batch, seq_len) bool, key positions of the concept tokens
        self.records: dict[str, torch.Tensor] = {}  # layer name -> (batch, heads, pixels, seq_len) masked probs
        self.layers: list[str] = []
        self.forward_passes = 0

    def set_positions(self, positions: torch.Tensor | None) -> None:
        """The concept-token mask for the next forward pass (``None``: run without recording)."""
        if positions is not None and (positions.ndim != 2 or positions.dtype != torch.bool):
            raise ConfigError(
                f"positions must be a (batch, seq_len) bool tensor, got {tuple(positions.shape)} {positions.dtype}"
            )
        self.positions = positions
        self.records = {}

    def loss(self) -> torch.Tensor:
        """FMN's loss: the norm of every recorded concept-token probability (all layers, heads, pixels, tokens)."""
        if not self.records:
            raise TrainingError("no cross-attention layer recorded attention probabilities: run a forward pass first")
        return torch.cat([r.flatten() for r in self.records.values()]).norm()

    def attention_mass(self) -> torch.Tensor:
        """Per sample, the mean over layers, heads and pixels of the probability summed over the concept tokens."""
        if not self.records:
            raise TrainingError("no cross-attention layer recorded attention probabilities: run a forward pass first")
        return torch.stack([r.sum(-1).mean((1, 2)) for r in self.records.values()]).mean(0)

    def record(self, name: str, probs: torch.Tensor, batch: int) -> None:
        """Keep ``probs`` (``(batch*heads, pixels, seq_len)``) on the concept positions only."""
        mask = self.positions.to(probs.device)
        if mask.shape != (batch, probs.shape[-1]):
            raise ConfigError(
                f"concept positions have shape {tuple(mask.shape)} but layer {name} attends over "
                f"{batch} prompts x {probs.shape[-1]} tokens"
            )
        probs = probs.unflatten(0, (batch, -1))  # head_to_batch_dim puts the heads of one sample next to each other
        self.records[name] = probs * mask[:, None, None, :].to(probs.dtype)


class SteeringAttnProcessor:
    """diffusers' non-fused attention (explicit probabilities) that records the concept-token probabilities."""

    def __init__(self, steering: Steering, name: str):
        self.steering = steering
        self.name = name

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, key_length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if self.steering.positions is not None:
            self.steering.record(self.name, probs, batch)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------------------- installation


def cross_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Processor names (``...attn2.processor``) of the UNet's cross-attention layers."""

    return [
        f"{name}.processor"
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    ]


def _check_installed(unet, steering: Steering, installed: dict[str, SteeringAttnProcessor]) -> None:
    current = unet.attn_processors
    lost = [name for name, processor in installed.items() if current.get(name) is not processor]
    if lost:
        raise TrainingError(
            f"the attention-steering processors were replaced on {len(lost)} cross-attention layer(s) "
            f"(e.g. {lost[0]}, now {type(current.get(lost[0])).__name__}) while steering was installed; "
            "enable xformers with attention_backend='xformers' instead of enable_xformers_memory_efficient_attention()"
        )


@contextlib.contextmanager
def steer_cross_attention(unet: torch.nn.Module, attention_backend: str | None = None) -> Iterator[Steering]:
    """Install :class:`SteeringAttnProcessor` on every cross-attention layer of ``unet`` and yield the shared
    :class:`Steering`. Other layers keep their processors, or get the fast kernel of ``attention_backend`` (``sdpa``,
    ``xformers``, ``auto``) when they use a plain one. Every original processor is restored on exit."""
    names = cross_attention_layers(unet)
    if not names:
        raise ConfigError(
            f"{type(unet).__name__} has no cross-attention layers: attention steering needs a text-conditioned UNet"
        )
    backend = resolve_attention_backend(attention_backend, unet.device) if attention_backend else None
    originals = unet.attn_processors
    steering = Steering()
    steering.layers = names
    installed = {name: SteeringAttnProcessor(steering, name.removesuffix(".processor")) for name in names}
    chosen = {}
    for name, processor in originals.items():
        if name in installed:
            chosen[name] = installed[name]
        elif backend is not None and type(processor).__name__ in _PLAIN_PROCESSORS:
            chosen[name] = _fast_processor(backend)
        else:
            chosen[name] = processor
    hooks = _guard_hooks(unet, steering, installed)
    try:
        unet.set_attn_processor(chosen)
        yield steering
    finally:
        for hook in hooks:
            hook.remove()
        unet.set_attn_processor(dict(originals))


def _guard_hooks(unet, steering: Steering, installed: dict[str, SteeringAttnProcessor]) -> list[Any]:
    """Forward hooks that fail loudly when the steering processors were swapped out or recorded nothing."""

    def before(module, args, kwargs=None):
        _check_installed(unet, steering, installed)
        steering.records = {}

    def after(module, args, output):
        steering.forward_passes += 1
        if steering.positions is not None and not steering.records:
            raise TrainingError(
                "a forward pass ran with attention steering installed but no steered layer recorded anything; "
                "were the attention processors replaced (e.g. by enable_xformers_memory_efficient_attention())?"
            )

    return [unet.register_forward_pre_hook(before), unet.register_forward_hook(after)]


# ---------------------------------------------------------------------------------------------------- token positions


def _find(sequence: list[int], pattern: list[int]) -> list[int]:
    """Start indices of every occurrence of ``pattern`` in ``sequence``."""
    n = len(pattern)
    return [i for i in range(len(sequence) - n + 1) if sequence[i : i + n] == pattern]


def concept_positions(
    tokenizer,
    prompts: Sequence[str],
    concepts: Sequence[str] | str,
    include_end_of_text: bool = False,
    max_length: int | None = None,
    include_following: bool = False,
) -> torch.Tensor:
    """A ``(len(prompts), max_length)`` bool mask of the key positions of each prompt's concept tokens.

    Prompts are tokenized as the pipeline encodes them (padded to ``max_length``, default the tokenizer's
    ``model_max_length``, and truncated). ``concepts`` is one concept for all prompts or one per prompt; every
    occurrence is marked. With ``include_end_of_text`` the prompt's own end-of-text token is marked too: only the last
    non-padding token, never padding (SD 1.x pads with end-of-text itself, SD 2.x with ``"!"``). With
    ``include_following`` every position from the concept's first occurrence to the end is marked: the words after
    it, end-of-text and padding, to which a causal text encoder carries the concept.
    """

    prompts = list(prompts)
    concepts = [concepts] * len(prompts) if isinstance(concepts, str) else list(concepts)
    if len(concepts) != len(prompts):
        raise ConfigError(
            f"got {len(concepts)} concepts for {len(prompts)} prompts; give one per prompt or one for all"
        )
    length = max_length or tokenizer.model_max_length
    encoded = tokenizer(prompts, padding="max_length", max_length=length, truncation=True)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    cache: dict[str, list[int]] = {}
    for row, (prompt, concept) in enumerate(zip(prompts, concepts)):
        ids = list(encoded["input_ids"][row])
        pattern = cache.setdefault(concept, concept_token_ids(tokenizer, concept))
        starts = _find(ids, pattern)
        if not starts:
            raise ConfigError(
                f"concept {concept!r} does not occur in prompt {prompt!r} (as the tokenizer writes it, "
                f"within {length} tokens)"
            )
        for start in starts:
            mask[row, start : start + len(pattern)] = True
        if include_following:
            mask[row, starts[0] :] = True
        if include_end_of_text:
            end = _end_of_text(ids, encoded.get("attention_mask"), row, tokenizer.eos_token_id)
            if end is not None:
                mask[row, end] = True
    return mask


def pipeline_concept_positions(
    pipe,
    prompts: Sequence[str],
    concepts: Sequence[str] | str,
    include_end_of_text: bool = False,
    include_following: bool = False,
) -> torch.Tensor:
    """:func:`concept_positions` in every tokenizer of ``pipe``, united: SDXL's UNet attends over both text
    encoders' states concatenated position by position, so a key position carries the concept when either
    tokenizer put it there (their padding differs: ``tokenizer_2`` pads with ``"!"``)."""
    masks = {
        name: concept_positions(t, prompts, concepts, include_end_of_text, include_following=include_following)
        for name, t in tokenizers(pipe).items()
    }
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    if len(set(shapes.values())) != 1:
        raise ConfigError(f"the pipeline's tokenizers write prompts of different lengths: {shapes}")
    return torch.stack(list(masks.values())).any(0)


def _end_of_text(ids: list[int], attention_mask, row: int, eos: int | None) -> int | None:
    """The position of the prompt's own end-of-text token: the last non-padding token when it is end-of-text (or,
    without an attention mask, the first end-of-text after the start token)."""
    if eos is None:
        return None
    if attention_mask is not None:
        last = sum(attention_mask[row]) - 1
        return last if last >= 0 and ids[last] == eos else None
    return next((i for i in range(1, len(ids)) if ids[i] == eos), None)
