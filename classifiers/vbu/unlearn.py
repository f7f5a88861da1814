"""Variational Bayesian Unlearning (Nguyen, Low & Jaillet, NeurIPS 2020) of a Gaussian posterior.

Given the approximate posterior ``q(theta|D)`` and the erased data ``D_e`` (``D = D_r + D_e``), the exact posterior
after retraining satisfies ``p(theta|D_r) ∝ p(theta|D) / p(D_e|theta)``; replacing ``p(theta|D)`` by ``q(theta|D)``
gives the target ``p~(theta|D_r) ∝ q(theta|D) / p(D_e|theta)``.

**EUBO** (evidence upper bound): ``q_u = argmin  E_{q_u}[log p(D_e|theta)] + KL[q_u || q(theta|D)]``, equivalent to
minimising ``KL[q_u || p~(theta|D_r)]``. By default it is minimised as the authors' code does: Adam (lr 1e-3) from
``q_u = q(theta|D)`` with 1,000 fresh reparameterised draws a step; the KL between Gaussians is exact. L-BFGS over
fixed draws (our earlier default) stays available.

**Adjusted likelihood** with threshold ``lambda`` in [0, 1]: ``p_adj(D_e|theta; lambda) = p(D_e|theta)`` where
``q(theta|D) > lambda * max_theta q(theta|D)``, and 1 elsewhere (so ``log p_adj = 0`` there). This is the paper's
definition; an "else 0" (as it is sometimes restated) would make ``log p_adj = -inf`` outside the region and ``lambda = 1`` could then not
mean "no unlearning". For a Gaussian ``q(theta|D) = N(mu, Sigma)`` the region is the ellipsoid
``(theta - mu)^T Sigma^-1 (theta - mu) < -2 log lambda``: ``lambda = 0`` keeps every theta (full unlearning),
``lambda = 1`` keeps none (``q_u = q(theta|D)``: no unlearning). The adjusted EUBO and the rKL below use it.

**Reverse KL** (rKL): ``q_v = argmin KL[p~(theta|D_r; lambda) || q_v]`` with
``p~ ∝ q(theta|D) / p_adj(D_e|theta; lambda)``, gradient-free: the authors' stochastic objective (importance weights
``w_i ∝ 1 / p_adj`` self-normalised within each batch of 1,000 draws from ``q(theta|D)``) has a closed-form
stationary point, the moment match to the batch-averaged weighted draws, which :func:`rkl_unlearn` computes
directly; it can also run the authors' Adam loop, or our earlier single-pool estimator. The effective sample size
``1 / sum w_i^2`` (of one batch) is reported; a degenerate weight set gives a rank-deficient covariance, which is
jittered with a warning (see :func:`~classifiers.vbu.gp.safe_cholesky`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from classifiers.vbu.gp import DTYPE, GaussianParams, GaussianPosterior, kl_gaussians
from concept_erase.core.errors import ConfigError, TrainingError

__all__ = [
    "EUBO_OPTIMIZERS",
    "RKL_ESTIMATORS",
    "UnlearnResult",
    "check_lambda",
    "eubo_unlearn",
    "in_adjusted_region",
    "rkl_unlearn",
]

LogLik = Callable[[torch.Tensor], torch.Tensor]  # theta (S, d) -> log p(D_e | theta) (S,)


@dataclass
class UnlearnResult:
    posterior: GaussianPosterior
    objective: float
    ess: float | None = None  # rKL: effective sample size of the importance weights


def check_lambda(lam: float) -> float:
    """``lam`` as a float in [0, 1], else :class:`ConfigError`."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ConfigError(f"lambda must be a number in [0, 1], got {lam!r}") from None
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ConfigError(f"lambda must be in [0, 1] (0: full unlearning, 1: none), got {lam!r}")
    return value


def in_adjusted_region(mahalanobis2: torch.Tensor, lam: float) -> torch.Tensor:
    """``q(theta|D) > lam * max q`` for a Gaussian, from the squared Mahalanobis distances to its mean."""
    lam = check_lambda(lam)
    if lam == 0.0:
        return torch.ones_like(mahalanobis2, dtype=torch.bool)
    return mahalanobis2 < -2.0 * math.log(lam)


def _adjusted_log_lik(theta: torch.Tensor, full: GaussianPosterior, log_lik: LogLik, lam: float) -> torch.Tensor:
    mask = in_adjusted_region(full.mahalanobis2(theta.detach()), lam)
    if not bool(mask.any()):
        return torch.zeros(len(theta), dtype=theta.dtype)
    return torch.where(mask, log_lik(theta), torch.zeros((), dtype=theta.dtype))


