"""DeltaGrad (Wu et al., ICML 2020): replaying a cached GD trajectory for deletion and addition, and bad input."""

from __future__ import annotations

import importlib.util
import json
from collections import deque
from pathlib import Path

import pytest
import torch

import classifiers.methods.deltagrad  # noqa: F401  (registers the method)
from classifiers.data import load_dataset, make_task
from classifiers.methods import unlearn
from classifiers.methods.deltagrad import (
    DeltaGradConfig,
    GDRecipe,
    _Gradient,
    _lbfgs_product,
    load_cache,
    replay,
    retrain_gd,
    save_cache,
    train_with_cache,
)
from classifiers.models import ModelConfig
from classifiers.training import fresh_model
from concept_erase.core.errors import ConfigError

RECIPE = GDRecipe(iterations=30, learning_rate=0.1, l2=1e-3)  # the authors' learning rate (the default)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model(splits, hidden=()):
    x = splits.train.tensors[0]
    return fresh_model(ModelConfig("mlp", hidden_sizes=list(hidden)), splits.num_classes, tuple(x.shape[1:]), 0)


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits.train.tensors
    model = _model(digits)
    return model, train_with_cache(model, x, y, RECIPE), x, y


def _retrained(digits, x, y):
    model = _model(digits)
    return retrain_gd(model, x, y, RECIPE)


def test_deletion_replay_is_much_closer_to_retraining_than_the_original(digits, trained):
    model, cache, x, y = trained
    x_before = x.clone()
    remove = torch.arange(0, len(y), 40)  # 2.5%
    w, new_cache, stats = replay(model, cache, x, y, remove=remove)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[remove] = False
    exact = _retrained(digits, x[keep], y[keep])
    # measured 72x (the paper: about three orders of magnitude on MNIST; at learning rate 0.5 this was 5x)
    assert float((w - exact).norm()) < float((cache.final - exact).norm()) / 30
    assert stats["exact_iterations"] == 14 and stats["iterations"] == 30 and stats["deleted"] == len(remove)
    assert torch.equal(x, x_before)  # inputs untouched
    assert torch.equal(new_cache.final, w) and new_cache.num_samples == int(keep.sum())


def test_addition_and_an_online_second_request(digits, trained):
    model, cache, x, y = trained
    xa, ya = digits.test.tensors[0][:20], digits.test.tensors[1][:20]
    w, after_add, _ = replay(model, cache, x, y, add=(xa, ya))
    x2, y2 = torch.cat([x, xa]), torch.cat([y, ya])
    exact = _retrained(digits, x2, y2)
    assert float((w - exact).norm()) < float((cache.final - exact).norm()) / 30  # measured 60x
    # online: a deletion on top of the addition's cache
    w2, _, _ = replay(model, after_add, x2, y2, remove=torch.tensor([0, 1, 2, 3, 4]))
    exact2 = _retrained(digits, x2[5:], y2[5:])
    assert float((w2 - exact2).norm()) < float((w - exact2).norm()) / 10  # measured 24x


def test_with_every_iteration_exact_the_replay_is_retraining(digits, trained):
    model, cache, x, y = trained
    remove = torch.tensor([3, 50, 700])
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[remove] = False
    w, _, stats = replay(model, cache, x, y, remove=remove, exact_every=1)
    assert stats["exact_iterations"] == stats["iterations"]
    assert float((w - _retrained(digits, x[keep], y[keep])).abs().max()) < 1e-12
    xa, ya = digits.test.tensors[0][:7], digits.test.tensors[1][:7]
    w, _, _ = replay(model, cache, x, y, add=(xa, ya), exact_every=1)
    assert float((w - _retrained(digits, torch.cat([x, xa]), torch.cat([y, ya]))).abs().max()) < 1e-12


