"""The embedded default: a complete tiny Stable Diffusion trained on handwritten digits, and its retrain oracle.

    config = TinySDConfig()                                    # the recipe of the shipped model (seed 0)
    pipe = train_tiny_sd(config)                               # a diffusers StableDiffusionPipeline
    oracle = train_tiny_sd(config.without(["seven"]))          # exact unlearning: retrained without "seven"

Every Stable Diffusion component is the real diffusers / transformers class at a tiny size: a CLIP BPE tokenizer
(vocabulary built here), a frozen randomly-initialised ``CLIPTextModel``, an ``AutoencoderKL`` with an 8x8 latent,
a ``UNet2DConditionModel`` with cross-attention, and a DDIM scheduler. The saved directory loads with
``StableDiffusionPipeline.from_pretrained(path)`` exactly like an SD 1.x checkpoint.

Two variants follow the families people erase concepts from: ``prediction_type="v_prediction"`` trains the UNet on
SD 2.x's velocity target, and ``family="sdxl"`` builds a ``StableDiffusionXLPipeline`` (two tokenizers and text
encoders, the second a ``CLIPTextModelWithProjection``; a UNet with the ``text_time`` added embedding), conditioned
in training exactly as that pipeline conditions at inference.

Prompts come from :data:`TRAIN_TEMPLATES` ("a handwritten digit seven", "the number seven", ...). Evaluation uses
:data:`EVAL_TEMPLATES`, paraphrases that never appear in training or erasure. The recipe (this config, including the
removed concepts) is written into the model directory as ``tiny_sd_recipe.json`` so the toolkit can retrain the
exact-unlearning oracle of any model it trained.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from diffusers.utils import logging as diffusers_logging
from torch.utils.data import DataLoader, TensorDataset
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from concept_erase.core.config import Range, check_numbers
from concept_erase.core.digits import CONCEPTS, concept_index, fixed_split, load_digit_arrays
from concept_erase.core.errors import ConfigError, EmptyDataError, excerpt
from concept_erase.core.io import strict_json
from concept_erase.core.readers import read_dataclass, read_json_object, require
from concept_erase.core.trainer import Trainer, TrainerConfig
from concept_erase.diffusion.families import (
    PromptEmbeddings,
    encode,
    pipeline_class,
    training_target,
    unconditional,
    unet_kwargs,
)

__all__ = [
    "DEFAULT_MODEL",
    "EVAL_TEMPLATES",
    "FAMILIES",
    "PREDICTION_TYPES",
    "RECIPE_FILE",
    "TRAIN_TEMPLATES",
    "TinySDConfig",
    "build_pipeline",
    "build_tokenizer",
    "read_recipe",
    "recorded_training_seconds",
    "resolve_model",
    "save_pipeline",
    "train_tiny_sd",
]

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "tiny-sd"
RECIPE_FILE = "tiny_sd_recipe.json"

# Templates used for training (and by erasure methods that need prompts).
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a handwritten digit {}",
    "the number {}",
    "a drawing of the digit {}",
    "an image of the numeral {}",
    "{} written by hand",
    "a photo of a handwritten {}",
    "the digit {}",
    "a sketch of the number {}",
    "a black and white {}",
    "handwritten {}",
    "a scanned digit {}",
    "a picture of the number {}",
    "a small pixelated {}",
    "{}, a handwritten numeral",
    "someone wrote the number {}",
    "{}",
)
# Held-out paraphrases: used only for evaluation, never as training or erasure prompts. Like a paraphrase a real
# CLIP user writes, they are new sentences made of words the model has seen.
EVAL_TEMPLATES: tuple[str, ...] = (
    "a clean sketch of the handwritten {}",
    "the number {} written in black ink",
    "a very small drawing of a {}",
    "{} in pencil on white paper",
)
# Filler words for randomly composed training prompts ("tiny gray sketch seven on paper"): they teach the UNet to
# find the concept word wherever it stands and whatever surrounds it, so unseen paraphrases still work.
FILLER_WORDS: tuple[str, ...] = tuple(
    "a the an of by on in this is very image photo picture drawing digit number numeral handwritten written hand "
    "black white small big tiny bold thin thick messy clean simple blurry sharp gray dark light paper ink pencil "
    "marker style shape figure symbol character sign scanned sketch pixelated someone wrote quick careful".split()
)
# Words never paired with an image: prompts built from them show what an unseen word yields.
UNSEEN_WORDS: tuple[str, ...] = ("banana", "zebra", "violin", "castle")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
FAMILIES: tuple[str, ...] = ("sd", "sdxl")


# What a recipe written before an option existed was trained with (read_recipe fills these in; the other keys'
# defaults never changed)
RECIPE_VALUES_BEFORE_THE_KEY: dict[str, Any] = {"ema_decay": 0.0, "filler_words": 3, "text_position_scale": 1.0}


@dataclass
class TinySDConfig:
    """The full recipe of a tiny Stable Diffusion; identical recipes with the same seed give identical models."""

    dataset: str = "digits"  # digits | mnist5k
    resolution: int = 8  # image side; the latent is always 8x8 (the VAE downsamples resolution/8 times by 2)
    exclude_concepts: list[str] = field(default_factory=list)  # the retrain oracle: these concepts' data removed
    seed: int = 0
    # text encoder (frozen, randomly initialised) and tokenizer
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16
    text_residual_scale: float = 0.1  # shrinks the random encoder's attention/MLP outputs: tokens stay themselves
    # shrinks the random position embeddings (as large as the token embeddings at CLIP's initialisation): at 1 (the
    # first shipped models, still the v-prediction and SDXL ones) a word's state depends on where it stands as much
    # as on the word, and a digit named at a position or in a context training rarely used is not recognised
    text_position_scale: float = 0.1
    # autoencoder
    vae_channels: int = 32
    latent_channels: int = 4
    vae_steps: int = 600
    vae_learning_rate: float = 2e-3
    kl_weight: float = 1e-6
    # unet
    unet_channels: list[int] = field(default_factory=lambda: [32, 64])
    attention_head_dim: int = 8
    unet_steps: int = 4000
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 100
    batch_size: int = 64
    # exponential moving average of the UNet's weights, as diffusers' training scripts' --use_ema (EMAModel with
    # its warm-up); the pipeline keeps the averaged weights. 0 turns it off (the recipe of the first shipped models)
    ema_decay: float = 0.999
    uncond_probability: float = 0.1  # empty prompts for classifier-free guidance
    random_prompt_probability: float = 0.5  # else a TRAIN_TEMPLATES prompt; random: filler words around the concept
    # a random prompt has 0..filler_words filler words before the concept and 0..filler_words after (each count
    # drawn uniformly). 6 (every position a paraphrase uses) measured worse than 3 with position-dependent states:
    # text_position_scale, not more fillers, is what made the held-out paraphrases work (docs/diffusion.md)
    filler_words: int = 3
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # the UNet's target (v: SD 2.x's velocity)
    # sd: StableDiffusionPipeline. sdxl: StableDiffusionXLPipeline (a second, projected text encoder; the UNet
    # takes both encoders' penultimate states and the pooled embedding + time ids through a text_time embedding)
    family: Literal["sd", "sdxl"] = "sd"
    text_2_hidden_size: int = 64  # sdxl: the second text encoder's width (and its projection's)
    addition_time_embed_dim: int = 8  # sdxl: the Fourier width of each of the six time ids

    NUMBER_RANGES: ClassVar[dict] = {
        "ema_decay": Range(0, 1, high_open=True),
        "filler_words": Range(0),
        "text_position_scale": Range(0),
    }

    def __post_init__(self) -> None:
        check_numbers(self)
        for name, accepted in (("prediction_type", PREDICTION_TYPES), ("family", FAMILIES)):
            if getattr(self, name) not in accepted:
                raise ConfigError(
                    f"{name}: invalid value {excerpt(getattr(self, name))}; accepted values: {', '.join(accepted)}"
                )
        self.exclude_concepts = sorted({concept.strip().lower() for concept in self.exclude_concepts})
        for concept in self.exclude_concepts:
            concept_index(concept)
        if len(self.exclude_concepts) >= len(CONCEPTS):
            raise ConfigError("exclude_concepts would remove every concept: nothing is left to train on")
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ConfigError(f"resolution must be a power of two >= 8, got {self.resolution}")

    def without(self, concepts: list[str]) -> TinySDConfig:
        """The oracle's recipe: this recipe with ``concepts`` (and those already excluded) removed."""
        return dataclasses.replace(self, exclude_concepts=[*self.exclude_concepts, *concepts])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- components


