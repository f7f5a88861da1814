"""Bayesian Gradient Descent (BGD) preparation: a diagonal Gaussian around a trained model, for DiStruction.

Zeno et al., "Task agnostic continual learning using online variational Bayes" (2018). Every parameter becomes an
independent Gaussian ``N(mu, sigma^2)``. Here ``mu`` is the trained weight and stays fixed (inference is unchanged);
only ``sigma`` is learned, with BGD's closed-form update from Monte Carlo samples ``theta = mu + sigma * eps``::

    E = mean over K samples of  g * eps,   g = d L_batch / d theta   (L_batch: the batch-SUMMED cross-entropy)
    sigma <- sigma * sqrt(1 + (sigma * E / 2)^2) - sigma^2 * E / 2

To first order ``E = sigma * h`` (``h`` the batch's summed curvature), so ``1 / sigma^2`` grows by ``h`` per batch:
one epoch with summed gradients gives the Laplace-like posterior ``1/sigma^2 = 1/sigma_0^2 + N * H`` of the whole
training set. Weights the data pins down get a small sigma, free ones keep ``sigma_0``. That is why the default is
one epoch (more epochs count the data twice) and why the gradient is summed, not averaged.

One departure from BGD: sigma is capped at ``init_sigma`` (``cap_at_init``). In BGD the mean moves too; with the mean
held at a minimum, a negative Monte Carlo estimate of ``E[g * eps]`` (noise from few samples, or negative curvature)
only inflates sigma, and on mnist5k a few first-layer sigmas grew until a weight sample made the gradients explode
(``E ~ 1e26``). Under a convex likelihood the posterior is never wider than the prior, so the cap loses nothing.

    posterior = prepare_model(model, train_set, BGDConfig())      # model untouched
    posterior.save("prepared/")                                   # prepared.safetensors + prepared.json
    posterior = PreparedPosterior.load("prepared/", model)        # refuses another architecture or other weights
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from concept_erase.core.config import check_numbers
from concept_erase.core.errors import CheckpointError, ConfigError, EmptyDataError, InputNotFoundError, TrainingError
from concept_erase.core.io import write_json
from concept_erase.core.readers import first_line, read_json_object, require
from concept_erase.core.tensorfile import save_tensors

__all__ = [
    "BGDConfig",
    "PreparedPosterior",
    "architecture_fingerprint",
    "bgd_sigma_update",
    "prepare_model",
    "weights_digest",
]

WEIGHTS_FILE = "prepared.safetensors"
INFO_FILE = "prepared.json"


@dataclass
class BGDConfig:
    """How BGD prepares a model (see the module docstring)."""

    epochs: int = 1  # passes over the training set (summed gradients: 1 = the whole data set counted once)
    mc_samples: int = 3  # Monte Carlo weight samples per batch (BGD: 10; the distruction method prepares with 2)
    batch_size: int = 128
    init_sigma: float = 0.06  # BGD's range: 0.01-0.06
    cap_at_init: bool = True  # sigma <= init_sigma (see the module docstring)
    seed: int = 0

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.epochs < 1 or self.mc_samples < 1 or self.batch_size < 1:
            raise ConfigError("BGD epochs, mc_samples and batch_size must be >= 1")
        if not self.init_sigma > 0:
            raise ConfigError(f"BGD init_sigma must be > 0, got {self.init_sigma}")


def bgd_sigma_update(sigma: torch.Tensor, e_grad_eps: torch.Tensor) -> torch.Tensor:
    """BGD's sigma step: ``sigma * sqrt(1 + (sigma * E / 2)^2) - sigma^2 * E / 2`` with ``E = E[g * eps]``.

    Computed as ``sigma * (sqrt(1 + h^2) - h)`` with ``h = sigma * E / 2``, and for ``h > 0`` as the equal
    ``sigma / (sqrt(1 + h^2) + h)``: the literal difference cancels to 0 in float32 once ``h`` is large (a weight
    with a very sharp loss), the quotient does not.
    """
    half = sigma * e_grad_eps / 2
    root = torch.hypot(torch.ones_like(half), half)  # sqrt(1 + h^2) without overflow
    return torch.where(half > 0, sigma / (root + half), sigma * (root - half))


def architecture_fingerprint(model: nn.Module) -> dict:
    """The model's class and parameter shapes, and a short hash of them."""
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    described = {"class": type(model).__qualname__, "parameters": shapes}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return {**described, "sha256": digest}


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A short hash of the parameter values (tells a prepared artifact which trained weights it belongs to)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(eq=False)
class PreparedPosterior:
    """The prepared Gaussians: ``mean`` (the trained weights) and ``sigma`` per parameter name, and how they were made."""

    mean: dict[str, torch.Tensor]
    sigma: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        """Write ``prepared.safetensors`` (``mean/NAME``, ``sigma/NAME``) and ``prepared.json`` into ``directory``."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"mean/{k}": v.contiguous() for k, v in self.mean.items()}
        tensors.update({f"sigma/{k}": v.contiguous() for k, v in self.sigma.items()})
        save_tensors(tensors, str(directory / WEIGHTS_FILE))
        write_json(directory / INFO_FILE, self.info)
        return directory

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> PreparedPosterior:
        """Load a prepared artifact (its directory or its ``prepared.safetensors``) for ``model``.

        Raises CheckpointError when it was prepared for another architecture or from other trained weights.
        """

        path = Path(path)
        directory = path.parent if path.suffix == ".safetensors" else path
        if not (directory / WEIGHTS_FILE).is_file() or not (directory / INFO_FILE).is_file():
            raise InputNotFoundError(f"no prepared artifact at {path} (expected {WEIGHTS_FILE} and {INFO_FILE})")
        info_file, weights_file = directory / INFO_FILE, directory / WEIGHTS_FILE
        what = "prepared artifact record"
        info = read_json_object(info_file, what, CheckpointError)
        got = require(info, "architecture", dict, info_file, what, CheckpointError)
        require(info, "weights_sha256", str, info_file, what, CheckpointError)
        expected = architecture_fingerprint(model)
        if got.get("sha256") != expected["sha256"]:
            raise CheckpointError(
                f"{directory} was prepared for another model ({got.get('class')}, architecture {got.get('sha256')}); "
                f"this model is {expected['class']} (architecture {expected['sha256']}): prepare this model instead"
            )
        try:
            tensors = load_file(str(weights_file))
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise CheckpointError(f"prepared artifact {weights_file} is corrupt: {first_line(exc)}") from None
        params = dict(model.named_parameters())
        mean, sigma = {}, {}
        for k in expected["parameters"]:
            for kind, into in (("mean", mean), ("sigma", sigma)):
                key = f"{kind}/{k}"
                if key not in tensors:
                    raise CheckpointError(f"prepared artifact {weights_file} is corrupt: the tensor {key!r} is missing")
                tensor = tensors[key]
                if tensor.shape != params[k].shape or not tensor.is_floating_point():
                    raise CheckpointError(
                        f"prepared artifact {weights_file} is corrupt: {key!r} is a {tensor.dtype} tensor of shape "
                        f"{tuple(tensor.shape)}, the model needs a float tensor of shape {tuple(params[k].shape)}"
                    )
                into[k] = tensor
            if not (torch.isfinite(sigma[k]).all() and (sigma[k] > 0).all()):
                raise CheckpointError(
                    f"prepared artifact {weights_file} is corrupt: sigma/{k} has non-positive or non-finite entries"
                )
        current = weights_digest({k: p for k, p in model.named_parameters()})
        if info.get("weights_sha256") != current:
            raise CheckpointError(
                f"{directory} was prepared from other trained weights (weights {info.get('weights_sha256')}, this "
                f"model's {current}): prepare this model, with the data it was trained on"
            )
        return cls(mean, sigma, info)


def _check_sigma(name: str, sigma: torch.Tensor, step: int) -> None:
    bad = ~torch.isfinite(sigma) | (sigma <= 0)
    if bad.any():
        value = float(sigma[bad][0])
        raise TrainingError(
            f"BGD preparation: sigma of {name!r} became {value:g} at step {step} ({int(bad.sum())} entries); "
            "lower init_sigma or use a larger batch / fewer epochs"
        )


def _sum_grad_eps(model, mean, sigma, inputs, labels, generator, samples: int) -> dict[str, torch.Tensor]:
    """``sum over samples of g * eps`` for one batch, with ``g`` the gradient of the summed cross-entropy."""
    total = {k: torch.zeros_like(v) for k, v in mean.items()}
    for _ in range(samples):
        eps = {k: torch.randn(v.shape, generator=generator).to(v.device) for k, v in mean.items()}
        theta = {k: (mean[k] + sigma[k] * eps[k]).requires_grad_(True) for k in mean}
        loss = nn.functional.cross_entropy(functional_call(model, theta, (inputs,)), labels, reduction="sum")
        grads = torch.autograd.grad(loss, list(theta.values()))
        for (k, e), g in zip(eps.items(), grads):
            total[k] += g * e
    return total


def prepare_model(model: nn.Module, dataset: TensorDataset, config: BGDConfig | None = None, log=None):
    """Learn BGD sigmas around ``model``'s weights on ``dataset`` (its training data); ``model`` is not changed."""
    config = config or BGDConfig()
    if len(dataset) == 0:
        raise EmptyDataError("BGD preparation needs the training data: the data set is empty")
    start = time.perf_counter()
    was_training = model.training
    model.eval()  # the original's inference behaviour (no dropout); the models here have no batch norm
    mean = {k: p.detach().clone() for k, p in model.named_parameters()}
    sigma = {k: torch.full_like(v, config.init_sigma) for k, v in mean.items()}
    generator = torch.Generator().manual_seed(config.seed)
    inputs, labels = dataset.tensors
    device = next(iter(mean.values())).device
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for begin in range(0, len(order), config.batch_size):
            index = order[begin : begin + config.batch_size]
            x, y = inputs[index].to(device), labels[index].to(device)
            total = _sum_grad_eps(model, mean, sigma, x, y, generator, config.mc_samples)
            step += 1
            for k in sigma:
                sigma[k] = bgd_sigma_update(sigma[k], total[k] / config.mc_samples)
                if config.cap_at_init:
                    sigma[k] = sigma[k].clamp(max=config.init_sigma)
                _check_sigma(k, sigma[k], step)
    model.train(was_training)
    seconds = time.perf_counter() - start
    flat = torch.cat([s.flatten() for s in sigma.values()])
    info = {
        "format": 1,
        "method": "distruction-bgd",
        "architecture": architecture_fingerprint(model),
        "weights_sha256": weights_digest(mean),
        "bgd": asdict(config),
        "train_samples": len(labels),
        "steps": step,
        "seconds": round(seconds, 4),
        "sigma": {"min": float(flat.min()), "mean": float(flat.mean()), "max": float(flat.max())},
    }
    if log is not None:
        log(f"BGD preparation: {step} steps x {config.mc_samples} samples in {seconds:.1f} s")
    return PreparedPosterior({k: v.cpu() for k, v in mean.items()}, {k: v.cpu() for k, v in sigma.items()}, info)