EUBO_OPTIMIZERS = ("adam", "lbfgs")


def eubo_unlearn(
    full: GaussianPosterior,
    log_lik: LogLik,
    lam: float = 0.0,
    num_samples: int = 1000,
    seed: int = 0,
    max_iter: int = 100,
    optimizer: str = "adam",
    steps: int = 15000,
    lr: float = 1e-3,
) -> UnlearnResult:
    """Minimise the adjusted EUBO ``E_{q_u}[log p_adj(D_e|theta; lam)] + KL[q_u || full]``, starting at ``full``.

    ``optimizer="adam"`` (default, the authors' procedure): ``steps`` Adam steps at ``lr`` (their defaults: 1e-3,
    15,000 steps, 1,000 fresh draws a step), the pathwise gradient of the Monte Carlo expectation (the region
    indicator of ``p_adj`` held fixed within a step, as in their ``tf.where``) plus the exact gradient of the KL
    between Gaussians. ``optimizer="lbfgs"`` (our earlier default, method ``eubo_lbfgs``) minimises the
    sample-average objective over ``num_samples`` fixed draws (use 256) with L-BFGS (``max_iter``).
    """
    lam = check_lambda(lam)
    full = full.detach()
    if lam == 1.0:  # the adjusted likelihood is 1 everywhere: the minimiser is q(theta|D) itself
        return UnlearnResult(full, 0.0)
    if optimizer not in EUBO_OPTIMIZERS:
        raise ConfigError(f"unknown EUBO optimizer {optimizer!r}; accepted: {', '.join(EUBO_OPTIMIZERS)}")
    generator = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(num_samples, full.dim, generator=generator, dtype=DTYPE)
    params = GaussianParams(full)

    def objective() -> torch.Tensor:
        q = params.posterior()
        theta = q.mean + eps @ q.chol.T
        return _adjusted_log_lik(theta, full, log_lik, lam).mean() + kl_gaussians(q, full)

    if optimizer == "lbfgs":
        lbfgs = torch.optim.LBFGS(params.tensors, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        lbfgs.step(closure)
    else:
        _adam_eubo(params, full, log_lik, lam, num_samples, steps, lr, generator)
    posterior = params.posterior().detach()
    if not torch.isfinite(posterior.mean).all() or not torch.isfinite(posterior.chol).all():
        raise TrainingError("EUBO unlearning diverged (non-finite posterior)")
    with torch.no_grad():
        value = float(objective())
    return UnlearnResult(posterior, value)


def _adam_eubo(params, full, log_lik, lam, num_samples, steps, lr, generator) -> None:
    """Adam on the EUBO with hand-written gradients (autograd only through ``log_lik``, for speed).

    With ``theta_s = m + L eps_s``: ``d/dm = mean_s g_s + P (m - mu)`` and ``d/dL = tril(mean_s g_s eps_s^T + P L)
    - diag(1 / L_ii)``, where ``g_s`` is the gradient of the masked log-likelihood at ``theta_s`` and ``P`` the
    precision of ``full = N(mu, .)``; the diagonal is parameterised by its logarithm.
    """
    precision = full.precision()
    for t in params.tensors:
        t.requires_grad_(False)
    adam = torch.optim.Adam(params.tensors, lr=lr)
    for _ in range(steps):
        eps = torch.randn(num_samples, full.dim, generator=generator, dtype=DTYPE)
        diag = params.log_diag.exp()
        chol = torch.tril(params.lower, -1) + torch.diag(diag)
        theta = (params.mean + eps @ chol.T).requires_grad_(True)
        value = _adjusted_log_lik(theta, full, log_lik, lam).sum() / num_samples
        # no draw inside the adjusted region (a large lambda): the likelihood term is constant, its gradient zero
        (grad_theta,) = torch.autograd.grad(value, theta) if value.requires_grad else (torch.zeros_like(theta),)
        grad_chol = grad_theta.T @ eps + precision @ chol
        params.mean.grad = grad_theta.sum(0) + precision @ (params.mean - full.mean)
        params.lower.grad = torch.tril(grad_chol, -1)
        params.log_diag.grad = grad_chol.diagonal() * diag - 1.0
        adam.step()
    for t in params.tensors:
        t.requires_grad_(True)


RKL_ESTIMATORS = ("batched", "adam", "pooled")


def _weighted_log_prob(q: GaussianPosterior, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i log q(theta_i)`` up to the constant ``-d/2 log(2 pi)`` (weights summing to one)."""
    return -0.5 * (weights @ q.mahalanobis2(theta)) - 0.5 * q.log_det()


def rkl_unlearn(
    full: GaussianPosterior,
    log_lik: LogLik,
    lam: float = 0.0,
    num_samples: int = 1000,
    seed: int = 0,
    estimator: str = "batched",
    num_batches: int = 100,
    steps: int = 30000,
    lr: float = 1e-3,
) -> UnlearnResult:
    """Minimise the reverse KL ``KL[p~(theta|D_r; lam) || q_v]`` over Gaussians ``q_v``, ``p~ ∝ full / p_adj``.

    The authors' code maximises ``sum_i w_i log q_v(theta_i)`` over batches of ``num_samples`` fresh draws
    ``theta_i ~ full`` with weights ``w_i ∝ 1 / p_adj(D_e|theta_i; lam)`` normalised **within each batch**, by Adam
    (``lr`` 1e-3, 15,000 to 30,000 steps) from ``q_v = full``. The stationary point of that stochastic objective is
    a moment match to the batch-averaged weighted draws: ``mean = E_batch[sum_i w_i theta_i]`` and
    ``cov = E_batch[sum_i w_i (theta_i - mean)(theta_i - mean)^T]``. Normalising per batch of 1,000 caps the
    influence of the few draws with huge weights (a biased, low-variance estimate of the moments of ``p~``).

    ``estimator``:

    - ``"batched"`` (default): that stationary point computed directly from ``num_batches`` batches of
      ``num_samples`` seeded draws (deterministic, a fraction of a second);
    - ``"adam"``: the authors' loop itself, ``steps`` Adam steps at ``lr`` with a fresh batch each step;
    - ``"pooled"``: our earlier estimator, one self-normalised pool of ``num_samples`` draws (weighted maximum
      likelihood over all of them; use ``num_samples=20000``); at small lambda a handful of draws carry nearly all
      the weight, which shrinks the covariance and hurts the remaining points.
    """
    lam = check_lambda(lam)
    if estimator not in RKL_ESTIMATORS:
        raise ConfigError(f"unknown rKL estimator {estimator!r}; accepted: {', '.join(RKL_ESTIMATORS)}")
    full = full.detach()
    if lam == 1.0:
        return UnlearnResult(full, 0.0, ess=float(num_samples))
    generator = torch.Generator().manual_seed(int(seed))

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            theta = full.sample(num_samples, generator)
            return theta, torch.softmax(-_adjusted_log_lik(theta, full, log_lik, lam), dim=0)

    if estimator == "adam":
        params = GaussianParams(full)
        adam = torch.optim.Adam(params.tensors, lr=lr)
        ess = []
        for _ in range(steps):
            theta, weights = batch()
            ess.append(float(1.0 / weights.pow(2).sum()))
            adam.zero_grad()
            (-_weighted_log_prob(params.posterior(), theta, weights)).backward()
            adam.step()
        posterior = params.posterior().detach()
        if not torch.isfinite(posterior.mean).all() or not torch.isfinite(posterior.chol).all():
            raise TrainingError("rKL unlearning diverged (non-finite posterior)")
        with torch.no_grad():
            value = float(-_weighted_log_prob(posterior, *batch()))
        return UnlearnResult(posterior, value, ess=sum(ess) / len(ess))
    with torch.no_grad():
        batches = [batch() for _ in range(1 if estimator == "pooled" else num_batches)]
        thetas = torch.stack([t for t, _ in batches])  # (B, N, d)
        weights = torch.stack([w for _, w in batches]) / len(batches)  # each batch sums to 1 / B
        flat_theta, flat_w = thetas.reshape(-1, full.dim), weights.reshape(-1)
        mean = flat_w @ flat_theta
        centred = flat_theta - mean
        cov = (centred * flat_w[:, None]).T @ centred
        ess = float(sum(1.0 / w.pow(2).sum() for _, w in batches) / len(batches))  # mean ESS of a batch
        posterior = GaussianPosterior.from_cov(mean, cov, f"rKL posterior covariance (ESS {ess:.1f})")
        # KL[p~ || q_v] up to p~'s entropy and normaliser: the weighted cross-entropy -E_w[log q_v]
        cross_entropy = float(-_weighted_log_prob(posterior, flat_theta, flat_w))
    return UnlearnResult(posterior, cross_entropy, ess=ess)
