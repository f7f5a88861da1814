"""The judge interface of the evaluation, and the classifier that judges generated digits (never used to train or
erase anything).

    judge = load_judge()                                  # the embedded judge (concept_erase/diffusion/assets/digit-judge)
    logits, features = judge.classify(images)             # images (N, 1, H, W) in [0, 1], any H, W
    judge.labels                                          # ("zero", ..., "nine")
    judge.assess(uint8_images, prompts, concepts)         # the Judge interface: {"predicted": ..., "features": ...}

``scripts/train_judge.py`` trains it with the shared trainer on the fixed training split of real digits and records
its accuracy on the held-out split in ``judge_config.json``. Its penultimate features feed the Frechet distance.

:class:`Judge` is what the evaluation asks of any judge: the digit judge, the CLIP judge
(:mod:`concept_erase.diffusion.clip_judge`) and the NudeNet detector (:mod:`concept_erase.diffusion.nudenet_judge`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from concept_erase.core.config import check_numbers
from concept_erase.core.digits import CONCEPTS, concept_index, fixed_split, load_digit_arrays
from concept_erase.core.errors import ConfigError, InputNotFoundError, ModelLoadError
from concept_erase.core.io import strict_json
from concept_erase.core.readers import read_dataclass, read_json_object
from concept_erase.core.tensorfile import save_tensors
from concept_erase.core.trainer import Trainer, TrainerConfig

__all__ = ["DEFAULT_JUDGE", "DigitJudge", "Judge", "JudgeConfig", "load_judge", "save_judge", "train_judge"]

DEFAULT_JUDGE = Path(__file__).parent / "assets" / "digit-judge"
_CONFIG_FILE = "judge_config.json"
_WEIGHTS_FILE = "model.safetensors"


class Judge(Protocol):
    """What the evaluation asks of a judge. Images are ``(N, C, H, W)`` uint8 tensors (C = 1 or 3), as generated.

    ``assess`` returns per-image arrays under these keys, each only where the judge computes it:

    - ``predicted`` (N,): the label each image is classified as: one of ``concepts`` or another label the judge
      knows (a digit, the CLIP judge's neutral prompt); gives forget / retain accuracy;
    - ``features`` (N, D) float64: the features the Frechet distances are computed on;
    - ``clip_score`` (N,): the CLIP score of each image with its prompt;
    - ``exposed`` (N, K) bool: the NudeNet classes detected in each image.
    """

    name: str  # digits, clip or nudenet
    classifies: bool  # whether assess gives ``predicted`` (accuracies, the unseen-word baseline)

    def default_retain(self, forget: list[str]) -> list[str]:
        """The retain concepts when the user names none."""
        ...

    def check_concept(self, concept: str) -> None:
        """Raise :class:`ConfigError` (one line, the accepted values) if the judge cannot score ``concept``."""
        ...

    def assess(self, images: torch.Tensor, prompts: list[str], concepts: list[str]) -> dict[str, np.ndarray]:
        """Per-image results of ``images`` generated from ``prompts``; ``concepts``: the evaluation's concepts."""
        ...

    def real_features(self, concepts: list[str]) -> dict[str, np.ndarray] | None:
        """Features of real images of each concept (for ``frechet_to_real``), or None when there are none."""
        ...

    def summary(self, results: dict[str, dict[str, np.ndarray]], forget: list[str], retain: list[str]) -> dict:
        """Metrics beyond accuracy and Frechet distances from one model's results (by concept); a ``per_concept``
        entry is merged into the per-concept scores."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the judge is, for ``metrics.json``'s settings."""
        ...


@dataclass
class JudgeConfig:
    labels: list[str] = field(default_factory=lambda: list(CONCEPTS))
    resolution: int = 8
    channels: int = 32
    feature_dim: int = 32
    dataset: str = "digits"
    seed: int = 0
    max_train_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    noise_std: float = 0.05  # input noise during training, so slightly imperfect generations are judged robustly
    test_accuracy: float | None = None  # filled in after training, on the held-out split of real digits

    def __post_init__(self) -> None:
        check_numbers(self)


class DigitJudge(nn.Module):
    """A small CNN: two conv stages, a ``feature_dim`` penultimate layer (the Frechet features), a linear head.

    It implements :class:`Judge` on its fixed labels (the ten digits)."""

    name: ClassVar[str] = "digits"
    classifies: ClassVar[bool] = True

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        c, r = config.channels, config.resolution
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * (r // 2) ** 2, config.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(config.feature_dim, len(config.labels))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images * 2 - 1))

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = nn.functional.interpolate(images, size=(r, r), mode="area")
        return images.float().clamp(0, 1)

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)`` of ``images`` (N, C, H, W) in [0, 1]; resized to the judge's resolution."""
        self.eval()
        logits, features = [], []
        for chunk in self._resize(images).split(batch_size):
            feats = self.body(chunk * 2 - 1)
            features.append(feats)
            logits.append(self.head(feats))
        if not logits:
            return torch.empty(0, len(self.labels)), torch.empty(0, self.config.feature_dim)
        return torch.cat(logits), torch.cat(features)

    # ------------------------------------------------------------------------------------------------ Judge

    def default_retain(self, forget: list[str]) -> list[str]:
        return [label for label in self.labels if label not in forget]

    def check_concept(self, concept: str) -> None:
        concept_index(concept, self.labels)

    def assess(self, images: torch.Tensor, prompts: list[str], concepts: list[str]) -> dict[str, np.ndarray]:
        logits, features = self.classify(images.float() / 255)
        predicted = np.array(self.labels, dtype=object)[logits.argmax(1).numpy()]
        return {"predicted": predicted, "features": features.numpy().astype(np.float64)}

    def real_features(self, concepts: list[str]) -> dict[str, np.ndarray]:
        images, labels = load_digit_arrays(self.config.dataset, self.config.resolution)
        _, feats = self.classify(torch.from_numpy(images))
        feats = feats.numpy().astype(np.float64)
        return {c: feats[labels == self.labels.index(c)] for c in concepts}

    def summary(self, results: dict[str, dict[str, np.ndarray]], forget: list[str], retain: list[str]) -> dict:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "judge_test_accuracy": self.config.test_accuracy}


