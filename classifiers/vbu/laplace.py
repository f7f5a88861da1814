"""Laplace Bayesian unlearning (Rawat, Zhang, Sahoo and Xu, "Challenges and Pitfalls of Bayesian Unlearning", 2022).

A Gaussian (Laplace) posterior ``q(theta|D) = N(mu, P^-1)`` of the trained model and the deleted data ``D_e`` give the
target ``p(theta|D_r) ∝ q(theta|D) / p(D_e|theta)``. Laplace unlearning approximates it by another Gaussian:

- its mean is the MAP ``theta* = argmax log q(theta|D) - log p(D_e|theta)``, i.e. the minimiser of
  ``J(theta) = 1/2 (theta - mu)^T P (theta - mu) - NLL_e(theta)`` with ``NLL_e = -log p(D_e|theta)``;
- its precision is ``P - H_e(theta*)``, ``H_e`` the Hessian of ``NLL_e`` at the new MAP (the Hessian of ``J``
  there, so the result is the Laplace approximation of the target).

``J`` is not convex in general (``-NLL_e`` is concave), so :func:`laplace_unlearn` runs Newton's method with
Levenberg damping where ``P - H_e`` is not positive definite and a backtracking line search on ``J``. At a strict
local minimum the new precision is positive definite; it is not when ``J`` has no minimum (the deleted data carry
more curvature than the posterior holds: they were not in its data, or the posterior is too flat), and then a
one-line :class:`~concept_erase.core.errors.ConfigError` names the smallest eigenvalue: never a NaN.

:func:`gp_laplace_unlearn` applies it to the sparse GP of the moons study (its variational ``q(u) = N(m, S)``, so
``P = S^-1``; logistic likelihood, exact gradient and Hessian); :func:`laplace_posteriors` does so shard by shard for
:class:`~classifiers.vbu.shards.ShardedGPUnlearner`. ``classifiers.methods.laplace`` applies it to the last layer
of a classifier.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from classifiers.vbu.gp import DTYPE, GaussianPosterior, SparseGPClassifier
from concept_erase.core.errors import ConfigError, TrainingError

__all__ = [
    "LaplaceResult",
    "check_precision",
    "gp_laplace_unlearn",
    "kl_precision",
    "laplace_posteriors",
    "laplace_unlearn",
    "logistic_nll",
]

# NLL_e(theta) -> (value, gradient (d,), Hessian (d, d))
NllFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class LaplaceResult:
    """``N(mean, precision^-1)``; ``chol`` is the lower Cholesky factor of ``precision``."""

    mean: torch.Tensor
    precision: torch.Tensor
    chol: torch.Tensor
    newton_steps: int
    newton_decrement: float  # lambda^2 = g^T (P - H_e)^-1 g at the returned mean
    min_eigenvalue: float  # of the new precision
    seconds: float

    def summary(self) -> dict:
        return {
            "newton_steps": self.newton_steps,
            "newton_decrement": self.newton_decrement,
            "precision_min_eigenvalue": self.min_eigenvalue,
            "seconds": self.seconds,
        }


def check_precision(precision: torch.Tensor, what: str = "posterior precision") -> torch.Tensor:
    """The lower Cholesky factor of a finite, symmetric, positive-definite ``precision``; else ConfigError."""
    if precision.ndim != 2 or precision.shape[0] != precision.shape[1]:
        raise ConfigError(f"{what} must be a square matrix, got shape {tuple(precision.shape)}")
    if not torch.isfinite(precision).all():
        raise ConfigError(f"{what} has NaN or infinite entries")
    sym = 0.5 * (precision + precision.T)
    eig = torch.linalg.eigvalsh(sym)
    if float(eig[0]) <= 1e-12 * max(float(eig[-1].abs()), 1e-300):
        raise ConfigError(
            f"{what} is singular or not positive definite (smallest eigenvalue {float(eig[0]):.3g}, largest "
            f"{float(eig[-1]):.3g}): the Gaussian is undefined"
        )
    factor, info = torch.linalg.cholesky_ex(sym)
    if int(info) != 0:  # pragma: no cover - eigvalsh said positive definite
        raise ConfigError(f"{what} is not positive definite (Cholesky failed)")
    return factor


def laplace_unlearn(
    mean: torch.Tensor,
    precision: torch.Tensor,
    nll: NllFn,
    *,
    max_steps: int = 100,
    tolerance: float = 1e-10,
    what: str = "Laplace unlearning",
) -> LaplaceResult:
    """The Laplace-unlearned Gaussian ``N(theta*, (P - H_e(theta*))^-1)`` of ``N(mean, precision^-1)``.

    ``nll(theta)`` returns the deleted data's negative log-likelihood, its gradient and its Hessian. Newton steps
    from ``mean`` until the Newton decrement ``g^T (P - H_e)^-1 g`` falls below ``tolerance`` (or the gradient
    vanishes). Raises ConfigError if ``precision`` or the updated precision is singular or not positive definite,
    TrainingError if the search does not converge in ``max_steps`` steps while the precision stays definite.
    The inputs are not modified.
    """
    start = time.perf_counter()
    mean = mean.detach().to(DTYPE).reshape(-1)
    precision = 0.5 * (precision.detach().to(DTYPE) + precision.detach().to(DTYPE).T)
    if precision.shape != (len(mean), len(mean)):
        raise ConfigError(f"{what}: precision shape {tuple(precision.shape)} does not match the mean ({len(mean)})")
    if not torch.isfinite(mean).all():
        raise ConfigError(f"{what}: the posterior mean has NaN or infinite entries")
    check_precision(precision, f"{what}: the posterior precision")
    eye = torch.eye(len(mean), dtype=DTYPE)
    scale = float(precision.diagonal().abs().mean())

    def objective(theta: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        value, grad, hess = nll(theta)
        diff = theta - mean
        return float(0.5 * diff @ precision @ diff - value), precision @ diff - grad, precision - hess, hess

    theta = mean.clone()
    value, grad, hess_j, hess = objective(theta)
    decrement = float("inf")
    steps = 0
    for steps in range(max_steps + 1):
        factor, info = torch.linalg.cholesky_ex(hess_j)
        definite = int(info) == 0
        grad_norm = float(grad.norm())
        if definite:
            decrement = float(grad @ torch.cholesky_solve(grad[:, None], factor).squeeze(1))
        if grad_norm <= 1e-13 * (1.0 + scale) or (definite and decrement <= tolerance):
            break
        if steps == max_steps:
            break
        damping = 0.0
        while not definite:  # Levenberg: the smallest damping that makes the step a descent direction
            damping = max(10.0 * damping, 1e-6 * (1.0 + scale))
            factor, info = torch.linalg.cholesky_ex(hess_j + damping * eye)
            definite = int(info) == 0
        step = -torch.cholesky_solve(grad[:, None], factor).squeeze(1)
        slope = float(grad @ step)
        t = 1.0
        for _ in range(40):
            new = objective(theta + t * step)
            if np.isfinite(new[0]) and new[0] <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease along the step: stationary to working precision
        theta = theta + t * step
        value, grad, hess_j, hess = new
    if not torch.isfinite(theta).all():  # pragma: no cover - the line search only accepts finite values
        raise TrainingError(f"{what}: the MAP search diverged (non-finite parameters)")
    new_precision = 0.5 * (hess_j + hess_j.T)
    eig = torch.linalg.eigvalsh(new_precision)
    if float(eig[0]) <= 1e-12 * max(float(eig[-1].abs()), 1e-300):
        raise ConfigError(
            f"{what}: the precision after subtracting the deleted data's Hessian is singular or not positive "
            f"definite (smallest eigenvalue {float(eig[0]):.3g}); the deleted data carry more curvature than the "
            "posterior holds (were they in its training data? is the prior precision too small?)"
        )
    converged = float(grad.norm()) <= 1e-13 * (1.0 + scale) or decrement <= tolerance
    if not converged:
        raise TrainingError(
            f"{what}: the MAP search did not converge in {max_steps} Newton steps (decrement {decrement:.3g} > "
            f"tolerance {tolerance:g}); raise the number of steps"
        )
    chol = torch.linalg.cholesky(new_precision)
    return LaplaceResult(
        theta, new_precision, chol, steps, decrement, float(eig[0]), seconds=time.perf_counter() - start
    )


def kl_precision(q_mean, q_chol, p_mean, p_chol) -> float:
    """``KL[N(q_mean, Q^-1) || N(p_mean, P^-1)]`` from the lower Cholesky factors of the precisions ``Q``, ``P``."""
    d = len(q_mean)
    # tr(P Q^-1) = ||L_q^-1 L_p||_F^2; log det Q^-1 P = 2 (sum log diag L_p - sum log diag L_q)
    solved = torch.linalg.solve_triangular(q_chol, p_chol, upper=False)
    diff = p_chol.T @ (q_mean - p_mean)
    log_det = 2.0 * (q_chol.diagonal().log().sum() - p_chol.diagonal().log().sum())
    return float(0.5 * (solved.pow(2).sum() + diff.pow(2).sum() - d + log_det))


# ---------------------------------------------------------------------------------------------------- the moons GP


def logistic_nll(A: torch.Tensor, y_signed: torch.Tensor) -> NllFn:
    """``-sum_i log sigmoid(y_i a_i^T u)`` with its gradient and Hessian ``A^T diag(s (1 - s)) A``."""

    def nll(theta: torch.Tensor):
        f = A @ theta
        value = -F.logsigmoid(y_signed * f).sum()
        grad = -A.T @ (y_signed * torch.sigmoid(-y_signed * f))
        s = torch.sigmoid(f)
        hess = (A * (s * (1 - s))[:, None]).T @ A
        return value, grad, hess

    return nll


def gp_laplace_unlearn(
    model: SparseGPClassifier, full: GaussianPosterior, X_erase, y_erase, **kwargs
) -> tuple[GaussianPosterior, LaplaceResult]:
    """Laplace unlearning of ``(X_erase, y_erase)`` (labels 0/1) from the GP posterior ``full`` over ``u``."""
    y = np.asarray(y_erase)
    if len(y) == 0:
        raise ConfigError("no points to erase")
    A = model.projection(X_erase)
    y_signed = torch.as_tensor(2.0 * y - 1.0, dtype=DTYPE)
    result = laplace_unlearn(
        full.mean, full.precision(), logistic_nll(A, y_signed), what="Laplace unlearning", **kwargs
    )
    cov = torch.cholesky_inverse(result.chol)
    return GaussianPosterior.from_cov(result.mean, cov, "Laplace-unlearned covariance"), result


def laplace_posteriors(vbu, erase) -> tuple[list[GaussianPosterior], list[float]]:
    """A fitted :class:`~classifiers.vbu.shards.ShardedGPUnlearner`'s shard posteriors after Laplace unlearning of
    ``erase`` in the shards that hold it (others unchanged), and the seconds per affected shard."""
    out, seconds = list(vbu.posteriors_), []
    for s, idx in vbu.affected_shards(erase).items():
        start = time.perf_counter()
        out[s], _ = gp_laplace_unlearn(vbu.model, vbu.posteriors_[s], vbu.X_[idx], vbu.y_[idx])
        seconds.append(time.perf_counter() - start)
    return out, seconds
