"""Variational Bayesian Unlearning: sparse GP, EUBO / rKL, shards and aggregation, the moons CLI, bad inputs."""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

from classifiers.vbu.experiment import bernoulli_kl
from classifiers.vbu.gp import GaussianPosterior, NotPositiveDefiniteError, SparseGPClassifier, safe_cholesky
from classifiers.vbu.shards import ShardedGPUnlearner, aggregate, check_shards, find_indices, partition
from classifiers.vbu.unlearn import check_lambda, eubo_unlearn, rkl_unlearn
from concept_erase.core.errors import ConceptEraseError, ConfigError, EmptyDataError, NotFittedError
from pipelines.cli import main


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(n_samples=100, noise=0.2, random_state=0)
    Z = make_moons(n_samples=20, noise=0.2, random_state=0)[0]
    erase = np.sort(np.argsort(-X[:, 0])[:20])
    return X, y, SparseGPClassifier(Z), erase


@pytest.fixture(scope="module")
def fitted(moons):
    X, y, model, erase = moons
    keep = np.setdiff1d(np.arange(len(X)), erase)
    full = model.fit(X, y)
    retrained = model.fit(X[keep], y[keep])
    A = model.projection(X[erase])
    y_signed = torch.as_tensor(2.0 * y[erase] - 1.0, dtype=A.dtype)
    return full, retrained, lambda theta: model.log_lik(theta, A, y_signed)


def _kl_erased(model, reference, posterior, X, erase):
    return float(bernoulli_kl(model.predict_proba(reference, X), model.predict_proba(posterior, X))[erase].mean())


def test_elbo_fit_is_a_good_classifier(moons, fitted):
    X, y, model, _ = moons
    accuracy = ((model.predict_proba(fitted[0], X) > 0.5) == y).mean()
    assert accuracy > 0.85


def test_fit_and_predictions_are_deterministic(moons, fitted):
    X, y, model, _ = moons
    again = model.fit(X, y)
    assert torch.equal(again.mean, fitted[0].mean) and torch.equal(again.chol, fitted[0].chol)
    assert np.array_equal(model.predict_proba(again, X, seed=3), model.predict_proba(fitted[0], X, seed=3))


def test_lambda_one_leaves_the_posterior_unchanged(fitted):
    full, _, log_lik = fitted
    for unlearn in (eubo_unlearn, rkl_unlearn):
        out = unlearn(full, log_lik, lam=1.0).posterior
        assert torch.equal(out.mean, full.mean) and torch.equal(out.chol, full.chol)


def test_unlearning_at_a_good_lambda_beats_the_full_posterior(moons, fitted):
    X, _, model, erase = moons
    full, retrained, log_lik = fitted
    baseline = _kl_erased(model, retrained, full, X, erase)
    eubo = eubo_unlearn(full, log_lik, lam=1e-9, seed=0, steps=1000).posterior  # the authors' Adam, shortened
    lbfgs = eubo_unlearn(full, log_lik, lam=1e-9, num_samples=256, seed=0, optimizer="lbfgs").posterior
    rkl = rkl_unlearn(full, log_lik, lam=1e-5, seed=0).posterior
    assert _kl_erased(model, retrained, eubo, X, erase) < 0.5 * baseline
    assert _kl_erased(model, retrained, lbfgs, X, erase) < 0.8 * baseline
    assert _kl_erased(model, retrained, rkl, X, erase) < 0.5 * baseline
    again = eubo_unlearn(full, log_lik, lam=1e-9, seed=0, steps=1000).posterior
    assert torch.equal(again.mean, eubo.mean)  # seeded: same draws, same result


def _kls(model, reference, posterior, X, erase):
    kl = bernoulli_kl(model.predict_proba(reference, X), model.predict_proba(posterior, X))
    keep = np.setdiff1d(np.arange(len(X)), erase)
    return float(kl[erase].mean()), float(kl[keep].mean())


def test_authors_rkl_does_not_hurt_the_remaining_points(moons, fitted):
    """Parity with the authors' code: weights normalised per batch of 1,000 draws (their estimator) keep D_r at or
    below the un-unlearned posterior's KL, while one pool of 20,000 draws (our earlier estimator) does not."""
    X, _, model, erase = moons
    full, retrained, log_lik = fitted
    base_e, base_r = _kls(model, retrained, full, X, erase)
    for lam in (0.0, 1e-9):
        rkl_e, rkl_r = _kls(model, retrained, rkl_unlearn(full, log_lik, lam=lam, seed=0).posterior, X, erase)
        assert rkl_r <= base_r and rkl_e < 0.1 * base_e
        pooled = rkl_unlearn(full, log_lik, lam=lam, num_samples=20000, seed=0, estimator="pooled").posterior
        pooled_e, pooled_r = _kls(model, retrained, pooled, X, erase)
        assert pooled_r > 2 * base_r and rkl_e < pooled_e