def save_judge(judge: DigitJudge, directory: str | Path) -> None:

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.contiguous() for k, v in judge.state_dict().items()}, str(directory / _WEIGHTS_FILE))
    (directory / _CONFIG_FILE).write_text(strict_json(asdict(judge.config), _CONFIG_FILE, indent=2) + "\n")


def load_judge(directory: str | Path | None = None) -> DigitJudge:
    """Load a judge directory (default: the embedded one)."""

    directory = Path(directory) if directory is not None else DEFAULT_JUDGE
    if not (directory / _CONFIG_FILE).is_file() or not (directory / _WEIGHTS_FILE).is_file():
        raise InputNotFoundError(
            f"{directory} is not an evaluation-classifier directory ({_CONFIG_FILE} + {_WEIGHTS_FILE})"
        )
    config_file, weights_file = directory / _CONFIG_FILE, directory / _WEIGHTS_FILE
    what = "judge config"
    config = read_dataclass(JudgeConfig, read_json_object(config_file, what), config_file, what)
    if not config.labels or not all(isinstance(label, str) for label in config.labels):
        raise ConfigError(f"{what} {config_file} is corrupt: 'labels' must be a non-empty list of strings")
    try:
        judge = DigitJudge(config)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{what} {config_file} describes no valid network: {str(exc).splitlines()[0][:200]}"
        ) from None
    try:
        state = load_file(str(weights_file))
    except Exception as exc:  # safetensors raises assorted types for a damaged file
        raise ModelLoadError(f"judge weights {weights_file} are corrupt: {str(exc).splitlines()[0][:200]}") from None
    try:
        judge.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"judge weights {weights_file} do not fit {config_file}: {detail}") from None
    return judge.eval()


def train_judge(config: JudgeConfig | None = None, show_progress: bool = True) -> DigitJudge:
    """Train a judge on the fixed training split and record its held-out accuracy in ``config.test_accuracy``."""

    config = config or JudgeConfig()
    images, labels = load_digit_arrays(config.dataset, config.resolution)
    train_idx, test_idx = fixed_split(labels)
    torch.manual_seed(config.seed)
    judge = DigitJudge(config)
    data = TensorDataset(torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]))
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True)
    noise = torch.Generator().manual_seed(config.seed)

    def loss(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        x = (x + config.noise_std * torch.randn(x.shape, generator=noise)).clamp(0, 1)
        return nn.functional.cross_entropy(model(x), y)

    trainer_config = TrainerConfig(
        max_train_steps=config.max_train_steps,
        learning_rate=config.learning_rate,
        lr_scheduler="cosine",
        seed=config.seed,
        show_progress=show_progress,
    )
    Trainer(judge, trainer_config, loader, compute_loss=loss).train()
    logits, _ = judge.classify(torch.from_numpy(images[test_idx]))
    config.test_accuracy = float((logits.argmax(1).numpy() == labels[test_idx]).mean())
    return judge.eval()
