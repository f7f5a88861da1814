"""PRU and the influence update (Izzo et al., 2021), the feature-injection test and their harness integration."""

from __future__ import annotations

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


def _data(n=240, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, d - 1, generator=g, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64)], 1)
    labels = (x[:, :classes] + 0.8 * torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
    return x, torch.nn.functional.one_hot(labels, classes).double()


def _dist(a, b):
    return float((a - b).norm())


@pytest.mark.parametrize("k", [1, 5])
def test_least_squares_pru_is_the_projection_of_the_exact_update_onto_the_deleted_points(k):
    x, y = _data()
    theta = fit_linear(x, y, "least_squares", 1.0)
    rows, keep = torch.arange(k), torch.arange(k, len(x))
    exact = fit_linear(x[keep], y[keep], "least_squares", 1.0)
    updated = pru_update(prepare(x, y, theta, "least_squares", 1.0), rows)
    xk = x[rows]
    projection = torch.linalg.pinv(xk) @ xk  # onto the span of the deleted points
    assert torch.allclose(updated - theta, projection @ (exact - theta), atol=1e-10)
    # the deleted points' scores are the retrained model's exactly; the parameters move towards it
    assert torch.allclose(xk @ updated, xk @ exact, atol=1e-10)
    assert _dist(updated, exact) < 0.5 * _dist(theta, exact)


def test_least_squares_pru_is_exact_once_the_deleted_points_span_the_features():
    x, y = _data(d=8)
    theta = fit_linear(x, y, "least_squares", 1.0)
    exact = fit_linear(x[20:], y[20:], "least_squares", 1.0)
    updated = pru_update(prepare(x, y, theta, "least_squares", 1.0), torch.arange(20))
    assert _dist(updated, exact) < 1e-9 * _dist(theta, exact)


def test_logistic_pru_and_influence_move_towards_the_retrained_optimum():
    x, y = _data()
    theta = fit_linear(x, y, "logistic", 1.0)
    gradient = x.T @ (torch.sigmoid(x @ theta) - y) + 1.0 * torch.cat([theta[:-1], torch.zeros(1, 3)])
    assert float(gradient.abs().max()) < 1e-6  # fit_linear reaches the optimum
    problem = prepare(x, y, theta, "logistic", 1.0)
    for k in (1, 10):
        exact = fit_linear(x[k:], y[k:], "logistic", 1.0)
        assert _dist(pru_update(problem, torch.arange(k)), exact) < 0.5 * _dist(theta, exact)
        assert _dist(influence_update(problem, torch.arange(k)), exact) < 0.5 * _dist(theta, exact)


@pytest.mark.parametrize("loss", ["least_squares", "logistic"])
def test_injected_feature_weight_after_pru_is_far_below_the_original(loss):
    x, y = _data(n=300, d=16)
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


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-02: through the harness (AdamW-trained original, not at the optimum PRU assumes) PRU "
    "leaves 13x the original's injected weight; issue 22 is open",
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
