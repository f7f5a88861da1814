"""Variational Bayesian Unlearning (Nguyen, Low & Jaillet, NeurIPS 2020) of a Gaussian posterior.

Given the approximate posterior ``q(theta|D)`` and the erased data ``D_e`` (``D = D_r + D_e``), the exact posterior
after retraining satisfies ``p(theta|D_r) ∝ p(theta|D) / p(D_e|theta)``; replacing ``p(theta|D)`` by ``q(theta|D)``
gives the target ``p~(theta|D_r) ∝ q(theta|D) / p(D_e|theta)``.

**EUBO** (evidence upper bound): ``q_u = argmin  E_{q_u}[log p(D_e|theta)] + KL[q_u || q(theta|D)]``, equivalent to
minimising ``KL[q_u || p~(theta|D_r)]``. The expectation is a Monte Carlo average over ``num_samples`` fixed, seeded
standard-normal draws pushed through ``q_u``'s reparameterisation (common random numbers make the objective
deterministic, so it is minimised with L-BFGS); the KL between Gaussians is exact.

**Adjusted likelihood** with threshold ``lambda`` in [0, 1]: ``p_adj(D_e|theta; lambda) = p(D_e|theta)`` where
``q(theta|D) > lambda * max_theta q(theta|D)``, and 1 elsewhere (so ``log p_adj = 0`` there). This is the paper's
definition; an "else 0" (as it is sometimes restated) would make ``log p_adj = -inf`` outside the region and ``lambda = 1`` could then not
mean "no unlearning". For a Gaussian ``q(theta|D) = N(mu, Sigma)`` the region is the ellipsoid
``(theta - mu)^T Sigma^-1 (theta - mu) < -2 log lambda``: ``lambda = 0`` keeps every theta (full unlearning),
``lambda = 1`` keeps none (``q_u = q(theta|D)``: no unlearning). The adjusted EUBO and the rKL below use it.

**Reverse KL** (rKL): ``q_v = argmin KL[p~(theta|D_r; lambda) || q_v]`` with
``p~ ∝ q(theta|D) / p_adj(D_e|theta; lambda)``. For a Gaussian ``q_v`` the minimiser matches the first two moments of
``p~``, which we estimate by self-normalised importance sampling: ``theta_i ~ q(theta|D)`` (seeded),
``w_i ∝ 1 / p_adj(D_e|theta_i; lambda)``, ``mean = sum w_i theta_i``, ``cov = sum w_i (theta_i - mean)(...)^T``
(weighted maximum likelihood). The effective sample size ``1 / sum w_i^2`` is reported; a degenerate weight set
gives a rank-deficient covariance, which is jittered with a warning (see :func:`~classifiers.vbu.gp.safe_cholesky`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from classifiers.vbu.gp import DTYPE, GaussianParams, GaussianPosterior, kl_gaussians
from concept_erase.core.errors import ConfigError, TrainingError

__all__ = ["UnlearnResult", "check_lambda", "in_adjusted_region", "eubo_unlearn", "rkl_unlearn"]

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


def eubo_unlearn(
    full: GaussianPosterior,
    log_lik: LogLik,
    lam: float = 0.0,
    num_samples: int = 256,
    seed: int = 0,
    max_iter: int = 100,
    optimizer: str = "lbfgs",
    steps: int = 1000,
    lr: float = 0.01,
) -> UnlearnResult:
    """Minimise the adjusted EUBO ``E_{q_u}[log p_adj(D_e|theta; lam)] + KL[q_u || full]``, starting at ``full``.

    ``optimizer="lbfgs"`` (default) minimises the sample-average objective over ``num_samples`` fixed draws to
    convergence. ``optimizer="adam"`` runs ``steps`` Adam steps (``lr``) with fresh seeded draws each step, as
    stochastic VI does; stopping after a fixed number of steps from ``full`` acts as extra regularisation towards
    ``q(theta|D)`` (it reaches a higher EUBO than L-BFGS but, on the moons study, a smaller KL to retraining).
    """
    lam = check_lambda(lam)
    full = full.detach()
    if lam == 1.0:  # the adjusted likelihood is 1 everywhere: the minimiser is q(theta|D) itself
        return UnlearnResult(full, 0.0)
    if optimizer not in ("lbfgs", "adam"):
        raise ConfigError(f"unknown EUBO optimizer {optimizer!r}; accepted: lbfgs, adam")
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
        adam = torch.optim.Adam(params.tensors, lr=lr)
        for _ in range(steps):
            eps = torch.randn(num_samples, full.dim, generator=generator, dtype=DTYPE)
            adam.zero_grad()
            objective().backward()
            adam.step()
    posterior = params.posterior().detach()
    if not torch.isfinite(posterior.mean).all() or not torch.isfinite(posterior.chol).all():
        raise TrainingError("EUBO unlearning diverged (non-finite posterior)")
    with torch.no_grad():
        value = float(objective())
    return UnlearnResult(posterior, value)


def rkl_unlearn(
    full: GaussianPosterior,
    log_lik: LogLik,
    lam: float = 0.0,
    num_samples: int = 20000,
    seed: int = 0,
) -> UnlearnResult:
    """Moment-match ``p~(theta|D_r; lam) ∝ full(theta) / p_adj(D_e|theta; lam)`` by self-normalised importance
    sampling from ``full`` (the minimiser of the reverse KL over Gaussians)."""
    lam = check_lambda(lam)
    full = full.detach()
    if lam == 1.0:
        return UnlearnResult(full, 0.0, ess=float(num_samples))
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        theta = full.sample(num_samples, generator)
        log_w = -_adjusted_log_lik(theta, full, log_lik, lam)
        weights = torch.softmax(log_w, dim=0)
        mean = weights @ theta
        centred = theta - mean
        cov = (centred * weights[:, None]).T @ centred
        ess = float(1.0 / weights.pow(2).sum())
        # KL[p~ || q_v] up to p~'s entropy and normaliser: the weighted cross-entropy -E_w[log q_v]
        posterior = GaussianPosterior.from_cov(mean, cov, f"rKL posterior covariance (ESS {ess:.1f})")
        cross_entropy = 0.5 * (weights @ posterior.mahalanobis2(theta)) + 0.5 * posterior.log_det()
    return UnlearnResult(posterior, float(cross_entropy), ess=ess)
