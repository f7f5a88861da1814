"""A sparse Gaussian-process classifier with a full-covariance Gaussian posterior over the inducing values.

Model (the VBU authors' synthetic-moons model, unwhitened, logistic link):

- kernel ``k(x, x') = sigma2 * exp(-0.5 * ||Lambda (x - x')||^2)`` with ``Lambda = diag(inverse_lengthscales)``
  (squared-exponential ARD; hyper-parameters fixed, default ``Lambda = diag(1.56, 1.35)``, ``sigma2 = 4.74``);
- inducing inputs ``Z`` (fixed); parameters ``theta = u = f(Z)`` with prior ``N(0, K_ZZ)``;
- latent ``f(x) = k(x, Z) K_ZZ^-1 u = A(x) u`` (the deterministic-training-conditional projection), labels
  ``p(y = 1 | x, u) = sigmoid(f(x))``;
- variational posterior ``q(u) = N(m, L L^T)`` with ``L`` lower triangular (positive diagonal through ``exp``).

Variational inference maximises the ELBO ``sum_i E_q[log sigmoid(y_i f(x_i))] - KL[q(u) || N(0, K_ZZ)]`` (labels
``y_i`` in {-1, +1}). Under ``q`` each ``f(x_i)`` is Gaussian, ``N(a_i^T m, a_i^T L L^T a_i)``, so the expectations
are one-dimensional and computed by Gauss-Hermite quadrature (deterministic: no sampling noise in training), and the
ELBO is maximised with L-BFGS. Predictions are Monte Carlo averages ``p(y=1|x) = mean_s sigmoid(A(x) u_s)`` over
``u_s ~ q`` drawn from a seeded generator, so the same posterior and seed give the same probabilities.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from concept_erase.core.errors import ConfigError, TrainingError

__all__ = [
    "DTYPE",
    "GaussianParams",
    "GaussianPosterior",
    "NotPositiveDefiniteError",
    "SparseGPClassifier",
    "gauss_hermite_log_sigmoid",
    "safe_cholesky",
]

DTYPE = torch.float64
_GH_POINTS = 32


class NotPositiveDefiniteError(TrainingError):
    """A covariance (or precision) matrix stayed non positive definite after adding jitter."""


def safe_cholesky(matrix: torch.Tensor, what: str = "covariance", max_tries: int = 5) -> torch.Tensor:
    """Cholesky factor of a symmetric matrix; add growing jitter (with a warning) when it is not positive definite.

    Jitter starts at ``1e-8 * mean(|diag|)`` and grows tenfold per try; after ``max_tries`` it raises
    :class:`NotPositiveDefiniteError`. NaN or infinite entries fail at once.
    """
    matrix = 0.5 * (matrix + matrix.transpose(-1, -2))
    if not torch.isfinite(matrix).all():
        raise NotPositiveDefiniteError(f"{what} has NaN or infinite entries; cannot take its Cholesky factor")
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info.max()) == 0:
        return factor
    scale = float(matrix.diagonal(dim1=-2, dim2=-1).abs().mean()) or 1.0
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype)
    for attempt in range(max_tries):
        jitter = scale * 10.0 ** (attempt - 8)
        warnings.warn(f"{what} is not positive definite; adding jitter {jitter:.2e} to its diagonal", stacklevel=2)
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info.max()) == 0:
            return factor
    raise NotPositiveDefiniteError(
        f"{what} is not positive definite even with jitter {jitter:.2e} ({max_tries} tries); check its eigenvalues"
    )


@dataclass
class GaussianPosterior:
    """``N(mean, cov)`` over the inducing values; ``chol`` is the lower Cholesky factor of ``cov``."""

    mean: torch.Tensor
    chol: torch.Tensor

    @classmethod
    def from_cov(cls, mean: torch.Tensor, cov: torch.Tensor, what: str = "posterior covariance") -> GaussianPosterior:
        return cls(mean.to(DTYPE), safe_cholesky(cov.to(DTYPE), what))

    @property
    def cov(self) -> torch.Tensor:
        return self.chol @ self.chol.T

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def precision(self) -> torch.Tensor:
        return torch.cholesky_inverse(self.chol)

    def log_det(self) -> torch.Tensor:
        return 2.0 * self.chol.diagonal().log().sum()

    def mahalanobis2(self, theta: torch.Tensor) -> torch.Tensor:
        """``(theta - mean)^T cov^-1 (theta - mean)`` for each row of ``theta``."""
        white = torch.linalg.solve_triangular(self.chol, (theta - self.mean).T, upper=False)
        return white.pow(2).sum(0)

    def sample(self, num: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(num, self.dim, generator=generator, dtype=DTYPE)
        return self.mean + eps @ self.chol.T

    def detach(self) -> GaussianPosterior:
        return GaussianPosterior(self.mean.detach().clone(), self.chol.detach().clone())


def kl_gaussians(q: GaussianPosterior, p: GaussianPosterior) -> torch.Tensor:
    """``KL[q || p]`` of two full-covariance Gaussians (differentiable in ``q``)."""
    solved = torch.linalg.solve_triangular(p.chol, q.chol, upper=False)
    diff = torch.linalg.solve_triangular(p.chol, (q.mean - p.mean)[:, None], upper=False)
    return 0.5 * (solved.pow(2).sum() + diff.pow(2).sum() - q.dim + p.log_det() - q.log_det())


def gauss_hermite_log_sigmoid(mean: torch.Tensor, var: torch.Tensor, points: int = _GH_POINTS) -> torch.Tensor:
    """``E[log sigmoid(f)]`` for ``f ~ N(mean, var)``, elementwise, by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite.hermgauss(points)
    nodes = torch.as_tensor(nodes, dtype=mean.dtype)
    weights = torch.as_tensor(weights, dtype=mean.dtype) / math.sqrt(math.pi)
    f = mean[..., None] + math.sqrt(2.0) * var.clamp_min(0).sqrt()[..., None] * nodes
    return (F.logsigmoid(f) * weights).sum(-1)