def _vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary: every ASCII letter/digit/punctuation (so any ASCII text is representable) plus a chain
    of merges towards each word of the templates, fillers, concepts and unseen words. BPE applies merges by rank, so
    most words become one token and a few are split ("nine" -> "n", "in", "e</w>"), as rare words are in CLIP."""
    words = {w.strip(",") for t in (*TRAIN_TEMPLATES, *EVAL_TEMPLATES) for w in t.format("").split()}
    words |= set(CONCEPTS) | set(UNSEEN_WORDS) | set(FILLER_WORDS)
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in _CHARS:
            vocab[char + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in sorted(w for w in words if len(w) > 1):
        pieces = list(word)
        pieces[-1] += "</w>"
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tokenizer(directory: str | Path, max_length: int = 16, pad_token: str = "<|endoftext|>"):
    """Write ``vocab.json`` / ``merges.txt`` into ``directory`` and return the ``CLIPTokenizer`` built from them
    (SDXL's second tokenizer is the same vocabulary padding with ``"!"``)."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocabulary()
    (directory / "vocab.json").write_text(strict_json(vocab, "vocab.json"))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"unk_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    return CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        pad_token=pad_token,
        model_max_length=max_length,
        **special,
    )


def _tokenizer(config: TinySDConfig, work_dir: str | Path | None = None, pad_token: str = "<|endoftext|>"):
    """The tokenizer, built from BPE files in a temporary directory (it keeps its vocabulary in memory)."""

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        return build_tokenizer(tmp, config.max_length, pad_token)