def test_the_quasi_hessian_meets_the_secant_condition_and_the_closed_form_gradient_is_autograds(digits, trained):
    model, cache, x, y = trained
    xd, n = x.double(), len(y)
    grad = _Gradient(model)
    assert grad.linear
    pairs: deque = deque(maxlen=2)
    for t in (3, 8):  # two pairs as the replay forms them: a perturbed point against the cached one
        s = 1e-3 * torch.randn(cache.params.shape[1], generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        pairs.append((s, grad(cache.params[t] + s, xd, y) / n - cache.grads[t]))
    s, dy = pairs[-1]
    assert torch.allclose(_lbfgs_product(pairs, s), dy, rtol=1e-8, atol=1e-12)  # B s_k = y_k
    closed = grad(cache.params[5], xd[:50], y[:50])
    grad.linear = False  # the autograd path (what an MLP with hidden layers takes)
    assert torch.allclose(closed, grad(cache.params[5], xd[:50], y[:50]), rtol=1e-10, atol=1e-10)


def test_the_cache_round_trips_through_safetensors_and_is_refused_for_another_model(digits, trained, tmp_path):
    model, cache, x, y = trained
    size = save_cache(cache, tmp_path / "cache.safetensors")
    assert size >= cache.nbytes
    loaded = load_cache(tmp_path / "cache.safetensors", model)
    assert torch.equal(loaded.params, cache.params) and loaded.fingerprint == cache.fingerprint
    with pytest.raises(ConfigError, match="another run or model"):
        load_cache(tmp_path / "cache.safetensors", _model(digits))
    with pytest.raises(ConfigError, match="another training set"):
        replay(model, cache, x[1:], y[1:], remove=torch.tensor([0]))


def test_bad_input_is_refused_with_clear_errors(digits, trained):
    model, cache, x, y = trained
    cnn = fresh_model(ModelConfig("cnn"), digits.num_classes, tuple(x.shape[1:]), 0)
    with pytest.raises(ConfigError, match="deltagrad handles softmax regression and small MLPs only: model 'mlp'"):
        train_with_cache(cnn, x, y, RECIPE)
    with pytest.raises(ConfigError, match="exact_every"):
        DeltaGradConfig(exact_every=0)
    with pytest.raises(ConfigError, match="empty request"):
        replay(model, cache, x, y, remove=torch.tensor([], dtype=torch.long))
    with pytest.raises(ConfigError, match="repeats"):
        replay(model, cache, x, y, remove=torch.tensor([3, 3]))
    with pytest.raises(ConfigError, match="must be in 0.."):
        replay(model, cache, x, y, remove=torch.tensor([len(y)]))
    with pytest.raises(ConfigError, match="deletes all"):
        replay(model, cache, x, y, remove=torch.arange(len(y)))
    with pytest.raises(ConfigError, match="the model takes"):
        replay(model, cache, x, y, add=(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))


def test_the_registered_method_forgets_a_class_and_requires_a_cache_when_asked(digits):
    task = make_task(digits, "class:3")
    model = _model(digits)
    summary = unlearn("deltagrad", model, task, {"iterations": 30})
    assert summary["cache"]["source"] == "re-run" and summary["cache"]["bytes"] > 0
    with torch.no_grad():
        forget_acc = (model(task.forget.tensors[0]).argmax(1) == task.forget.tensors[1]).float().mean()
    assert float(forget_acc) < 0.2
    with pytest.raises(ConfigError, match="train_with_cache"):
        unlearn("deltagrad", _model(digits), task, {"require_cache": True})


def test_the_benchmark_script_runs_in_toy_mode_and_writes_its_json(tmp_path):
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_deltagrad.py"
    spec = importlib.util.spec_from_file_location("bench_deltagrad", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dg.json"
    assert bench.main(["--toy", "--output", str(out), "--plot", str(tmp_path / "dg.png")]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["toy"] and result["recipe"]["learning_rate"] == 0.1 and (tmp_path / "dg.png").stat().st_size > 0
    assert {(r["kind"], r["mode"], r["rate"]) for r in rows} == {
        (k, m, r) for k in ("delete", "add") for m in ("batch", "online") for r in (0.01, 0.05)
    }
    for r in rows:
        assert r["dataset"] == "digits" and r["retrain_seconds"] > 0 and r["deltagrad_seconds"] > 0
        assert r["distance_ratio"] > 10 and r["exact_iterations"] < r["requests"] * 30
    assert set(result["goals"]) == {
        "speedup >= 2.6 (mnist5k, rate <= 1%)",
        "distance ratio >= 100 (mnist5k, rate <= 1%)",
    }
    assert bench.main(["--rates", "1.5", "--output", str(out)]) == 2


def test_a_small_mlp_replays_retraining_at_t0_1_and_ends_closer_than_the_original_at_the_default(digits):
    x, y = digits.train.tensors
    model = _model(digits, hidden=(16,))
    cache = train_with_cache(model, x, y, RECIPE)
    remove = torch.arange(0, len(y), 40)  # 2.5%
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[remove] = False
    exact = retrain_gd(_model(digits, hidden=(16,)), x[keep], y[keep], RECIPE)
    w, _, stats = replay(model, cache, x, y, remove=remove, exact_every=1)
    assert stats["exact_iterations"] == 30 and float((w - exact).abs().max()) < 1e-12  # autograd path, same rows
    w, _, stats = replay(model, cache, x, y, remove=remove)
    ratio = float((cache.final - exact).norm()) / float((w - exact).norm())
    assert stats["exact_iterations"] == 14 and ratio > 3  # measured 9.0x (softmax regression: 72x)
