"""DiStruction: forgetting without repair, by a KL penalty to a Bayesian posterior prepared after training.

Dugue et al., "Machine Unlearning Without Repair using DiStruction" (2024). Two steps:

1. **Preparation** (:mod:`classifiers.distruction.bgd`), once after training while the training data is still
   there and before any forget set is known: Bayesian Gradient Descent learns a sigma per weight around the trained
   weights (the mean, unchanged). Saved as a "prepared" artifact (``prepared.safetensors`` + ``prepared.json``).
2. **Forgetting**, reading the forget set only (never ``task.retain``): the forget model's Gaussians ``q`` (mean and
   log-sigma, starting at the prepared ``p``) minimise ``(1 - kl_weight) * |D_f| * E_q[U(batch)] + kl_weight *
   KL(q || p)`` with the diagonal-Gaussian KL in closed form and ``E_q`` by the reparameterisation trick
   (``mc_samples`` draws per step). ``kl_weight`` is the paper's lambda, in [0, 1]. ``U`` (``objective``) is the
   per-sample mean of ``grad_ascent`` (-CE), ``random_label`` (CE to random other labels), ``max_entropy``
   (KL(prediction || uniform)), ``bad_teacher`` (KL(incompetent teacher || student), the teacher being the model
   re-initialised with ``seed``) or ``boundary_shrink`` (CE to the FGSM nearest-wrong labels). Scaling U by |D_f|
   makes ``kl_weight: 0.5`` the variational free energy of the forget objective. The unlearned model's weights are
   the learned **mean** (sigma is only used during forgetting; the KL per step is in the summary's ``kl_history``).
   With ``mask: saliency`` the frozen means stay bit-identical (their sigmas may still move; they are not kept).

Without ``prepared_path`` the method prepares the model itself, on ``task.retain + task.forget`` put back in training
order (together they are exactly the training set the original saw, as preparation conceptually precedes any forget
request), says so, and caches the artifact under ``$CONCEPT_ERASE_CACHE/classifiers`` keyed by the weights, the data
and the BGD settings. That time is returned as ``prepare_seconds`` and as ``excluded_seconds``, which the harness
leaves out of the unlearning time (``cost_ratio``). ``require_prepared: true`` refuses to prepare on the fly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from classifiers.data import UnlearningTask
from classifiers.distruction.bgd import BGDConfig, PreparedPosterior, prepare_model, weights_digest
from classifiers.masking import MaskOptions, prepare_mask
from classifiers.methods.boundary_shrink import neighbour_labels
from classifiers.methods.random_label import random_labels
from classifiers.training import UnlearningConfig, fit_method, fit_summary, reinitialise
from concept_erase.core.config import Range, check_numbers
from concept_erase.core.errors import ConfigError, excerpt
from concept_erase.core.io import atomic_output_dir, cache_dir
from concept_erase.core.registry import register_method

__all__ = ["OBJECTIVES", "DistructionConfig", "distruction", "gaussian_kl"]

OBJECTIVES = ("grad_ascent", "random_label", "max_entropy", "bad_teacher", "boundary_shrink")
PREPARE_HINT = (
    "prepare it once after training, with its training data: `concept-erase distruction prepare --dataset D "
    "--model M [--weights W] --output DIR` or classifiers.distruction.bgd.prepare_model(model, train_set).save(DIR), "
    "then pass prepared_path: DIR"
)


@dataclass
class DistructionConfig(UnlearningConfig, MaskOptions):
    epochs: int = 3  # passes over the forget set
    min_steps: int = 18  # 3 epochs of mnist5k's forget class (375 samples, 6 batches): scales to small forget sets
    learning_rate: float = 1e-3  # Adam, on the mean and on log-sigma
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: ClassVar[float] = 0.9  # not a key (sgd only)
    weight_decay: ClassVar[float] = 0.0  # not a key
    max_grad_norm: float | None = None  # the loss is in summed units (|D_f| * U + KL): no clipping
    objective: str = "boundary_shrink"  # U: one of OBJECTIVES
    kl_weight: float = 0.5  # the paper's lambda in [0, 1]: 0 = forget objective only, 1 = stay at the prepared model
    mc_samples: int = 1  # weight samples per step for E_q[U]
    fgsm_bound: float = 0.1  # boundary_shrink objective: FGSM radius
    prepared_path: str | None = None  # a prepared artifact (directory); none: prepare here (see the docstring)
    require_prepared: bool = False  # refuse to prepare on the fly
    cache_prepared: bool = True  # cache artifacts prepared on the fly
    prepare_epochs: int = 1
    prepare_mc_samples: int = 2
    prepare_batch_size: int = 128
    prepare_init_sigma: float = 0.06

    NUMBER_RANGES: ClassVar[dict] = {"kl_weight": Range(0, 1, label="lambda")}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {excerpt(self.objective)}; accepted: {', '.join(OBJECTIVES)}")
        if self.prepared_path == "":
            self.prepared_path = None
        self.bgd()  # validate the preparation keys now

    def bgd(self) -> BGDConfig:
        return BGDConfig(
            epochs=self.prepare_epochs,
            mc_samples=self.prepare_mc_samples,
            batch_size=self.prepare_batch_size,
            init_sigma=self.prepare_init_sigma,
            seed=self.seed,
        )


def gaussian_kl(mu_q, sigma_q, mu_p, sigma_p) -> torch.Tensor:
    """``KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2))`` summed over entries, in closed form."""
    ratio = (sigma_q / sigma_p) ** 2
    return 0.5 * (ratio + ((mu_q - mu_p) / sigma_p) ** 2 - 1 - torch.log(ratio)).sum()


class _Gaussians(nn.Module):
    """``q``: the model (its parameters are the means, trained in place) and a log-sigma per parameter."""

    def __init__(self, model: nn.Module, prior: PreparedPosterior):
        super().__init__()
        self.mean = model
        self.log_sigma = copy.deepcopy(model)
        for name, param in self.log_sigma.named_parameters():
            param.data = prior.sigma[name].to(param.device, param.dtype).log()
        # sigma_p as exp(log sigma_p), as q's sigma is computed: KL and its gradient are exactly 0 at the start
        prior_sigma = {n: s.log().exp() for n, s in prior.sigma.items()}
        self.prior = [(prior.mean[n].to(p.device), prior_sigma[n].to(p.device)) for n, p in model.named_parameters()]

    def pairs(self):
        return zip(self.mean.named_parameters(), self.log_sigma.parameters(), self.prior)

    def kl(self) -> torch.Tensor:
        return sum(gaussian_kl(mu, ls.exp(), mp, sp) for (_, mu), ls, (mp, sp) in self.pairs())

    def sample_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        theta = {n: mu + ls.exp() * torch.randn_like(mu) for (n, mu), ls, _ in self.pairs()}
        return functional_call(self.mean, theta, (inputs,))


def _forget_loss(objective: str):
    log_softmax = nn.functional.log_softmax

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if objective == "grad_ascent":
            return -nn.functional.cross_entropy(logits, targets)
        if objective == "max_entropy":  # KL(p || uniform) = log C - H(p)
            logp = log_softmax(logits, dim=1)
            return (logp.exp() * logp).sum(dim=1).mean() + torch.log(torch.tensor(float(logits.shape[1])))
        if objective == "bad_teacher":  # KL(teacher || student)
            return nn.functional.kl_div(log_softmax(logits, dim=1), targets, reduction="batchmean")
        return nn.functional.cross_entropy(logits, targets)

    return loss


def _targets(model: nn.Module, task: UnlearningTask, config: DistructionConfig) -> torch.Tensor:
    """What U compares the forget samples' outputs with (labels or, for bad_teacher, probabilities)."""
    inputs, labels = task.forget.tensors
    if config.objective == "random_label":
        return random_labels(labels, task.num_classes, config.seed, exclude_true_label=task.classwise)
    if config.objective == "boundary_shrink":
        return neighbour_labels(model, task.forget, config.fgsm_bound)[0]
    if config.objective == "bad_teacher":
        teacher = copy.deepcopy(model)
        reinitialise(teacher, config.seed + 1)
        with torch.no_grad():
            return torch.softmax(teacher.eval()(inputs), dim=1)
    return labels


