"""Datasets and unlearning tasks for the classifier side.

    splits = load_dataset("digits", seed=0, test_size=0.25)
    task = make_class_task(splits, forget_classes=[7])   # full-class forgetting
    task.forget, task.retain, task.test_retain, task.test_forget   # TensorDatasets

The embedded dataset is scikit-learn's ``load_digits`` (1,797 8x8 images, shipped inside the package, no download),
so every method can be trained, unlearned and compared with a retrained model on a laptop CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from concept_erase.errors import ConfigError, EmptyDataError

__all__ = ["DATASETS", "DatasetSplits", "UnlearningTask", "load_dataset", "make_class_task", "subset_by_class"]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's fixed train/test split: ``(N, C, H, W)`` float32 images in [0, 1] and int64 labels."""

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from concept_erase.digits import load_digit_arrays

    return load_digit_arrays("digits")  # (N, 1, 8, 8) in [0, 1]: the same arrays the diffusion side uses


# name -> loader returning (images (N, C, H, W) float32 in [0, 1], labels int64). Issue-5 datasets add entries here.
DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"digits": _load_digits}


def load_dataset(name: str = "digits", seed: int = 0, test_size: float = 0.25) -> DatasetSplits:
    """Load ``name`` and split it with a fixed, seeded, class-stratified split.

    Raises:
        ConfigError: unknown dataset name (the message lists the accepted names) or ``test_size`` outside (0, 1).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; accepted datasets: {', '.join(sorted(DATASETS))}")
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    from sklearn.model_selection import train_test_split

    images, labels = DATASETS[name]()
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    as_ds = lambda x, y: TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))  # noqa: E731
    return DatasetSplits(
        name=name,
        train=as_ds(x_train, y_train),
        test=as_ds(x_test, y_test),
        num_classes=int(labels.max()) + 1,
        input_shape=tuple(images.shape[1:]),
    )


def subset_by_class(dataset: TensorDataset, classes: Sequence[int], keep: bool = True) -> TensorDataset:
    """The samples of ``dataset`` whose label is in ``classes`` (``keep=True``) or not in them (``keep=False``)."""
    inputs, labels = dataset.tensors
    member = torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))
    index = member if keep else ~member
    return TensorDataset(inputs[index], labels[index])


@dataclass(frozen=True)
class UnlearningTask:
    """What to forget: a dataset split into forget / retain sets (train) and their test counterparts.

    This release implements full-class forgetting (every training sample of ``forget_classes``). Methods only read
    ``forget`` and ``retain`` (and may look at ``num_classes``); evaluation also uses the test sets.
    """

    dataset: str
    num_classes: int
    input_shape: tuple[int, ...]
    forget_classes: tuple[int, ...]
    forget: TensorDataset
    retain: TensorDataset
    test_forget: TensorDataset
    test_retain: TensorDataset
    test: TensorDataset


def make_class_task(splits: DatasetSplits, forget_classes: Sequence[int]) -> UnlearningTask:
    """Full-class forgetting of ``forget_classes`` on ``splits``.

    Raises:
        ConfigError: no class given, or a class outside ``0..num_classes-1``.
        EmptyDataError: forgetting would leave no class to retain.
    """
    classes = tuple(sorted({int(c) for c in forget_classes}))
    if not classes:
        raise ConfigError("forget_classes is empty: name at least one class to forget")
    bad = [c for c in classes if not 0 <= c < splits.num_classes]
    if bad:
        raise ConfigError(
            f"forget_classes {bad} out of range for dataset {splits.name!r} with classes 0..{splits.num_classes - 1}"
        )
    if len(classes) == splits.num_classes:
        raise EmptyDataError("forget_classes names every class: nothing would be retained")
    return UnlearningTask(
        dataset=splits.name,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        forget_classes=classes,
        forget=subset_by_class(splits.train, classes, keep=True),
        retain=subset_by_class(splits.train, classes, keep=False),
        test_forget=subset_by_class(splits.test, classes, keep=True),
        test_retain=subset_by_class(splits.test, classes, keep=False),
        test=splits.test,
    )
