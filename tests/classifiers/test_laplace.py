"""Laplace Bayesian unlearning: the Newton search, the precision update, the GP and last-layer uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifiers.methods.laplace import LaplaceConfig, last_layer_posterior, softmax_nll, unlearn_last_layer
from classifiers.vbu.experiment import MoonsConfig, moons_data, run_moons
from classifiers.vbu.gp import GaussianPosterior, SparseGPClassifier, kl_gaussians
from classifiers.vbu.laplace import gp_laplace_unlearn, kl_precision, laplace_unlearn, logistic_nll
from concept_erase.core.errors import ConfigError

D = torch.float64


def _quadratic(precision: torch.Tensor, centre: torch.Tensor):
    """NLL of a Gaussian likelihood: 1/2 (theta - c)^T L (theta - c), gradient, Hessian."""

    def nll(theta):
        diff = theta - centre
        return 0.5 * diff @ precision @ diff, precision @ diff, precision

    return nll


def test_gaussian_likelihood_is_removed_exactly():
    """Prior N(0, I) times a Gaussian likelihood (precision L, centre c) is N(mu, P^-1); Laplace unlearning of that
    likelihood is exact and gives the prior back, whatever the starting curvature."""
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(4, 4, generator=gen, dtype=D)
    L = B @ B.T + 0.5 * torch.eye(4, dtype=D)
    c = torch.randn(4, generator=gen, dtype=D)
    P = torch.eye(4, dtype=D) + L
    mu = torch.linalg.solve(P, L @ c)
    before = (mu.clone(), P.clone())
    result = laplace_unlearn(mu, P, _quadratic(L, c))
    assert torch.allclose(result.mean, torch.zeros(4, dtype=D), atol=1e-10)
    assert torch.allclose(result.precision, torch.eye(4, dtype=D), atol=1e-10)
    assert torch.equal(mu, before[0]) and torch.equal(P, before[1])  # inputs untouched


@pytest.mark.parametrize(
    ("curvature", "mean"),
    [(1.0, 0.0), (2.0, 0.0), (2.0, 0.5)],
    ids=["singular", "indefinite-at-stationary-point", "no-minimum"],
)
def test_non_positive_definite_precision_is_a_config_error(curvature, mean):
    """Deleting more curvature than the posterior holds (precision 1): a one-line ConfigError, never a NaN."""
    with pytest.raises(ConfigError, match="singular or not positive definite") as info:
        laplace_unlearn(
            torch.tensor([mean], dtype=D),
            torch.eye(1, dtype=D),
            _quadratic(torch.eye(1, dtype=D) * curvature, torch.zeros(1, dtype=D)),
        )
    assert "\n" not in str(info.value) and "nan" not in str(info.value).lower()


def test_bad_input_precision_is_refused():
    with pytest.raises(ConfigError, match="posterior precision is singular or not positive definite"):
        laplace_unlearn(
            torch.zeros(2, dtype=D),
            torch.diag(torch.tensor([1.0, -1.0], dtype=D)),
            _quadratic(torch.eye(2, dtype=D), torch.zeros(2, dtype=D)),
        )
    with pytest.raises(ConfigError, match="does not match"):
        laplace_unlearn(
            torch.zeros(3, dtype=D), torch.eye(2, dtype=D), _quadratic(torch.eye(2, dtype=D), torch.zeros(2, dtype=D))
        )
    with pytest.raises(ConfigError, match="NaN"):
        laplace_unlearn(
            torch.tensor([float("nan")], dtype=D),
            torch.eye(1, dtype=D),
            _quadratic(torch.eye(1, dtype=D), torch.zeros(1, dtype=D)),
        )


def test_kl_precision_matches_the_covariance_form():
    gen = torch.Generator().manual_seed(1)
    gaussians = []
    for _ in range(2):
        B = torch.randn(3, 3, generator=gen, dtype=D)
        gaussians.append((torch.randn(3, generator=gen, dtype=D), B @ B.T + torch.eye(3, dtype=D)))
    (mq, Q), (mp, P) = gaussians
    expected = kl_gaussians(
        GaussianPosterior.from_cov(mq, torch.linalg.inv(Q)), GaussianPosterior.from_cov(mp, torch.linalg.inv(P))
    )
    got = kl_precision(mq, torch.linalg.cholesky(Q), mp, torch.linalg.cholesky(P))
    assert got == pytest.approx(float(expected), rel=1e-10)


def test_logistic_and_softmax_derivatives_match_autograd():
    gen = torch.Generator().manual_seed(2)
    A, y = torch.randn(7, 3, generator=gen, dtype=D), torch.tensor([1, -1, 1, 1, -1, -1, 1], dtype=D)
    phi, labels = torch.randn(9, 4, generator=gen, dtype=D), torch.randint(0, 3, (9,), generator=gen)
    for fn, d in ((logistic_nll(A, y), 3), (softmax_nll(phi, labels, 3, chunk=4), 12)):
        theta = torch.randn(d, generator=gen, dtype=D)
        _, grad, hess = fn(theta)

        def value(t, fn=fn):
            return fn(t)[0]

        assert torch.allclose(grad, torch.func.grad(value)(theta), atol=1e-10)
        assert torch.allclose(hess, torch.autograd.functional.hessian(value, theta), atol=1e-10)


def test_gp_laplace_unlearning_is_the_map_of_the_target():
    """On the moons GP: the gradient of log q(u|D) - log p(D_e|u) vanishes at the new mean, the precision is
    S^-1 - H_e there, and with no curvature left to remove the result is a proper Gaussian."""
    X, y, Z, erase = moons_data(MoonsConfig())
    model = SparseGPClassifier(Z, max_iter=50)
    full = model.fit(X, y)
    posterior, result = gp_laplace_unlearn(model, full, X[erase], y[erase])
    A = model.projection(X[erase])
    nll = logistic_nll(A, torch.as_tensor(2.0 * y[erase] - 1.0, dtype=D))
    _, grad, hess = nll(result.mean)
    assert torch.allclose(full.precision() @ (result.mean - full.mean), grad, atol=1e-6)
    assert torch.allclose(posterior.precision(), full.precision() - hess, rtol=1e-6, atol=1e-6)
    assert result.min_eigenvalue > 0
    # deleting the points pushes their predictions away from their labels
    before, after = model.predict_proba(full, X[erase]), model.predict_proba(posterior, X[erase])
    labels = y[erase] == 1
    assert np.mean(np.where(labels, after, 1 - after)) < np.mean(np.where(labels, before, 1 - before))


def test_moons_study_runs_laplace_with_its_own_plot(tmp_path):
    """``--methods laplace``: one row per S and aggregation, no lambda; the study writes laplace_vs_vbu.png."""
    from classifiers.vbu.experiment import write_moons

    config = MoonsConfig(
        shards=[1],
        lambdas=[1.0],
        methods=["laplace"],
        aggregations=["poe"],
        predict_samples=50,
        n_samples=40,
        num_erase=8,
    )
    result = run_moons(config, progress=False)
    rows = [r for r in result["rows"] if r["method"] == "laplace"]
    assert [(r["num_shards"], r["lambda"]) for r in rows] == [(1, None)]
    assert rows[0]["kl_erased"] > 0 and np.isfinite(rows[0]["kl_remaining"])
    names = write_moons(result, tmp_path)
    assert "laplace_vs_vbu.png" in names and (tmp_path / "laplace_vs_vbu.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="laplace"):
        MoonsConfig(methods=["laplac"]).validate()


def test_last_layer_posterior_and_unlearning():
    """Multinomial logistic regression on separable-ish data: the MAP fit's gradient vanishes; unlearning a
    class lowers its probability; unlearning nothing-like (fit_map false, tiny forget set) keeps a proper posterior."""
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 4, generator=gen, dtype=D) * 2
    labels = torch.arange(3).repeat_interleave(20)
    phi = torch.cat([centres[labels] + torch.randn(60, 4, generator=gen, dtype=D), torch.ones(60, 1, dtype=D)], 1)
    post = last_layer_posterior(phi, labels, 3, 1.0, torch.zeros(15, dtype=D))
    _, grad, hess = softmax_nll(phi, labels, 3)(post.mean)
    assert float((grad + post.mean).norm()) < 1e-6  # gradient of NLL + 1/2 ||theta||^2
    assert torch.allclose(post.precision, torch.eye(15, dtype=D) + hess, atol=1e-8)
    erase = labels == 2
    full, unlearned = unlearn_last_layer(
        phi, labels, phi[erase], labels[erase], 3, post.mean, LaplaceConfig(prior_precision=1.0)
    )
    assert torch.allclose(full.mean, post.mean, atol=1e-8)
    logits = lambda t: (phi[erase] @ t.reshape(3, -1).T).log_softmax(-1)[:, 2].mean()  # noqa: E731
    assert logits(unlearned.mean) < logits(full.mean) - 1.0
    assert unlearned.min_eigenvalue > 0
    with pytest.raises(ConfigError, match="prior_precision"):
        LaplaceConfig(prior_precision=0.0)
