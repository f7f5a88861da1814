"""The Projective Residual Update (PRU) and the influence-function update: deleting points from a linear model.

Izzo, Smart, Chaudhuri and Zou, "Approximate Data Deletion from Machine Learning Models" (AISTATS 2021). A linear
model ``theta`` (features ``x`` with a constant 1 appended for the bias, one column per class) fitted to the optimum of

    sum_i loss(x_i . theta, y_i) + l2 / 2 * ||theta without the bias||^2

is asked to forget the rows ``K``. Retraining solves the problem again without them. Two updates avoid that:

- **influence** (the paper's baseline, one Newton step with the full-data Hessian ``A``, Koh and Liang's influence
  function): ``theta + A^-1 X_K^T g_K`` with ``g_K`` the deleted points' loss gradients with respect to their scores;
- **PRU**: the deleted points' leave-``K``-out scores follow from the hat matrix block
  ``H_KK = S X_K A^-1 X_K^T S`` (``S`` the square root of the loss curvature, 1 for least squares):
  ``delta_K = S^-1 H_KK (I - H_KK)^-1 S^-1 g_K`` is the change of their scores that retraining makes (exact for
  least squares, the Newton step's for logistic regression); PRU applies the smallest parameter change that lies in
  the span of the deleted points and makes exactly that change, ``X_K^+ delta_K`` (for logistic regression on the
  problem's IRLS form, a curvature-weighted pseudo-inverse, as in the paper; the same when the ``x_K`` are linearly
  independent). The authors' code (github.com/zleizzo/datadeletion, linear regression) computes the same
  leave-k-out residuals and step; ``tests/classifiers/test_pru.py`` checks the logistic update against a reference
  written their way on the IRLS form (their linear one with unit weights). For least squares PRU is the orthogonal
  projection of the exact update onto the span of ``x_K``: PRU's scores on the deleted points equal the retrained
  model's, and its distance to the retrained parameters never exceeds the original's (the paper's guarantee; with
  ``k = 1`` the update is exact along ``x``, not in every direction).

``bias=False`` (:func:`fit_linear`, :func:`prepare`): features without a bias column, every coefficient penalised,
the authors' setting. With a bias column, a feature that is constant on the deleted points (the feature-injection
test's) equals the bias on all of them, and no update in their span can remove it without moving the bias as much.

Losses: ``least_squares`` (linear regression on one-hot targets, the paper's main case) and ``logistic`` (the paper's
extension: one-vs-rest logistic regressions, ``p = sigmoid(score)``, curvature ``p (1 - p)`` per class; on a softmax
model trained with cross-entropy it uses the softmax probabilities, a diagonal approximation of the softmax
curvature). Both updates need ``A`` (the Hessian of the training objective, a by-product of fitting a linear model):
:func:`prepare` factorises it once (Cholesky), and the registered methods report that time as ``excluded_seconds``
(training-time work, left out of the cost ratio) and ``prepare_seconds``. With the factor, PRU costs ``O(k d^2)`` for
``H_KK`` plus ``O(k^2 d)`` for the projection; the paper's ``O(k^2 d)`` assumes the ``n x n`` hat matrix is stored at
training time, which :func:`prepare` does not do (it would be 112 MB for MNIST-5k).

In the harness the methods take a model whose read-out is linear: the ``mlp`` family (``hidden_sizes: []`` is linear
/ logistic regression on the pixels; with hidden layers the read-out is updated on the last hidden layer's features,
which stay fixed). Other families are refused. The harness's original is trained with the shared trainer (AdamW on
cross-entropy), not to the exact optimum PRU assumes: the summary reports the objective's gradient norm there
(``optimality_gap``); ``scripts/bench_pru.py`` fits the exact optima.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from classifiers.data import UnlearningTask
from classifiers.models import MLP
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import register_method

__all__ = [
    "LOSSES",
    "LinearDeletionConfig",
    "LinearProblem",
    "fit_linear",
    "influence",
    "influence_update",
    "linear_readout",
    "prepare",
    "pru",
    "pru_update",
]

LOSSES = ("least_squares", "logistic")


@dataclass
class LinearDeletionConfig:
    """``loss``: the training objective the model is (close to) the optimum of; ``l2``: its ridge strength (the
    bias is not penalised); ``rcond``: relative cut-off of the eigenvalues of the deleted points' Gram matrix ``X_K X_K^T``
    in PRU's pseudo-inverse."""

    loss: Literal["least_squares", "logistic"] = "logistic"
    l2: float = 1.0
    rcond: float = 1e-10

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        if not 0 < self.rcond < 1:
            raise ConfigError(f"rcond must be in (0, 1), got {self.rcond}")


