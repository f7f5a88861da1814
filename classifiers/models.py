"""Classifier architectures and their on-disk format.

    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    save_model(model, "out/original")          # model.safetensors + model_config.json
    model = load_model("out/original")

A model directory holds exactly two files: the weights as safetensors and the :class:`ModelConfig` as JSON. Nothing
is ever unpickled. Every model built here carries its config as ``model.config``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import ViTConfig, ViTForImageClassification

from concept_erase.core.config import FINITE, check_numbers, config_to_dict, from_dict
from concept_erase.core.errors import CheckpointError, ConfigError, InputNotFoundError, excerpt
from concept_erase.core.io import strict_json
from concept_erase.core.readers import read_json_object
from concept_erase.core.tensorfile import save_tensors

__all__ = [
    "check_fits",
    "MODELS",
    "ModelConfig",
    "MLP",
    "SmallCNN",
    "TinyViT",
    "classifier_head",
    "build_model",
    "save_model",
    "load_model",
    "is_model_dir",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model_config.json"


_VIT_SIZES = ("patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class ModelConfig:
    """Architecture of a classifier. ``num_classes`` and ``input_shape`` are filled from the dataset when None."""

    name: str = "mlp"
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None  # (channels, height, width)
    hidden_sizes: list[int] = field(default_factory=lambda: [64])  # mlp / cnn: widths of the dense hidden layers
    channels: list[int] = field(default_factory=lambda: [16, 32])  # cnn: output channels of the conv blocks
    # vit (transformers' ViTForImageClassification at a tiny size)
    patch_size: int = 4
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128

    # the vit sizes are checked (with their own message) only for vit; other models ignore them
    NUMBER_RANGES: ClassVar[dict] = dict.fromkeys(_VIT_SIZES, FINITE)

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.name not in MODELS:
            raise ConfigError(f"unknown model {excerpt(self.name)}; accepted models: {', '.join(sorted(MODELS))}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if any(w < 1 for w in [*self.hidden_sizes, *self.channels]):
            raise ConfigError("hidden_sizes and channels must be positive")
        if self.input_shape is not None:
            self.input_shape = tuple(int(s) for s in self.input_shape)
            if len(self.input_shape) != 3:
                raise ConfigError(f"input_shape must be (channels, height, width), got {self.input_shape}")
        if self.name == "vit":
            sizes = _VIT_SIZES
            bad = [f"{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
            if bad:
                raise ConfigError(f"vit: {', '.join(bad)}; {', '.join(sizes)} must be positive")
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"vit: hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                    f"{self.num_attention_heads}"
                )
            if self.input_shape is not None and any(s % self.patch_size for s in self.input_shape[1:]):
                raise ConfigError(
                    f"vit: patch_size {self.patch_size} must divide the image size {self.input_shape[1:]}"
                )


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) per hidden size -> Linear."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        widths = [_numel(config.input_shape), *config.hidden_sizes]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """(Conv3x3 -> ReLU -> MaxPool2) per channel count, then a dense head: (Linear -> ReLU) per hidden size -> Linear.

    At the defaults on 28x28 MNIST: 16 and 32 channels, a 64-wide dense layer, 105k parameters.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        channels, height, width = config.input_shape
        chans = [channels, *config.channels]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            height, width = -(-height // 2), -(-width // 2)
        self.features = nn.Sequential(*blocks, nn.Flatten())
        widths = [chans[-1] * height * width, *config.hidden_sizes]
        dense: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            dense += [nn.Linear(w_in, w_out), nn.ReLU()]
        self.dense = nn.Sequential(*dense)
        self.head = nn.Linear(widths[-1], config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.features(x)))