def _prepared(model: nn.Module, task: UnlearningTask, config: DistructionConfig) -> tuple[PreparedPosterior, dict]:
    """The prepared posterior (given, cached or made now) and how it was obtained."""
    if config.prepared_path is not None:
        prior = PreparedPosterior.load(config.prepared_path, model)
        return prior, {"source": str(Path(config.prepared_path).absolute()), "prepare_seconds": 0.0}
    if config.require_prepared:
        raise ConfigError(f"distruction: the model has not been prepared (require_prepared: true); {PREPARE_HINT}")

    train = task.training_data()  # read here, for preparation only: forgetting below reads task.forget alone
    key = {"weights": weights_digest(dict(model.named_parameters())), "bgd": config.bgd().__dict__}
    data = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in train.tensors)).hexdigest()[:16]
    digest = hashlib.sha256(json.dumps({**key, "data": data}, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "classifiers" / f"distruction-prepared-{digest}"
    if config.cache_prepared and path.is_dir():
        print(f"distruction: using the prepared artifact cached at {path}", flush=True)
        return PreparedPosterior.load(path, model), {"source": str(path), "prepare_seconds": 0.0, "cached": True}
    print(
        f"distruction: no prepared artifact given: preparing the model with BGD on its training data "
        f"({len(train)} samples, {config.prepare_epochs} epoch(s) x {config.prepare_mc_samples} samples)",
        flush=True,
    )
    start = time.perf_counter()
    prior = prepare_model(model, train, config.bgd())
    seconds = time.perf_counter() - start
    if config.cache_prepared:
        with atomic_output_dir(path, overwrite=True) as tmp:
            prior.save(tmp)
    return prior, {"source": str(path) if config.cache_prepared else None, "prepare_seconds": round(seconds, 4)}


@register_method("distruction", DistructionConfig, tags=("classifier",))
def distruction(
    model: nn.Module, task: UnlearningTask, config: DistructionConfig, *, work_dir: Path | None = None
) -> dict:
    """DiStruction (Dugue et al., 2024): forget with a KL penalty to the prepared posterior, without retain data."""
    prior, prepared = _prepared(model, task, config)
    start = time.perf_counter()
    targets = _targets(model, task, config)
    applier, mask_info = prepare_mask(model, task, config, seed=config.seed)
    gaussians = _Gaussians(model, prior)
    u_fn, weight, n_forget = _forget_loss(config.objective), config.kl_weight, len(task.forget)
    history: list[float] = []

    def loss_fn(module: _Gaussians, batch) -> torch.Tensor:
        inputs, target = batch
        u = sum(u_fn(module.sample_forward(inputs), target) for _ in range(config.mc_samples)) / config.mc_samples
        kl = module.kl()
        history.append(round(float(kl.detach()), 4))
        return (1 - weight) * n_forget * u + weight * kl

    result = fit_method(
        gaussians,
        TensorDataset(task.forget.tensors[0], targets),
        config,
        name="distruction",
        applier=applier,
        loss_fn=loss_fn,
        work_dir=work_dir,
    )
    model.eval()
    with torch.no_grad():
        final_kl = float(gaussians.kl())
    return fit_summary(
        "distruction",
        result,
        objective=config.objective,
        kl_weight=config.kl_weight,
        kl_history=history,
        final_kl=round(final_kl, 4),
        prepared=prepared,
        prepare_seconds=prepared["prepare_seconds"],
        excluded_seconds=prepared["prepare_seconds"],
        forget_seconds=round(time.perf_counter() - start, 4),
        mask=mask_info,
    )