def _text_encoder(config: TinySDConfig, tokenizer, second: bool = False):
    """The frozen random CLIP text encoder; ``second``: SDXL's ``CLIPTextModelWithProjection`` (its own seed)."""

    hidden = config.text_2_hidden_size if second else config.text_hidden_size
    torch.manual_seed(config.seed + 3 if second else config.seed)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        **({"projection_dim": hidden} if second else {}),
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = (CLIPTextModelWithProjection if second else CLIPTextModel)(text_config).eval().requires_grad_(False)
    with torch.no_grad():
        for name, module in model.named_modules():  # (module paths differ across transformers versions)
            if name.endswith(("self_attn.out_proj", "mlp.fc2")):
                module.weight.mul_(config.text_residual_scale)
            elif name.endswith("position_embedding"):
                module.weight.mul_(config.text_position_scale)
    return model


def _text_components(config: TinySDConfig, work_dir: str | Path | None = None) -> dict[str, Any]:
    """The pipeline's tokenizer(s) and frozen text encoder(s) by component name (SDXL: two of each)."""

    tokenizer = _tokenizer(config, work_dir)
    text = {"tokenizer": tokenizer, "text_encoder": _text_encoder(config, tokenizer)}
    if config.family == "sdxl":
        text["tokenizer_2"] = _tokenizer(config, work_dir, pad_token="!")
        text["text_encoder_2"] = _text_encoder(config, text["tokenizer_2"], second=True)
    return text


def _vae(config: TinySDConfig):

    blocks = int(np.log2(config.resolution // 8)) + 1
    torch.manual_seed(config.seed + 1)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(config.vae_channels,) * blocks,
        latent_channels=config.latent_channels,
        norm_num_groups=8,
        sample_size=config.resolution,
    )


def _unet(config: TinySDConfig):

    n = len(config.unet_channels)
    torch.manual_seed(config.seed + 2)
    sdxl = {}
    if config.family == "sdxl":  # SDXL's conditioning: both encoders' states, pooled embedding + six time ids
        sdxl = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": config.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": config.text_2_hidden_size + 6 * config.addition_time_embed_dim,
        }
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=config.text_hidden_size + (config.text_2_hidden_size if sdxl else 0),
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=16,
        **sdxl,
    )


def _noise_scheduler(config: TinySDConfig):

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=False,
        prediction_type=config.prediction_type,
    )


# ---------------------------------------------------------------------------------------------------- training