class TinyViT(nn.Module):
    """transformers' ``ViTForImageClassification`` at a tiny size (the DiStruction paper's model family); returns
    the logits as a plain tensor like the other models."""

    def __init__(self, config: ModelConfig):
        super().__init__()

        self.config = config
        channels, height, width = config.input_shape
        vit_config = ViTConfig(
            image_size=(height, width),  # (H, W): non-square images too
            patch_size=config.patch_size,
            num_channels=channels,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            num_labels=config.num_classes,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.vit = ViTForImageClassification(vit_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).logits


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# name -> class taking a complete ModelConfig. New architectures register here.
MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {"mlp": MLP, "cnn": SmallCNN, "vit": TinyViT}


def classifier_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The output layer of a classifier: ``(parent module, attribute name, the nn.Linear)``.

    It is the last ``nn.Linear`` in ``named_modules()`` order (the head of every model here, of transformers' image
    classifiers and of most user models). Raises ConfigError when the model has no linear layer.
    """
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear output layer")
    if linear[-1] == "":
        raise ConfigError("the model is a bare nn.Linear: wrap it, e.g. nn.Sequential(nn.Flatten(), linear)")
    parent_name, _, attr = linear[-1].rpartition(".")
    parent = model.get_submodule(parent_name)
    return parent, attr, getattr(parent, attr)


def build_model(
    name: str | ModelConfig = "mlp",
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model from a name (plus :class:`ModelConfig` fields) or a config; the config is kept as ``.config``.

    Raises:
        ConfigError: unknown model name (the message lists the accepted ones) or missing ``num_classes`` /
            ``input_shape``.
    """
    config = name if isinstance(name, ModelConfig) else ModelConfig(name=name, **kwargs)
    if num_classes is not None:
        config = replace(config, num_classes=int(num_classes))
    if input_shape is not None:
        config = replace(config, input_shape=tuple(int(s) for s in input_shape))
    if config.num_classes is None or config.input_shape is None:
        raise ConfigError(f"model {config.name!r} needs num_classes and input_shape")
    return MODELS[config.name](config)


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model_config.json`` into ``directory`` (created if needed)."""

    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("save_model needs a model built by classifiers.models.build_model (it has no ModelConfig)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_tensors(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(strict_json(config_to_dict(config), CONFIG_NAME, indent=2) + "\n")
    return directory


def load_model(directory: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (safetensors only; nothing is unpickled).

    Raises:
        ConfigError: the directory does not exist or is not a model directory.
        CheckpointError: the files are corrupt or do not match the architecture they describe.
    """

    directory = Path(directory)
    if directory.is_file():
        raise ConfigError(f"model path {directory} is a file; a classifier model is a directory")
    if not directory.is_dir():
        raise InputNotFoundError(f"model directory not found: {directory}")
    if not is_model_dir(directory):
        raise ConfigError(
            f"{directory} is not a classifier model directory: expected {WEIGHTS_NAME} and {CONFIG_NAME} "
            "(written by `concept-erase unlearn` or a train_classifier / unlearn pipeline step)"
        )
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    try:
        model = build_model(from_dict(ModelConfig, read_json_object(config_path, "model config", CheckpointError)))
    except CheckpointError:
        raise
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:  # sizes no network can have
        raise CheckpointError(f"{config_path} describes no valid network: {str(exc).splitlines()[0][:200]}") from None
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"{weights_path} is corrupt: {str(exc).splitlines()[0][:200]}") from None
    _check_state(state, model.state_dict(), weights_path)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """Name the first tensor that is missing, unexpected or of another shape than the config's architecture."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise CheckpointError(f"{path} does not match {CONFIG_NAME}: {detail}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path} does not match {CONFIG_NAME}: {name} has shape {tuple(state[name].shape)}, "
                f"the config's architecture needs {tuple(tensor.shape)}"
            )


def check_fits(model: nn.Module, sample: torch.Tensor, num_classes: int, dataset: str, who: str = "the model") -> None:
    """Raise a one-line ConfigError when ``model`` (named ``who`` in the message) cannot take ``sample`` (a few of
    ``dataset``'s inputs) or does not give one score per class of ``num_classes``."""
    try:
        with torch.no_grad():
            out = model.eval()(sample)
    except RuntimeError as exc:
        raise ConfigError(
            f"model/dataset shape mismatch: {who} cannot take {dataset!r} inputs of shape "
            f"{tuple(sample.shape[1:])} ({str(exc).splitlines()[0][:160]})"
        ) from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ConfigError(
            f"model/dataset shape mismatch: {who} outputs {tuple(out.shape[1:])} scores per sample, "
            f"dataset {dataset!r} has {num_classes} classes"
        )


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> torch.Tensor:
    """Logits ``(N, num_classes)`` of ``dataset`` on the CPU (model in eval mode; its training mode is restored).

    Inputs go to the device of the model's first parameter. An empty dataset gives an empty ``(0, 0)`` tensor.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        logits = [model(x.to(device)).float().cpu() for x, _ in DataLoader(dataset, batch_size=batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(logits) if logits else torch.empty(0, 0)