def test_authors_rkl_adam_loop_moves_towards_the_batched_stationary_point(fitted):
    full, _, log_lik = fitted
    target = rkl_unlearn(full, log_lik, lam=0.0, seed=0).posterior
    adam = rkl_unlearn(full, log_lik, lam=0.0, seed=1, estimator="adam", steps=400, lr=1e-2).posterior
    # measured: 3.74 -> 2.40 after 400 steps at lr 1e-2 (it converges slowly, as at lr 1e-3; docs/vbu.md)
    assert torch.linalg.norm(adam.mean - target.mean) < 0.8 * torch.linalg.norm(full.mean - target.mean)


def test_eubo_hand_written_gradient_matches_autograd(fitted):
    """One Adam step of the fast EUBO loop equals one step through plain autograd on the same draws."""
    from classifiers.vbu.gp import GaussianParams, kl_gaussians
    from classifiers.vbu.unlearn import _adam_eubo, _adjusted_log_lik

    full, _, log_lik = fitted
    fast = GaussianParams(full)
    _adam_eubo(fast, full, log_lik, 1e-9, 64, 1, 1e-3, torch.Generator().manual_seed(5))
    slow = GaussianParams(full)
    eps = torch.randn(64, full.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    adam = torch.optim.Adam(slow.tensors, lr=1e-3)
    q = slow.posterior()
    theta = q.mean + eps @ q.chol.T
    (_adjusted_log_lik(theta, full, log_lik, 1e-9).mean() + kl_gaussians(q, full)).backward()
    adam.step()
    for a, b in zip(fast.tensors, slow.tensors):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_eubo_adam_at_a_lambda_that_masks_every_draw_stays_at_the_full_posterior(fitted):
    """lambda = 0.1 puts every draw (20 dimensions) outside the adjusted region: the likelihood term is constant (no gradient, which
    once raised a RuntimeError), so only the KL term acts and it keeps q at the full posterior."""
    from classifiers.vbu.unlearn import eubo_unlearn

    full, _, log_lik = fitted
    result = eubo_unlearn(full, log_lik, lam=0.1, optimizer="adam", steps=5, num_samples=64).posterior
    torch.testing.assert_close(result.mean, full.mean, rtol=0, atol=1e-6)


def test_aggregation_formulas(moons, fitted):
    _, _, model, _ = moons
    full = fitted[0]
    for how in ("poe", "bcm"):
        assert aggregate([full], model.prior, how) is full  # S = 1: identity
    poe = aggregate([full, full, full], model.prior, "poe")  # identical experts: precision x3, same mean
    torch.testing.assert_close(poe.mean, full.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(poe.precision(), 3 * full.precision(), rtol=1e-5, atol=1e-5)
    bcm = aggregate([model.prior, model.prior], model.prior, "bcm")  # BCM of prior "experts" is the prior
    torch.testing.assert_close(bcm.cov, model.prior.cov, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="accepted: poe, bcm"):
        aggregate([full], model.prior, "mean")


def test_shards_unlearn_only_where_erased_points_are(moons):
    X, y, model, _ = moons
    vbu = ShardedGPUnlearner(model, num_shards=4, shard_mode="contiguous").fit(X, y)
    assert [len(s) for s in vbu.shards_] == [25, 25, 25, 25]
    posteriors, seconds = vbu.unlearned_posteriors([0, 1, 2], method="rkl", lam=1e-5)
    assert len(seconds) == 1 and posteriors[1] is vbu.posteriors_[1] and posteriors[0] is not vbu.posteriors_[0]
    for agg in ("poe", "bcm", "ensemble"):
        p = vbu.predict_proba(X, agg, posteriors, num_samples=500)
        assert p.shape == (100,) and np.all((p >= 0) & (p <= 1))
    shards = partition(10, 3, "random", seed=1)
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
    assert [s.tolist() for s in shards] == [s.tolist() for s in partition(10, 3, "random", 1)]
    assert [s.tolist() for s in shards] != [s.tolist() for s in partition(10, 3, "contiguous")]


# ---------------------------------------------------------------------------------------------------- bad input


def test_erased_points_not_in_training_set(moons):
    X, y, model, _ = moons
    vbu = ShardedGPUnlearner(model).fit(X, y)
    with pytest.raises(ConfigError, match="not in the training set"):
        vbu.unlearned_posteriors([3, 100])
    with pytest.raises(ConfigError, match="not in the training set"):
        find_indices(X, np.array([[9.0, 9.0]]))
    assert find_indices(X, X[[5, 7]]).tolist() == [5, 7]


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "high"])
def test_lambda_outside_unit_interval(fitted, lam):
    with pytest.raises(ConfigError, match="lambda"):
        check_lambda(lam)
    with pytest.raises(ConfigError, match="lambda"):
        eubo_unlearn(fitted[0], fitted[2], lam=lam)