def _signed(y) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y), dtype=DTYPE)
    if y.ndim != 1 or not bool(((y == 0) | (y == 1)).all()):
        raise ConfigError("labels must be a 1-D array of 0/1 values")
    return 2.0 * y - 1.0


class SparseGPClassifier:
    """The model above: kernel, inducing inputs, prior, VI fit and predictions (all in float64 on the CPU).

    ``fit(X, y)`` returns a :class:`GaussianPosterior`; the model object itself only holds the fixed quantities, so
    one model serves every shard and every posterior (fitted, unlearned, retrained, aggregated).
    """

    def __init__(
        self,
        inducing: np.ndarray,
        inverse_lengthscales: tuple[float, ...] = (1.56, 1.35),
        signal_variance: float = 4.74,
        jitter: float = 1e-6,
        max_iter: int = 200,
    ):
        self.inducing = torch.as_tensor(np.asarray(inducing), dtype=DTYPE)
        if self.inducing.ndim != 2 or len(self.inducing) == 0:
            raise ConfigError(
                f"inducing inputs must be a non-empty (M, D) array, got shape {tuple(self.inducing.shape)}"
            )
        self.scales = torch.as_tensor(inverse_lengthscales, dtype=DTYPE)
        if self.scales.shape != (self.inducing.shape[1],):
            raise ConfigError(f"need {self.inducing.shape[1]} inverse length-scales, got {len(self.scales)}")
        if signal_variance <= 0 or bool((self.scales <= 0).any()):
            raise ConfigError("signal_variance and inverse_lengthscales must be positive")
        self.signal_variance = float(signal_variance)
        self.max_iter = int(max_iter)
        k_zz = self.kernel(self.inducing, self.inducing)
        k_zz = k_zz + jitter * self.signal_variance * torch.eye(len(k_zz), dtype=DTYPE)
        self.prior = GaussianPosterior.from_cov(torch.zeros(len(k_zz), dtype=DTYPE), k_zz, "prior covariance K_ZZ")

    @property
    def num_inducing(self) -> int:
        return self.inducing.shape[0]

    def kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = (a[:, None, :] - b[None, :, :]) * self.scales
        return self.signal_variance * torch.exp(-0.5 * diff.pow(2).sum(-1))

    def projection(self, X) -> torch.Tensor:
        """``A(X) = k(X, Z) K_ZZ^-1`` so that ``f(X) = A(X) u``."""
        X = torch.as_tensor(np.asarray(X), dtype=DTYPE).reshape(-1, self.inducing.shape[1])
        return torch.cholesky_solve(self.kernel(X, self.inducing).T, self.prior.chol).T

    # ------------------------------------------------------------------------------------------------ likelihood

    def log_lik(self, theta: torch.Tensor, A: torch.Tensor, y_signed: torch.Tensor) -> torch.Tensor:
        """``log p(D|theta) = sum_i log sigmoid(y_i f(x_i))`` for each row of ``theta`` (shape ``(S,)``)."""
        return F.logsigmoid((theta @ A.T) * y_signed).sum(-1)

    def expected_log_lik(self, q: GaussianPosterior, A: torch.Tensor, y_signed: torch.Tensor) -> torch.Tensor:
        mean = A @ q.mean
        var = (A @ q.chol).pow(2).sum(-1)
        return gauss_hermite_log_sigmoid(y_signed * mean, var).sum()

    def elbo(self, q: GaussianPosterior, A: torch.Tensor, y_signed: torch.Tensor) -> torch.Tensor:
        return self.expected_log_lik(q, A, y_signed) - kl_gaussians(q, self.prior)

    # ------------------------------------------------------------------------------------------------ fit

    def fit(self, X, y, init: GaussianPosterior | None = None) -> GaussianPosterior:
        """Variational posterior ``q(u|D)`` maximising the ELBO on ``(X, y)``; no data gives the prior."""
        y_signed = _signed(y)
        if len(y_signed) == 0:
            return self.prior.detach()
        A = self.projection(X)
        if len(A) != len(y_signed):
            raise ConfigError(f"X has {len(A)} rows but y has {len(y_signed)} labels")
        start = init or self.prior
        params = GaussianParams(start)
        optimizer = torch.optim.LBFGS(
            params.tensors, lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-7
        )

        def closure():
            optimizer.zero_grad()
            loss = -self.elbo(params.posterior(), A, y_signed)
            loss.backward()
            return loss

        optimizer.step(closure)
        posterior = params.posterior().detach()
        if not torch.isfinite(posterior.mean).all():
            raise TrainingError("variational inference diverged (non-finite posterior mean)")
        return posterior

    # ------------------------------------------------------------------------------------------------ predict

    def predict_proba(self, posterior: GaussianPosterior, X, num_samples: int = 2000, seed: int = 0) -> np.ndarray:
        """``p(y = 1 | x)`` = mean over ``num_samples`` seeded draws ``u_s ~ posterior`` of ``sigmoid(A(x) u_s)``."""
        generator = torch.Generator().manual_seed(int(seed))
        samples = posterior.sample(num_samples, generator)
        A = self.projection(X)
        out = [torch.sigmoid(A[i : i + 2048] @ samples.T).mean(1) for i in range(0, len(A), 2048)]
        return torch.cat(out).numpy() if out else np.empty(0)


class GaussianParams:
    """The free parameters of a Gaussian: mean and a lower-triangular factor with a log-parameterised diagonal."""

    def __init__(self, start: GaussianPosterior):
        self.mean = start.mean.detach().clone().requires_grad_(True)
        chol = start.chol.detach().clone()
        self.lower = torch.tril(chol, -1).requires_grad_(True)
        self.log_diag = chol.diagonal().log().clone().requires_grad_(True)
        self.tensors = [self.mean, self.lower, self.log_diag]

    def posterior(self) -> GaussianPosterior:
        return GaussianPosterior(self.mean, torch.tril(self.lower, -1) + torch.diag(self.log_diag.exp()))