@dataclass
class LinearProblem:
    """A fitted linear model and what deleting from it needs: features ``x`` (n, d) with the bias column last,
    targets ``y`` (n, C; one-hot), parameters ``theta`` (d, C), float64, and per class the Cholesky factor of the
    Hessian ``A_c`` (C, d, d; one shared factor for least squares)."""

    x: torch.Tensor
    y: torch.Tensor
    theta: torch.Tensor
    loss: str
    l2: float
    factor: torch.Tensor
    bias: bool = True

    def scores(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x if rows is None else self.x[rows]
        return x @ self.theta


def _penalty(d: int, l2: float, bias: bool = True) -> torch.Tensor:
    diag = torch.full((d,), float(l2), dtype=torch.float64)
    if bias:
        diag[-1] = 0.0  # the bias column
    return torch.diag(diag)


def _probabilities(scores: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(scores)


def _curvature_and_gradient(problem_loss: str, scores: torch.Tensor, y: torch.Tensor):
    """Per sample and class: the loss's second derivative and first derivative with respect to the score."""
    if problem_loss == "least_squares":
        return torch.ones_like(scores), scores - y
    p = _probabilities(scores)
    return (p * (1 - p)).clamp_min(1e-12), p - y


def _hessians(x: torch.Tensor, w: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Per class ``X^T diag(w_c) X + penalty``: (C, d, d)."""
    return torch.stack([(x * w[:, c : c + 1]).T @ x + penalty for c in range(w.shape[1])])


def _check_data(x: torch.Tensor, y: torch.Tensor, loss: str, l2: float) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"features must be (n, d) and targets (n, C) with the same n, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {l2}")


def fit_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str = "least_squares",
    l2: float = 1.0,
    *,
    tol: float = 1e-10,
    max_iter: int = 50,
    bias: bool = True,
) -> torch.Tensor:
    """The exact optimum ``theta`` (d, C) of the module docstring's objective: the ridge normal equations for least
    squares, Newton's method (per class, batched) for logistic regression. ``x`` carries the bias column last
    (``bias=False``: no bias column, every coefficient penalised, as in the authors' experiments)."""
    x, y = x.double(), y.double()
    _check_data(x, y, loss, l2)
    d = x.shape[1]
    penalty = _penalty(d, l2, bias)
    if loss == "least_squares":
        return torch.linalg.solve(x.T @ x + penalty, x.T @ y)
    theta = torch.zeros(d, y.shape[1], dtype=torch.float64)
    for _ in range(max_iter):
        w, g = _curvature_and_gradient(loss, x @ theta, y)
        grad = x.T @ g + penalty @ theta  # (d, C)
        if float(grad.abs().max()) < tol * max(1.0, x.shape[0]):
            break
        hessians = _hessians(x, w, penalty)
        theta = theta - torch.linalg.solve(hessians, grad.T.unsqueeze(-1)).squeeze(-1).T
    return theta


def prepare(
    x: torch.Tensor,
    y: torch.Tensor,
    theta: torch.Tensor,
    loss: str = "least_squares",
    l2: float = 1.0,
    *,
    bias: bool = True,
) -> LinearProblem:
    """The :class:`LinearProblem` of a fitted model: factorises the training objective's Hessian at ``theta`` (the
    training-time work both updates need). ``bias`` as in :func:`fit_linear`."""
    x, y, theta = x.double(), y.double(), theta.double()
    _check_data(x, y, loss, l2)
    if theta.shape != (x.shape[1], y.shape[1]):
        raise ConfigError(f"theta must be (d, C) = {(x.shape[1], y.shape[1])}, got {tuple(theta.shape)}")
    penalty = _penalty(x.shape[1], l2, bias)
    if loss == "least_squares":
        hessians = (x.T @ x + penalty).unsqueeze(0)
    else:
        w, _ = _curvature_and_gradient(loss, x @ theta, y)
        hessians = _hessians(x, w, penalty)
    factor, info = torch.linalg.cholesky_ex(hessians)
    if int(info.max()) > 0:
        raise ConfigError(f"the {loss} Hessian is singular: use l2 > 0 (got {l2})")
    return LinearProblem(x, y, theta, loss, float(l2), factor, bias)


def _rows(problem: LinearProblem, forget) -> torch.Tensor:
    rows = torch.as_tensor(forget, dtype=torch.long).flatten()
    n = problem.x.shape[0]
    if rows.numel() == 0:
        raise ConfigError("no point to delete: the forget set is empty (k = 0); name at least one training index")
    if rows.numel() >= n:
        raise ConfigError(f"cannot delete {rows.numel()} points from {n} training points: at least one must remain")
    if int(rows.min()) < 0 or int(rows.max()) >= n:
        bad = int(rows.min()) if int(rows.min()) < 0 else int(rows.max())
        raise ConfigError(f"forget index {bad} is out of range: the training set has indices 0..{n - 1}")
    if torch.unique(rows).numel() != rows.numel():
        raise ConfigError("forget indices must not repeat: each training point is deleted once")
    return rows


def _solve(problem: LinearProblem, rhs: torch.Tensor) -> torch.Tensor:
    """``A_c^-1 rhs_c`` per class: rhs (C, d, m) -> (C, d, m)."""
    return torch.cholesky_solve(rhs, problem.factor)


def influence_update(problem: LinearProblem, forget) -> torch.Tensor:
    """The influence-function update: one Newton step on the retain objective with the full-data Hessian."""
    rows = _rows(problem, forget)
    xk = problem.x[rows]
    _, g = _curvature_and_gradient(problem.loss, xk @ problem.theta, problem.y[rows])
    rhs = (xk.T @ g).T.unsqueeze(-1)  # (C, d, 1): per class X_K^T g_c
    if problem.factor.shape[0] == 1:
        step = torch.cholesky_solve(xk.T @ g, problem.factor[0])  # (d, C)
    else:
        step = _solve(problem, rhs).squeeze(-1).T
    return problem.theta + step


def pru_update(problem: LinearProblem, forget, rcond: float = 1e-10) -> torch.Tensor:
    """The Projective Residual Update: the smallest change of ``theta`` in the span of the deleted points that
    moves their scores to their leave-k-out scores (module docstring)."""
    rows = _rows(problem, forget)
    xk = problem.x[rows]  # (k, d)
    w, g = _curvature_and_gradient(problem.loss, xk @ problem.theta, problem.y[rows])  # (k, C)
    root = w.sqrt()
    k = xk.shape[0]
    eye = torch.eye(k, dtype=torch.float64)
    if problem.factor.shape[0] == 1:
        solved = torch.cholesky_solve(xk.T, problem.factor[0])  # (d, k)
        base = (xk @ solved).unsqueeze(0)  # (1, k, k)
    else:
        rhs = xk.T.unsqueeze(0).expand(problem.factor.shape[0], -1, -1)
        base = xk @ _solve(problem, rhs)  # (C, k, k) = X_K A_c^-1 X_K^T
    scale = root.T  # (C, k)
    hat = scale.unsqueeze(-1) * base * scale.unsqueeze(-2)  # (C, k, k)
    scaled_g = (g / root).T.unsqueeze(-1)  # (C, k, 1)
    # delta = S^-1 H (I - H)^-1 S^-1 g, per class
    inner = torch.linalg.solve(eye - hat, scaled_g)
    delta = ((hat @ inner).squeeze(-1) / scale).T  # (k, C)
    # PRU's step: the change in span(x_K) whose (curvature-weighted, for logistic regression: the IRLS form) least-
    # squares fit of delta is smallest, S X_K^T (S G S)^+ S delta with the deleted points' Gram matrix G = X_K X_K^T
    # (k x k), inverted on its eigenvectors whose eigenvalue exceeds rcond times the largest (the authors
    # diagonalise the same matrix after a Gram-Schmidt step); O(k^2 d). When the x_K are independent the weights
    # cancel and it is X_K^+ delta, the change that gives the deleted points exactly their leave-k-out scores.
    gram = xk @ xk.T
    if problem.loss == "least_squares":
        scale = torch.ones(1, k, dtype=torch.float64)
    weighted = scale.unsqueeze(-1) * gram * scale.unsqueeze(-2)  # (C or 1, k, k)
    values, vectors = torch.linalg.eigh(weighted)
    cut = rcond * values.amax(dim=-1, keepdim=True)
    inverse = torch.where(values > cut, 1.0 / values, torch.zeros_like(values))
    rhs = (scale * delta.T).unsqueeze(-1)  # (C, k, 1)
    coefficients = scale * (vectors @ (inverse.unsqueeze(-1) * (vectors.transpose(-1, -2) @ rhs))).squeeze(-1)
    return problem.theta + xk.T @ coefficients.T


# ---------------------------------------------------------------------------------------------------- the harness


def linear_readout(model: nn.Module, method: str = "pru") -> tuple[nn.Module, nn.Linear]:
    """``(feature map, read-out)`` of a model in the linear family: the ``mlp`` models (the feature map is the
    flatten and hidden layers, fixed; with ``hidden_sizes: []`` only the flatten). Others raise ConfigError."""
    if isinstance(model, MLP) and isinstance(model.net[-1], nn.Linear):
        return model.net[:-1], model.net[-1]
    name = getattr(getattr(model, "config", None), "name", type(model).__name__)
    raise ConfigError(
        f"{method} handles linear and logistic regression only: model 'mlp' (hidden_sizes [] for a linear model of "
        f"the inputs; with hidden layers the read-out over their fixed features), got {name!r}"
    )


def _problem_of(model: nn.Module, task: UnlearningTask, config: LinearDeletionConfig, method: str):
    features, head = linear_readout(model, method)
    data = task.training_data()
    with torch.no_grad():
        phi = features.eval()(data.tensors[0]).double()
    x = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)
    y = torch.nn.functional.one_hot(data.tensors[1], task.num_classes).double()
    theta = torch.cat([head.weight.detach().double().T, head.bias.detach().double().unsqueeze(0)], dim=0)
    problem = prepare(x, y, theta, config.loss, config.l2)
    if task.forget_indices is not None and task.retain_indices is not None:
        rows = torch.searchsorted(
            torch.sort(torch.cat([task.retain_indices, task.forget_indices])).values, task.forget_indices
        )
    else:  # training_data() is retain, then forget
        rows = torch.arange(len(task.retain), len(task.retain) + len(task.forget))
    _, g = _curvature_and_gradient(config.loss, problem.scores(), y)
    gap = float((x.T @ g + _penalty(x.shape[1], config.l2) @ theta).norm() / len(x))
    return head, problem, rows, gap


def _write_head(head: nn.Linear, theta: torch.Tensor) -> None:
    with torch.no_grad():
        head.weight.copy_(theta[:-1].T.to(head.weight.dtype))
        head.bias.copy_(theta[-1].to(head.bias.dtype))


def _run(model: nn.Module, task: UnlearningTask, config: LinearDeletionConfig, method: str, update) -> dict:
    start = time.perf_counter()
    head, problem, rows, gap = _problem_of(model, task, config, method)
    prepared = time.perf_counter() - start
    theta = update(problem, rows)
    if not torch.isfinite(theta).all():
        raise ConfigError(f"{method}: the update is not finite (raise l2, now {config.l2})")
    _write_head(head, theta)
    model.eval()
    return {
        "method": method,
        "loss": config.loss,
        "l2": config.l2,
        "deleted": int(rows.numel()),
        "features": int(problem.x.shape[1]),
        "optimality_gap": gap,
        "update_norm": float((theta - problem.theta).norm()),
        "prepare_seconds": round(prepared, 4),
        "excluded_seconds": prepared,
    }


@register_method("pru", LinearDeletionConfig, tags=("classifier",))
def pru(model: nn.Module, task: UnlearningTask, config: LinearDeletionConfig, *, work_dir: Path | None = None) -> dict:
    """Projective Residual Update of the model's linear read-out (Izzo et al., 2021)."""
    return _run(model, task, config, "pru", lambda p, rows: pru_update(p, rows, config.rcond))


@register_method("influence", LinearDeletionConfig, tags=("classifier",))
def influence(
    model: nn.Module, task: UnlearningTask, config: LinearDeletionConfig, *, work_dir: Path | None = None
) -> dict:
    """The influence-function (one Newton step) update of the model's linear read-out, PRU's baseline."""
    return _run(model, task, config, "influence", influence_update)
