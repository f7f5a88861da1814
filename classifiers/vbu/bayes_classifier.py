"""VBU beyond GPs: EUBO and rKL on a mean-field Gaussian posterior over the weights of a Bayes-by-backprop MLP.

The classifier is an MLP ``64 -> hidden -> classes`` on flattened 8x8 digits with weights ``theta`` (a flat vector),
prior ``N(0, prior_std^2 I)`` and a mean-field posterior ``q(theta) = N(mu, diag(sigma^2))``, ``sigma = softplus(rho)``,
fitted by maximising the ELBO with Adam (full batch, ``vi_samples`` seeded reparameterised draws per step). The
original model is VI on the training set, the retrain oracle the same VI on the retain set.

- **EUBO**: ``min_{q_u} E_{q_u}[log p_adj(D_e|theta; lambda)] + KL[q_u || q(theta|D)]`` (Adam from ``q(theta|D)``);
- **rKL**: moment matching of ``p~ ∝ q(theta|D) / p_adj(D_e|theta; lambda)`` by self-normalised importance sampling
  from ``q(theta|D)`` (mean-field: weighted means and variances; the ESS is reported).

The adjusted region ``q(theta|D) > lambda max q`` is ``sum_i ((theta_i - mu_i)/sigma_i)^2 < -2 log lambda``. Samples
of a ``d``-dimensional Gaussian lie at squared distance about ``d`` (here ~2,400), so any ``lambda`` above
``exp(-d/2)`` (which underflows to 0 in float64) keeps no sample: only ``lambda = 0`` (full unlearning) is
informative for a network, and ``lambda = 1`` is no unlearning. Scored with :func:`classifiers.metrics.unlearning_metrics`
(the predictive model is the Monte Carlo mean of the softmax over ``predict_samples`` seeded weight draws).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from classifiers.data import load_dataset, make_task
from classifiers.metrics import unlearning_metrics
from classifiers.vbu.unlearn import check_lambda, in_adjusted_region
from concept_erase.core.config import check_numbers

__all__ = ["BayesMLP", "DigitsConfig", "fit_vi", "eubo_meanfield", "rkl_meanfield", "run_digits"]


class BayesMLP(nn.Module):
    """Mean-field Gaussian weights; ``forward`` returns log of the MC-averaged softmax (usable as logits)."""

    def __init__(self, in_dim: int, hidden: int, classes: int, predict_samples: int = 32, seed: int = 0):
        super().__init__()
        self.shapes = [(hidden, in_dim), (hidden,), (classes, hidden), (classes,)]
        dim = sum(math.prod(s) for s in self.shapes)
        gen = torch.Generator().manual_seed(seed)
        self.mu = nn.Parameter(torch.randn(dim, generator=gen) * 0.1)
        self.rho = nn.Parameter(torch.full((dim,), -4.0))
        self.register_buffer("eps", torch.randn(predict_samples, dim, generator=gen))

    @property
    def sigma(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(S, N, classes)`` for weight samples ``theta`` ``(S, d)``."""
        parts, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            parts.append(theta[:, start : start + size].reshape(-1, *shape))
            start += size
        w1, b1, w2, b2 = parts
        h = torch.relu(torch.einsum("nd,shd->snh", x.flatten(1), w1) + b1[:, None])
        return torch.einsum("snh,sch->snc", h, w2) + b2[:, None]

    def log_lik(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log p(D|theta)`` per sample ``(S,)``."""
        logp = self.logits(theta, x).log_softmax(-1)
        return logp.gather(-1, y.expand(len(theta), -1)[..., None]).squeeze(-1).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.mu + self.eps * self.sigma
        probs = self.logits(theta, x).softmax(-1).mean(0)
        return probs.clamp_min(1e-12).log()

    def set_posterior(self, mu: torch.Tensor, sigma: torch.Tensor) -> BayesMLP:
        with torch.no_grad():
            self.mu.copy_(mu)
            self.rho.copy_(torch.log(torch.expm1(sigma.clamp_min(1e-8))))
        return self


def _kl_diag(mu_q, sig_q, mu_p, sig_p) -> torch.Tensor:
    return (torch.log(sig_p / sig_q) + (sig_q**2 + (mu_q - mu_p) ** 2) / (2 * sig_p**2) - 0.5).sum()


def fit_vi(model: BayesMLP, x, y, steps: int, prior_std: float, seed: int, vi_samples: int = 2, lr: float = 0.01):
    """Bayes by backprop on ``(x, y)`` (full batch), in place; returns the model."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    prior_mu, prior_sig = torch.zeros(()), torch.tensor(prior_std)
    for _ in range(steps):
        eps = torch.randn(vi_samples, model.mu.numel(), generator=gen)
        theta = model.mu + eps * model.sigma
        loss = -model.log_lik(theta, x, y).mean() + _kl_diag(model.mu, model.sigma, prior_mu, prior_sig)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _adjusted(theta, mu, sig, lam, log_lik) -> torch.Tensor:
    mask = in_adjusted_region(((theta.detach() - mu) / sig).pow(2).sum(-1), lam)
    return torch.where(mask, log_lik(theta), torch.zeros(()))


def eubo_meanfield(model: BayesMLP, x_e, y_e, lam: float, steps: int, seed: int, lr: float = 0.01) -> BayesMLP:
    """A copy of ``model`` with its posterior replaced by the adjusted-EUBO minimiser (Adam from ``q(theta|D)``)."""
    lam = check_lambda(lam)
    mu0, sig0 = model.mu.detach().clone(), model.sigma.detach().clone()
    out = _copy(model)
    if lam == 1.0:
        return out
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(out.parameters(), lr=lr)
    for _ in range(steps):
        theta = out.mu + torch.randn(2, out.mu.numel(), generator=gen) * out.sigma
        ll = _adjusted(theta, mu0, sig0, lam, lambda t: out.log_lik(t, x_e, y_e)).mean()
        loss = ll + _kl_diag(out.mu, out.sigma, mu0, sig0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return out


def rkl_meanfield(model: BayesMLP, x_e, y_e, lam: float, num_samples: int, seed: int) -> tuple[BayesMLP, float]:
    """A copy of ``model`` moment-matched to ``p~`` by self-normalised importance sampling; also the ESS."""
    lam = check_lambda(lam)
    mu0, sig0 = model.mu.detach(), model.sigma.detach()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        theta = mu0 + torch.randn(num_samples, mu0.numel(), generator=gen) * sig0
        log_w = torch.cat(
            [-_adjusted(t, mu0, sig0, lam, lambda s: model.log_lik(s, x_e, y_e)) for t in theta.split(250)]
        )
        w = torch.softmax(log_w.double(), 0).float()
        mean = w @ theta
        var = w @ (theta - mean).pow(2)
    floor = 1e-4 * sig0  # a degenerate weight set (ESS ~ 1) would give zero variances
    return _copy(model).set_posterior(mean, var.sqrt().maximum(floor)), float(1.0 / w.double().pow(2).sum())


def _copy(model: BayesMLP) -> BayesMLP:

    return copy.deepcopy(model)


@dataclass
class DigitsConfig:
    forget: str = "class:3"
    hidden: int = 32
    prior_std: float = 1.0
    vi_steps: int = 600
    unlearn_steps: int = 30
    rkl_samples: int = 2000
    lambdas: list[float] = field(default_factory=lambda: [0.0, 1.0])
    seed: int = 0

    def __post_init__(self) -> None:
        check_numbers(self)


def run_digits(config: DigitsConfig | None = None) -> dict:
    """Original (VI on train), oracle (VI on retain), EUBO / rKL per lambda; harness metrics vs the oracle."""

    config = config or DigitsConfig()
    lambdas = [check_lambda(v) for v in config.lambdas]
    torch.manual_seed(config.seed)
    task = make_task(load_dataset("digits", seed=config.seed), config.forget, seed=config.seed)
    (x_r, y_r), (x_e, y_e) = task.retain.tensors, task.forget.tensors
    x_all, y_all = torch.cat([x_r, x_e]), torch.cat([y_r, y_e])
    in_dim = math.prod(task.input_shape)

    def new_model() -> BayesMLP:
        return BayesMLP(in_dim, config.hidden, task.num_classes, seed=config.seed)

    original = fit_vi(new_model(), x_all, y_all, config.vi_steps, config.prior_std, config.seed)
    start = time.perf_counter()
    oracle = fit_vi(new_model(), x_r, y_r, config.vi_steps, config.prior_std, config.seed)
    oracle_seconds = time.perf_counter() - start
    oracle_metrics = unlearning_metrics(oracle, task, original=original, seed=config.seed)
    kwargs = {"task": task, "original": original, "oracle": oracle, "oracle_seconds": oracle_seconds}
    kwargs.update(oracle_metrics=oracle_metrics, seed=config.seed)
    methods = {"original": unlearning_metrics(original, **kwargs)}
    for lam in lambdas:
        start = time.perf_counter()
        model = eubo_meanfield(original, x_e, y_e, lam, config.unlearn_steps, config.seed)
        seconds = time.perf_counter() - start
        methods[f"eubo@{lam:g}"] = unlearning_metrics(model, **kwargs, seconds=seconds)
        start = time.perf_counter()
        model, ess = rkl_meanfield(original, x_e, y_e, lam, config.rkl_samples, config.seed)
        seconds = time.perf_counter() - start
        m = unlearning_metrics(model, **kwargs, seconds=seconds)
        methods[f"rkl@{lam:g}"] = {**m, "ess": ess}
    return {"config": asdict(config), "oracle": oracle_metrics, "oracle_seconds": oracle_seconds, "methods": methods}