def test_unknown_estimators_are_refused(fitted):
    with pytest.raises(ConfigError, match="accepted: batched, adam, pooled"):
        rkl_unlearn(fitted[0], fitted[2], estimator="sgd")
    with pytest.raises(ConfigError, match="accepted: adam, lbfgs"):
        eubo_unlearn(fitted[0], fitted[2], optimizer="sgd")
    with pytest.raises(ConfigError, match="accepted: eubo, rkl, eubo_lbfgs"):
        ShardedGPUnlearner(SparseGPClassifier(np.zeros((2, 2)) + [[0, 0], [1, 1]])).fit(
            np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([0, 1])
        ).unlearned_posteriors([0], method="moments")


def test_empty_shard_and_too_many_shards(moons):
    X, y, model, _ = moons
    with pytest.raises(EmptyDataError, match="shard 1 is empty"):
        ShardedGPUnlearner(model, shards=[list(range(100)), []]).fit(X, y)
    with pytest.raises(ConfigError, match="disjoint"):
        check_shards([[0, 1], [1, 2]], 3)
    with pytest.raises(ConfigError, match="101 shards for 100 samples"):
        ShardedGPUnlearner(model, num_shards=101).fit(X, y)
    with pytest.raises(NotFittedError):
        ShardedGPUnlearner(model).predict_proba(X)


def test_non_positive_definite_covariance_jitters_then_fails():
    nearly = torch.tensor([[1.0, 1.0], [1.0, 1.0 - 1e-12]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="jitter"):
        safe_cholesky(nearly)
    indefinite = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="jitter"), pytest.raises(NotPositiveDefiniteError, match="not positive"):
        GaussianPosterior.from_cov(torch.zeros(2, dtype=torch.float64), indefinite)
    assert issubclass(NotPositiveDefiniteError, ConceptEraseError)


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_moons_writes_results(tmp_path, capsys):
    out = tmp_path / "vbu"
    args = ["vbu", "moons", "--shards", "1,2", "--lambdas", "0,1e-5,1", "--methods", "eubo_lbfgs,rkl", "--quiet"]
    assert main([*args, "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"config", "data", "rows", "best"} <= set(results)
    assert {"kl_erased", "kl_remaining", "unlearn_seconds", "retrain_seconds"} <= set(results["rows"][-1])
    assert (out / "maps.png").is_file() and (out / "kl_vs_lambda_contiguous_poe.png").is_file()
    assert main([*args, "--output", str(out)]) == 2  # existing output refused
    capsys.readouterr()
    assert main(["vbu", "moons", "--lambdas", "0,2", "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lambda must be in [0, 1]" in err
    assert main(["vbu", "moons", "--shards", "101", "--output", str(tmp_path / "bad2")]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_bayes_mlp_on_digits_scored_against_the_oracle():
    from classifiers.vbu.bayes_classifier import DigitsConfig, run_digits

    config = DigitsConfig(vi_steps=60, unlearn_steps=10, rkl_samples=100, lambdas=[0.0, 1.0])
    result = run_digits(config)
    methods = result["methods"]
    assert set(methods) == {"original", "eubo@0", "rkl@0", "eubo@1", "rkl@1"}
    assert methods["eubo@1"]["ua"] == methods["original"]["ua"]  # lambda = 1: no unlearning
    assert methods["eubo@0"]["ua"] > methods["original"]["ua"]  # full EUBO forgets class 3
    assert methods["eubo@0"]["oracle"]["ua"] == result["oracle"]["ua"]
