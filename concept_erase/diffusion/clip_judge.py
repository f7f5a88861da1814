"""A CLIP judge for real checkpoints: zero-shot classification, CLIP score and CLIP features for Frechet distances.

    judge = load_clip_judge("openai/clip-vit-large-patch14")     # or a local directory saved with save_pretrained
    results = judge.assess(images, prompts, ["van gogh", "monet"])

Each image is classified among the evaluation's concepts (``label_template.format(concept)``, default
``"a photo of {}"``) and a neutral prompt (default ``"a photo"``): an image of a forgotten concept that now looks like
nothing in particular is labelled neutral, so forget accuracy can fall without the image being called another concept.
The CLIP score of an image is ``100 * max(cos(image, its prompt), 0)``, as torchmetrics defines it; the Frechet
features are CLIP's projected image embeddings.

Weights are loaded from safetensors only. A hub id is looked up in the local cache first, then on the Hub; one that
cannot be loaded is refused with one line naming it (:class:`ModelLoadError`) before anything is generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import CLIPModel, CLIPProcessor

from concept_erase.core.errors import ConfigError, ModelLoadError
from concept_erase.core.readers import first_line
from concept_erase.diffusion.families import quiet_loading
from concept_erase.diffusion.loading import concept_token_ids, looks_like_hub_id

__all__ = ["DEFAULT_CLIP_MODEL", "ClipJudge", "clip_score", "load_clip_judge"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics' CLIPScore default


def _embeds(output: Any) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, an output object in 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score ``100 * max(cos, 0)`` of matching rows (torchmetrics' definition)."""
    cos = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
    return 100 * cos.clamp(min=0)


class ClipJudge:
    """Zero-shot CLIP classification among the evaluation's concepts and a neutral prompt (implements ``Judge``)."""

    name: ClassVar[str] = "clip"
    classifies: ClassVar[bool] = True

    def __init__(
        self, model, processor, source: str, label_template: str = "a photo of {}", neutral_prompt: str = "a photo"
    ):
        if "{}" not in label_template:
            raise ConfigError(f"clip_template must contain '{{}}' (where the concept goes), got {label_template!r}")
        self.model, self.processor, self.source = model.eval(), processor, source
        self.label_template, self.neutral_prompt = label_template, neutral_prompt
        self.batch_size = 64
        self._label_features: dict[tuple[str, ...], torch.Tensor] = {}  # the class texts' embeddings, by texts

    def default_retain(self, forget: list[str]) -> list[str]:
        return []  # CLIP knows no fixed label set: retain concepts are named (or come from the prompt file)

    def check_concept(self, concept: str) -> None:
        if concept == self.neutral_prompt.strip().lower():
            raise ConfigError(f"concept {concept!r} is the CLIP judge's neutral prompt; choose another neutral_prompt")
        concept_token_ids(self.processor.tokenizer, self.label_template.format(concept))

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of uint8 images ``(N, C, H, W)`` (C = 1 is repeated to RGB)."""
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        out = []
        for chunk in images.split(self.batch_size):
            arrays = list(chunk.permute(0, 2, 3, 1).numpy())
            pixels = self.processor.image_processor(images=arrays, return_tensors="pt").pixel_values
            out.append(_embeds(self.model.get_image_features(pixel_values=pixels)))
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (texts longer than the tokenizer's context are truncated, as torchmetrics does)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor.tokenizer(
                texts[start : start + self.batch_size], padding=True, truncation=True, return_tensors="pt"
            )
            out.append(_embeds(self.model.get_text_features(**tokens)))
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    def assess(self, images: torch.Tensor, prompts: list[str], concepts: list[str]) -> dict[str, np.ndarray]:
        image = self.image_features(images)
        labels = [*concepts, self.neutral_prompt]
        texts = (*(self.label_template.format(c) for c in concepts), self.neutral_prompt)
        if texts not in self._label_features:  # the same classes for every concept and model of an evaluation
            self._label_features[texts] = torch.nn.functional.normalize(self.text_features(list(texts)), dim=-1)
        sims = torch.nn.functional.normalize(image, dim=-1) @ self._label_features[texts].T
        return {
            "predicted": np.array(labels, dtype=object)[sims.argmax(1).numpy()],
            "features": image.numpy().astype(np.float64),
            "clip_score": clip_score(image, self.text_features(prompts)).numpy().astype(np.float64),
        }

    def real_features(self, concepts: list[str]) -> None:
        return None  # no real images of arbitrary concepts: Frechet distances are to the original model's images

    def summary(self, results: dict[str, dict[str, np.ndarray]], forget: list[str], retain: list[str]) -> dict:
        def mean(concepts: list[str]) -> float | None:
            scores = [results[c]["clip_score"] for c in concepts]
            return float(np.concatenate(scores).mean()) if scores else None

        return {
            "clip_score": mean(retain),  # of the retain prompts: higher is better
            "clip_score_forget": mean(forget),  # of the forgotten concepts' prompts: lower means erased
            "per_concept": {c: {"clip_score": mean([c])} for c in [*forget, *retain]},
        }

    def describe(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "clip_model": self.source,
            "clip_template": self.label_template,
            "neutral_prompt": self.neutral_prompt,
        }


def _from_pretrained(source: str, local_only: bool):
    with quiet_loading():
        model = CLIPModel.from_pretrained(source, use_safetensors=True, local_files_only=local_only)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=local_only)
    return model, processor


def load_clip_judge(
    source: str | Path = DEFAULT_CLIP_MODEL, label_template: str = "a photo of {}", neutral_prompt: str = "a photo"
) -> ClipJudge:
    """A :class:`ClipJudge` from a hub id (the local cache first, then the Hub) or a local directory."""
    source = str(source)
    hub = looks_like_hub_id(source)
    if not hub and not (Path(source) / "config.json").is_file():
        what = "does not exist" if not Path(source).exists() else "is not a CLIP model directory (no config.json)"
        raise ModelLoadError(f"CLIP model {source} {what}: give a hub id or a directory saved with save_pretrained")
    attempts = (True, False) if hub else (False,)
    for local_only in attempts:
        try:
            model, processor = _from_pretrained(source, local_only)
            break
        except (OSError, ValueError, TypeError, KeyError) as exc:
            error = exc
    else:
        where = "hub id" if hub else "directory"
        raise ModelLoadError(
            f"could not load the CLIP judge from {where} {source} (needs a CLIPModel with safetensors weights and "
            f"its processor; offline, a hub id must be in the local cache): {first_line(error)}"
        ) from None
    return ClipJudge(model, processor, source, label_template, neutral_prompt)