def _training_data(config: TinySDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-split images in [-1, 1] (single channel) and labels, without the excluded concepts."""
    images, labels = load_digit_arrays(config.dataset, config.resolution)
    train_idx, _ = fixed_split(labels)
    keep = train_idx[~np.isin(labels[train_idx], [concept_index(c) for c in config.exclude_concepts])]
    if len(keep) < config.batch_size:
        raise EmptyDataError(f"only {len(keep)} training images are left, fewer than one batch ({config.batch_size})")
    return torch.from_numpy(images[keep]) * 2 - 1, torch.from_numpy(labels[keep])


def _trainer_config(config: TinySDConfig, steps: int, lr: float, warmup: int, show_progress: bool):

    return TrainerConfig(
        max_train_steps=steps,
        learning_rate=lr,
        lr_scheduler="cosine",
        lr_warmup_steps=warmup,
        seed=config.seed,
        show_progress=show_progress,
    )


def _train_vae(config: TinySDConfig, images: torch.Tensor, show_progress: bool):

    vae = _vae(config)
    loader = DataLoader(TensorDataset(images), batch_size=config.batch_size, shuffle=True, drop_last=True)

    def loss(model, batch) -> torch.Tensor:
        posterior = model.encode(batch[0]).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        return torch.nn.functional.mse_loss(reconstruction, batch[0]) + config.kl_weight * posterior.kl().mean()

    settings = _trainer_config(config, config.vae_steps, config.vae_learning_rate, 20, show_progress)
    Trainer(vae, settings, loader, compute_loss=loss, progress_desc="tiny SD 1/2: autoencoder").train()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        # SD's convention: scale latents to unit variance (SD 1.x ships 0.18215 for its VAE)
        vae.register_to_config(scaling_factor=float(1.0 / posterior.sample().std()))
    return vae, posterior.mean, posterior.std


def _random_prompts(labels: torch.Tensor, config: TinySDConfig) -> list[str]:
    """One training prompt per label: a template, or filler words around the concept (global torch RNG)."""
    prompts = []
    for label in labels.tolist():
        concept = CONCEPTS[label]
        if torch.rand(()) >= config.random_prompt_probability:
            prompts.append(TRAIN_TEMPLATES[int(torch.randint(len(TRAIN_TEMPLATES), ()))].format(concept))
            continue
        before, after = (int(n) for n in torch.randint(0, config.filler_words + 1, (2,)))
        words = [FILLER_WORDS[int(i)] for i in torch.randint(len(FILLER_WORDS), (before + after,))]
        prompts.append(" ".join([*words[:before], concept, *words[before:]]))
    return prompts


def _drop(text: PromptEmbeddings, uncond: PromptEmbeddings, drop: torch.Tensor) -> PromptEmbeddings:
    """``text`` with the rows ``drop`` replaced by the unconditional (empty prompt's) conditioning, for CFG."""
    states = torch.where(drop[:, None, None], uncond.states, text.states)
    pooled = None if text.pooled is None else torch.where(drop[:, None], uncond.pooled, text.pooled)
    return PromptEmbeddings(states, pooled)


def _train_unet(config: TinySDConfig, pipe, noise_scheduler, data: dict[str, torch.Tensor], show_progress: bool):
    """Train ``pipe.unet`` in place, conditioned exactly as ``pipe`` conditions it at inference (its own prompt
    encoding; SDXL: pooled embeddings and time ids), towards the scheduler's own target; return the final loss."""

    uncond = unconditional(pipe)
    loader = DataLoader(
        TensorDataset(data["mean"], data["std"], data["labels"]), batch_size=config.batch_size, shuffle=True
    )

    def loss(model, batch) -> torch.Tensor:
        mean, std, labels = batch
        latents = (mean + std * torch.randn_like(mean)) * pipe.vae.config.scaling_factor
        text = encode(pipe, _random_prompts(labels, config))
        text = _drop(text, uncond, torch.rand(labels.shape) < config.uncond_probability)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, config.num_train_timesteps, labels.shape)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = model(noisy, timesteps, text.states, **unet_kwargs(pipe, text.pooled, len(labels))).sample
        return torch.nn.functional.mse_loss(prediction, training_target(noise_scheduler, latents, noise, timesteps))

    settings = _trainer_config(config, config.unet_steps, config.learning_rate, config.lr_warmup_steps, show_progress)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # random prompts may exceed max_length: truncated on purpose, unreported
    ema = after_step = None
    if config.ema_decay:
        ema = EMAModel(pipe.unet.parameters(), decay=config.ema_decay, use_ema_warmup=True)

        def after_step(trainer) -> None:
            ema.step(pipe.unet.parameters())

    try:
        trainer = Trainer(
            pipe.unet, settings, loader, compute_loss=loss, after_step=after_step, progress_desc="tiny SD 2/2: UNet"
        )
        result = trainer.train()
    finally:
        diffusers_logging.set_verbosity(verbosity)
    if ema is not None:
        ema.copy_to(pipe.unet.parameters())
    pipe.unet.eval().requires_grad_(False)
    return result.final_loss


def train_tiny_sd(config: TinySDConfig | None = None, show_progress: bool = True, work_dir: str | Path | None = None):
    """Train every component of a tiny Stable Diffusion from the recipe and return the pipeline.

    The recipe (with measured wall time and final losses) is attached as ``pipe.tiny_sd_recipe``;
    :func:`save_pipeline` writes it next to the components.
    """
    config = config or TinySDConfig()
    start = time.perf_counter()
    images, labels = _training_data(config)
    text = _text_components(config, work_dir)
    vae, mean, std = _train_vae(config, images, show_progress)
    noise_scheduler = _noise_scheduler(config)
    pipe = _assemble(config, text, vae, _unet(config), noise_scheduler)
    data = {"mean": mean, "std": std, "labels": labels}
    final_loss = _train_unet(config, pipe, noise_scheduler, data, show_progress)
    pipe.tiny_sd_recipe = {
        "recipe": config.to_dict(),
        "training_images": len(labels),
        "final_unet_loss": final_loss,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return pipe


def _assemble(config: TinySDConfig, text: dict[str, Any], vae, unet, noise_scheduler):
    """The family's pipeline with a DDIM scheduler. SDXL's negative prompt is the empty prompt's encoding, as in
    training (``force_zeros_for_empty_prompt=False``), and it has no watermarker."""

    scheduler = DDIMScheduler.from_config(noise_scheduler.config, set_alpha_to_one=False, steps_offset=1)
    if config.family == "sdxl":
        extra = {"force_zeros_for_empty_prompt": False, "add_watermarker": False}
    else:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    pipe = pipeline_class(config.family)(
        vae=vae, unet=unet, scheduler=scheduler, feature_extractor=None, **text, **extra
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(config: TinySDConfig | None = None, work_dir: str | Path | None = None):
    """An untrained pipeline with the recipe's architecture (random weights): for tests and shape checks."""
    config = config or TinySDConfig()
    text = _text_components(config, work_dir)
    return _assemble(config, text, _vae(config), _unet(config), _noise_scheduler(config))


def save_pipeline(pipe, directory: str | Path) -> None:
    """``save_pretrained`` (safetensors) plus the tokenizer's BPE files and the training recipe, if any."""
    directory = Path(directory)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):  # vocab.json/merges.txt for old loaders
        tokenizer = getattr(pipe, name, None)
        if tokenizer is not None:
            build_tokenizer(directory / name, tokenizer.model_max_length)
    recipe = getattr(pipe, "tiny_sd_recipe", None)
    if recipe is not None:
        (directory / RECIPE_FILE).write_text(strict_json(recipe, RECIPE_FILE, indent=2) + "\n")


def resolve_model(spec: str | Path) -> str | Path:
    """``spec`` itself, unless no such path exists and it names a shipped asset (``tiny-sd``, ...)."""
    if spec is None or Path(spec).exists():
        return spec
    asset = ASSETS / str(spec)
    return asset if (asset / "model_index.json").is_file() else spec


def recorded_training_seconds(model_dir: str | Path | None) -> float | None:
    """The training wall time the toolkit recorded next to a model it trained (``seconds`` in its recipe file), or
    None for a model without one."""
    if not model_dir:
        return None
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    what = "tiny-SD recipe"
    return require(read_json_object(path, what), "seconds", float, path, what, optional=True)


def read_recipe(model_dir: str | Path) -> TinySDConfig | None:
    """The recipe a model directory was trained with, or None when the toolkit did not train it."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.exists():
        return None
    what = "tiny-SD recipe"
    recipe = require(read_json_object(path, what), "recipe", dict, path, what)
    # a key the recipe lacks was written before the option existed: the model was trained without it
    return read_dataclass(TinySDConfig, {**RECIPE_VALUES_BEFORE_THE_KEY, **recipe}, path, what)
