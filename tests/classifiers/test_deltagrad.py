"""DeltaGrad (Wu et al., ICML 2020): replaying a cached GD trajectory for deletion and addition, and bad input."""

from __future__ import annotations

import pytest
import torch

import classifiers.methods.deltagrad  # noqa: F401  (registers the method)
from classifiers.data import load_dataset, make_task
from classifiers.methods import unlearn
from classifiers.methods.deltagrad import (
    DeltaGradConfig,
    GDRecipe,
    load_cache,
    replay,
    retrain_gd,
    save_cache,
    train_with_cache,
)
from classifiers.models import ModelConfig
from classifiers.training import fresh_model
from concept_erase.core.errors import ConfigError

RECIPE = GDRecipe(iterations=40, learning_rate=0.5, l2=1e-3)


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
    assert float((w - exact).norm()) < 0.2 * float((cache.final - exact).norm())
    assert stats["exact_iterations"] < stats["iterations"] and stats["deleted"] == len(remove)
    assert torch.equal(x, x_before)  # inputs untouched
    assert torch.equal(new_cache.final, w) and new_cache.num_samples == int(keep.sum())


def test_addition_and_an_online_second_request(digits, trained):
    model, cache, x, y = trained
    xa, ya = digits.test.tensors[0][:20], digits.test.tensors[1][:20]
    w, after_add, _ = replay(model, cache, x, y, add=(xa, ya))
    x2, y2 = torch.cat([x, xa]), torch.cat([y, ya])
    exact = _retrained(digits, x2, y2)
    assert float((w - exact).norm()) < 0.2 * float((cache.final - exact).norm())
    # online: a deletion on top of the addition's cache
    w2, _, _ = replay(model, after_add, x2, y2, remove=torch.tensor([0, 1, 2, 3, 4]))
    exact2 = _retrained(digits, x2[5:], y2[5:])
    assert float((w2 - exact2).norm()) < 0.2 * float((w - exact2).norm())


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
    summary = unlearn("deltagrad", model, task, {"iterations": 40})
    assert summary["cache"]["source"] == "re-run" and summary["cache"]["bytes"] > 0
    with torch.no_grad():
        forget_acc = (model(task.forget.tensors[0]).argmax(1) == task.forget.tensors[1]).float().mean()
    assert float(forget_acc) < 0.2
    with pytest.raises(ConfigError, match="train_with_cache"):
        unlearn("deltagrad", _model(digits), task, {"require_cache": True})
