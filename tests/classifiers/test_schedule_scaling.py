"""The classifier methods' schedules scale with the data: on a small forget set a method still takes at least its
``min_steps`` optimiser steps (the steps its defaults give on mnist5k), and on a large one its epochs decide."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from classifiers.data import from_arrays, make_task
from classifiers.harness import make_method_config
from classifiers.methods import get_classifier_method
from classifiers.models import ModelConfig
from classifiers.training import fresh_model, schedule_steps
from concept_erase.core.errors import ConfigError

# the methods that train in epochs of a set whose size depends on the data, and the set's size on mnist5k class:3
MNIST5K_CLASS3 = {"forget": 375, "retain": 3375}
# grad_ascent keeps min_steps 0: more steps on a small forget set only cost it retain accuracy (its docstring)
EPOCH_SET = {
    "random_label": lambda c: MNIST5K_CLASS3["forget"],
    "salun": lambda c: MNIST5K_CLASS3["forget"],
    "salun_random_mask": lambda c: MNIST5K_CLASS3["forget"],
    "boundary_shrink": lambda c: MNIST5K_CLASS3["forget"],
    "boundary_expand": lambda c: MNIST5K_CLASS3["forget"],
    "distruction": lambda c: MNIST5K_CLASS3["forget"],
    "finetune": lambda c: MNIST5K_CLASS3["retain"],
    "amnesiac_relabel": lambda c: MNIST5K_CLASS3["forget"] + MNIST5K_CLASS3["retain"],
    "bad_teacher": lambda c: MNIST5K_CLASS3["forget"] + round(c.retain_fraction * MNIST5K_CLASS3["retain"]),
}


def test_schedule_steps():
    assert schedule_steps(batches=3, epochs=5, min_steps=30) == 30  # digits' forget class: 15 steps lifted to 30
    assert schedule_steps(batches=6, epochs=5, min_steps=30) == 30  # mnist5k's: unchanged
    assert schedule_steps(batches=20, epochs=5, min_steps=30) == 100  # a larger set: the epochs decide
    assert schedule_steps(batches=3, epochs=5, max_train_steps=7, min_steps=30) == 7  # an explicit count wins


@pytest.mark.parametrize("name", sorted(EPOCH_SET))
def test_default_min_steps_are_the_mnist5k_schedule(name):
    """Each default keeps the step count it was tuned with on mnist5k, so the defaults are unchanged there."""
    config = make_method_config(name)
    batches = math.ceil(EPOCH_SET[name](config) / config.batch_size)
    assert config.min_steps == config.epochs * batches, (name, config.min_steps, config.epochs, batches)


def test_repair_phases_have_minimums():
    assert make_method_config("unsir").repair_min_steps == math.ceil(MNIST5K_CLASS3["retain"] / 256)
    assert make_method_config("amnesiac").repair_min_steps == 2 * math.ceil(MNIST5K_CLASS3["retain"] / 64)


def test_grad_ascent_keeps_its_epochs():
    assert make_method_config("grad_ascent").min_steps == 0


def test_negative_min_steps_is_refused():
    with pytest.raises(ConfigError, match="min_steps must be >= 0"):
        make_method_config("salun", {"min_steps": -1})


@pytest.fixture(scope="module")
def small_task():
    """10 forget samples (one batch of 64) and 90 retain samples of 8x8 images."""
    rng = np.random.default_rng(0)
    images = rng.random((134, 8, 8)).astype(np.float32)
    labels = np.arange(134) % 10
    return make_task(from_arrays(images, labels, test_size=0.25), "class:3")


@pytest.mark.parametrize("name", ["grad_ascent", "salun", "boundary_shrink"])
def test_small_forget_set_gets_the_minimum(name, small_task):
    """One forget batch per epoch: the run still takes ``min_steps`` steps, and exactly the epochs' count at 0."""
    assert len(small_task.forget) <= 64
    for min_steps, expected in ((12, 12), (0, None)):
        config = make_method_config(name, {"min_steps": min_steps, "epochs": 2})
        model = fresh_model(ModelConfig("mlp", hidden_sizes=[16]), 10, small_task.input_shape, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        summary = get_classifier_method(name).target(model, small_task, config, work_dir=None)
        assert summary["global_step"] == (expected or 2), (name, min_steps, summary["global_step"])
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
