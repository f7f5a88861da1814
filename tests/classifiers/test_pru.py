"""PRU and the influence update (Izzo et al., 2021), the feature-injection test, the benchmark and the harness."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import classifiers.plugin  # noqa: F401  (registers the methods)
from classifiers.data import from_arrays, make_task
from classifiers.harness import UnlearnJob, run_job
from classifiers.injection import inject_feature, injected_feature_weight
from classifiers.methods import unlearn
from classifiers.methods.pru import fit_linear, influence_update, prepare, pru_update
from classifiers.models import build_model
from concept_erase.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _data(n=160, d=10, classes=3, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d - 1 if bias else d, generator=g, dtype=torch.float64)
    if bias:
        x = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    labels = (x[:, :classes] + 0.8 * torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
    return x, torch.nn.functional.one_hot(labels, classes).double()


def _dist(a, b):
    return float((a - b).norm())


@pytest.fixture(scope="module")
def least_squares():
    x, y = _data()
    theta = fit_linear(x, y, "least_squares", 1.0)
    return x, y, theta, prepare(x, y, theta, "least_squares", 1.0)


@pytest.fixture(scope="module")
def logistic():
    x, y = _data(n=120, d=8)
    theta = fit_linear(x, y, "logistic", 1.0)
    return x, y, theta, prepare(x, y, theta, "logistic", 1.0)


def test_least_squares_pru_is_the_projection_of_the_exact_update_onto_the_deleted_points(least_squares):
    x, y, theta, problem = least_squares
    for k in (1, 5):
        rows, keep = torch.arange(k), torch.arange(k, len(x))
        exact = fit_linear(x[keep], y[keep], "least_squares", 1.0)
        updated = pru_update(problem, rows)
        xk = x[rows]
        projection = torch.linalg.pinv(xk) @ xk  # onto the span of the deleted points
        assert torch.allclose(updated - theta, projection @ (exact - theta), atol=1e-10)
        # the deleted points' scores are the retrained model's exactly; the parameters move towards it
        assert torch.allclose(xk @ updated, xk @ exact, atol=1e-10)
        assert _dist(updated, exact) < 0.5 * _dist(theta, exact)


def test_least_squares_pru_is_exact_once_the_deleted_points_span_the_features(least_squares):
    x, y, theta, problem = least_squares
    exact = fit_linear(x[20:], y[20:], "least_squares", 1.0)
    updated = pru_update(problem, torch.arange(20))  # 20 points in 10 dimensions
    assert _dist(updated, exact) < 1e-9 * _dist(theta, exact)


def test_logistic_pru_and_influence_move_towards_the_retrained_optimum(logistic):
    x, y, theta, problem = logistic
    gradient = x.T @ (torch.sigmoid(x @ theta) - y) + 1.0 * torch.cat([theta[:-1], torch.zeros(1, 3)])
    assert float(gradient.abs().max()) < 1e-6  # fit_linear reaches the optimum
    for k in (1, 10):
        exact = fit_linear(x[k:], y[k:], "logistic", 1.0)
        assert _dist(pru_update(problem, torch.arange(k)), exact) < 0.5 * _dist(theta, exact)
        assert _dist(influence_update(problem, torch.arange(k)), exact) < 0.5 * _dist(theta, exact)


def test_logistic_pru_is_the_papers_irls_update_with_leave_k_out_residuals_from_the_hat_matrix(logistic):
    # the reference, written the authors' way per class: IRLS weights w = p (1 - p), working residuals
    # (y - p) / w, leave-one-out residuals r_i / (1 - H_ii) solved through T_ij = -H_ij / (1 - H_ii) for the
    # leave-k-out ones, then theta - (sum w x x^T)^+ sum w (x . theta - prediction') x; k = 5 and k = 12 (> d = 8)
    x, y, theta, problem = logistic
    for k in (5, 12):
        rows = torch.arange(k)
        updated = pru_update(problem, rows)
        for c in range(y.shape[1]):
            p = torch.sigmoid(x @ theta[:, c])
            w = p * (1 - p)
            penalty = torch.diag(torch.tensor([1.0] * (x.shape[1] - 1) + [0.0], dtype=torch.float64))
            root = w.sqrt().unsqueeze(1)
            hat = (root * x) @ torch.linalg.solve(x.T @ (w.unsqueeze(1) * x) + penalty, (root * x).T)
            residual = root.squeeze(1) * (y[:, c] - p) / w  # the scaled working residual
            h = hat[rows][:, rows]
            loo = residual[rows] / (1 - h.diag())
            t = torch.eye(k, dtype=torch.float64) - h / (1 - h.diag()).unsqueeze(1) * (1 - torch.eye(k))
            lko = torch.linalg.solve(t, loo) / root[rows].squeeze(1)  # unscaled leave-k-out working residuals
            prediction = x[rows] @ theta[:, c] + (y[rows, c] - p[rows]) / w[rows] - lko
            xk, wk = x[rows], w[rows]
            gradient = (wk * (xk @ theta[:, c] - prediction)) @ xk
            reference = theta[:, c] - torch.linalg.pinv((wk.unsqueeze(1) * xk).T @ xk) @ gradient
            assert torch.allclose(updated[:, c], reference, atol=1e-8), (k, c)


@pytest.mark.parametrize("loss", ["least_squares", "logistic"])
def test_without_a_bias_column_every_coefficient_is_penalised(loss):
    x, y = _data(n=80, d=6, bias=False)
    theta = fit_linear(x, y, loss, 2.0, bias=False)
    scores = x @ theta
    residual = scores - y if loss == "least_squares" else torch.sigmoid(scores) - y
    assert float((x.T @ residual + 2.0 * theta).abs().max()) < 1e-8  # the last column is penalised too
    with_bias_penalty = x.T @ residual + 2.0 * torch.cat([theta[:-1], torch.zeros(1, 3, dtype=torch.float64)])
    assert float(with_bias_penalty[-1].abs().max()) > 1e-3  # so the default (bias=True) optimum differs
    problem = prepare(x, y, theta, loss, 2.0, bias=False)
    assert problem.bias is False
    exact = fit_linear(x[4:], y[4:], loss, 2.0, bias=False)
    assert _dist(pru_update(problem, torch.arange(4)), exact) < _dist(theta, exact)


@pytest.mark.parametrize("loss", ["least_squares", "logistic"])
def test_injected_feature_weight_after_pru_is_far_below_the_original(loss):
    x, y = _data(n=200, d=12)
    x[:, 0] = 0.0
    rows = torch.arange(10)
    # a feature only the deleted points carry, prominent in them (value 5 against N(0, 1) features; at value 1 PRU
    # removes about a third of its weight here: it lies only partly in the deleted points' span)
    x[rows, 0] = 5.0
    theta = fit_linear(x, y, loss, 1.0)
    problem = prepare(x, y, theta, loss, 1.0)
    retrained = fit_linear(x[10:], y[10:], loss, 1.0)
    assert float(retrained[0].norm()) < 1e-12  # exact retraining: no weight at all
    left = float(pru_update(problem, rows)[0].norm())
    assert left < 0.1 * float(theta[0].norm())
    assert left < 0.2 * float(influence_update(problem, rows)[0].norm())  # the influence update keeps most of it


def test_a_bias_column_keeps_pru_from_removing_a_constant_injected_feature():
    # the authors' injection (value 1 on the deleted points, no bias column): once the deleted points span the
    # features PRU removes it exactly; with a bias column the feature equals the bias on every deleted point, so
    # no change inside their span can tell the two apart and about half the weight stays
    x, y = _data(n=150, d=8, bias=False)
    rows = torch.arange(12)
    injected = torch.zeros(len(x), 1, dtype=torch.float64)
    injected[rows] = 1.0
    left = {}
    for bias in (False, True):
        xi = torch.cat([injected, x] + ([torch.ones(len(x), 1, dtype=torch.float64)] if bias else []), 1)
        theta = fit_linear(xi, y, "least_squares", 1e-4, bias=bias)
        problem = prepare(xi, y, theta, "least_squares", 1e-4, bias=bias)
        left[bias] = float(pru_update(problem, rows)[0].norm()) / float(theta[0].norm())
    assert left[False] < 1e-8
    assert left[True] > 0.2


def test_bad_deletions_are_refused_with_one_line_errors():
    x, y = _data(n=50)
    problem = prepare(x, y, fit_linear(x, y, "least_squares", 1.0), "least_squares", 1.0)
    cases = {
        "k = 0": [],
        "cannot delete 50 points from 50": list(range(50)),
        "cannot delete 60 points": list(range(60)),
        "index 50 is out of range": [3, 50],
        "must not repeat": [1, 1],
    }
    for message, rows in cases.items():
        for update in (pru_update, influence_update):
            with pytest.raises(ConfigError, match=message) as info:
                update(problem, rows)
            assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="loss must be one of least_squares, logistic"):
        fit_linear(x, y, "hinge")


def _tiny_task(model_name="mlp", **model):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(120, 1, 4, 4, generator=g)
    images[:, 0, 0, 0] = 0.0
    labels = torch.arange(120) % 3
    splits = from_arrays(images.numpy(), labels.numpy(), name="tiny")
    task = make_task(splits, "random:0.05", seed=0)
    net = build_model(model_name, num_classes=3, input_shape=(1, 4, 4), **model)
    return splits, task, net


def test_a_cnn_is_refused_naming_the_families_pru_handles():
    _, task, cnn = _tiny_task("cnn", channels=[2], hidden_sizes=[4])
    for method in ("pru", "influence"):
        with pytest.raises(
            ConfigError, match=rf"{method} handles linear and logistic regression only: model 'mlp'.*'cnn'"
        ):
            unlearn(method, cnn, task)


def test_config_errors_name_the_accepted_values():
    _, task, net = _tiny_task(hidden_sizes=[])
    with pytest.raises(ConfigError, match="loss must be one of least_squares, logistic|accepted"):
        unlearn("pru", net, task, {"loss": "hinge"})
    with pytest.raises(ConfigError, match="l2 must be >= 0"):
        unlearn("pru", net, task, {"l2": -1.0})


def test_inject_feature_copies_the_data_and_refuses_a_used_coordinate():
    splits, task, _ = _tiny_task()
    before = splits.train.tensors[0].clone()
    injected = inject_feature(splits, task.forget_indices, 2.0)
    assert torch.equal(splits.train.tensors[0], before)  # the input is not modified
    flat = injected.train.tensors[0].flatten(1)
    assert set(flat[:, 0].nonzero().flatten().tolist()) == set(task.forget_indices.tolist())
    with pytest.raises(ConfigError, match="zero everywhere; the first one is not zero"):
        inject_feature(injected, task.forget_indices, 1.0)
    with pytest.raises(ConfigError, match="finite non-zero value"):
        inject_feature(splits, task.forget_indices, 0.0)
    with pytest.raises(ConfigError, match="model 'mlp'.*'cnn'"):
        injected_feature_weight(build_model("cnn", num_classes=3, input_shape=(1, 4, 4), channels=[2]))


def test_bench_pru_quick_mode_writes_its_json_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_pru", ROOT / "scripts" / "bench_pru.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, plot = tmp_path / "pru.json", tmp_path / "pru.png"
    assert bench.main(["--quick", "--output", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert plot.stat().st_size > 0
    assert report["settings"] == {
        "l2": 1e-4, "logistic_l2": 1.0, "bias": False, "value": 1.0, "injected_class": 1,
        "repeats": 1, "seed": 0, "ks": [1, 5], "limit": 300,
    }  # fmt: skip
    cases = {(r["dataset"], r["loss"], r["k"]) for r in report["results"]}
    assert cases == {("digits", loss, k) for loss in ("least_squares", "logistic") for k in (1, 5)}
    for r in report["results"]:
        assert r["n_train"] == 300 and r["features"] == 64
        assert r["relative_l2_to_retrain"]["original"] == 1.0 and r["l2_to_retrain"]["retrain"] == 0.0
        assert r["speedup_pru"] > 0 and r["seconds"]["retrain"] > 0
        ratio = r["injected_weight_over_original"]
        assert ratio["original"] == 1.0 and ratio["retrain"] == 0.0 and 0 <= ratio["pru"] <= 1.0
        assert set(r["goals"]) == set(bench.GOALS)
    assert [g["goal"] for g in report["goals"]] == list(bench.GOALS)
    for g in report["goals"]:  # a goal passes exactly when no case fails it
        failed = [f"{r['dataset']} {r['loss']} k={r['k']}" for r in report["results"] if not r["goals"][g["goal"]]]
        assert g["failed_cases"] == failed and g["passed"] == (not failed)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured 2026-12-02: through the harness (AdamW-trained original, not at the optimum PRU assumes; its "
    "read-out has a bias, equal to the injected feature on every deleted point) PRU leaves 13x the original's "
    "injected weight; issue 22 is open",
)
def test_harness_reports_distances_kl_cost_and_the_injected_feature_for_pru():
    job = UnlearnJob(
        method="pru",
        dataset="digits",
        model="mlp",
        model_config={"hidden_sizes": []},
        forget="random:0.02",
        recipe={"epochs": 10},
        inject_feature=1.0,
        cache=False,
    )
    result = run_job(job)
    m = result.metrics
    for key in ("l2_to_original", "l2_to_oracle", "kl_to_oracle_forget", "kl_to_oracle_test", "cost_ratio"):
        assert m[key] is not None and m[key] >= 0, key
    injected = m["injected_feature"]
    assert injected["original"] > 0 and injected["ratio_to_original"] < 0.5
    assert m["l2_to_original"] > 0 and result.summary["deleted"] == len(result.task.forget)
    with pytest.raises(ConfigError, match="model 'mlp', got 'cnn'"):
        run_job(UnlearnJob(method="pru", dataset="digits", model="cnn", inject_feature=1.0, cache=False))
