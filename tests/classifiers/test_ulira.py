"""U-LiRA (classifiers.ulira): its bad input, the shadow tasks it hands to methods, and the attack's statistics."""

import pytest

from classifiers.data import load_dataset, make_task
from classifiers.harness import UnlearnJob, _method_unlearn
from classifiers.models import ModelConfig
from classifiers.training import TrainConfig
from classifiers.ulira import ULiRAConfig, ulira_attack
from concept_erase.core.errors import ConfigError


@pytest.mark.parametrize(
    "shadows, message",
    [(1, "shadows must be an integer >= 2"), (0, ">= 2"), (-3, ">= 2"), (2.5, "shadows"), (True, "shadows")],
)
def test_too_few_shadows(shadows, message):
    with pytest.raises(ConfigError, match=message):
        UnlearnJob(method="finetune", forget="random:0.1", ulira={"shadows": shadows})


def test_classwise_targets_cannot_be_held_out():
    with pytest.raises(ConfigError, match="sample-wise scenario.*class:3.*cannot be held out"):
        UnlearnJob(method="finetune", forget="class:3", ulira={"shadows": 4})


def test_unknown_setting():
    with pytest.raises(ConfigError, match="shadow"):
        UnlearnJob(method="finetune", forget="random:0.1", ulira={"shadow_count": 4})


def test_method_that_cannot_run():
    splits = load_dataset("digits")
    task = make_task(splits, "random:0.1", seed=0)
    recipe = TrainConfig(epochs=1)
    methods = {"unsir": _method_unlearn("unsir", {}, recipe)}  # unsir refuses sample-wise forgetting
    with pytest.raises(ConfigError, match="U-LiRA: method 'unsir' cannot run on a shadow model: .*random"):
        ulira_attack(task, splits, ModelConfig(name="mlp"), recipe, methods, ULiRAConfig(shadows=2, progress=False))


def test_shadow_task_indexes_the_shadows_own_training_split():
    """Methods that replay the training run (amnesiac, deltagrad) index the shadow's training split, which lacks the
    out-targets: the shadow task's indices must put retain + in-targets back in that split's order."""
    import numpy as np
    import torch

    from classifiers.ulira import _shadow_keep, _shadow_task, _subset

    splits = load_dataset("digits")
    task = make_task(splits, "random:0.1", seed=0)
    inside = np.zeros(len(task.forget), dtype=bool)
    inside[::3] = True
    shadow = _shadow_task(task, splits, inside)
    trained_on = _subset(splits.train, _shadow_keep(task, splits, inside).nonzero().flatten())
    for mine, theirs in zip(shadow.training_data().tensors, trained_on.tensors):
        assert torch.equal(mine, theirs)
    assert len(shadow.forget) == inside.sum() and torch.equal(
        shadow.forget.tensors[0], trained_on.tensors[0][shadow.forget_indices]
    )
    assert len(task.forget) == len(task.forget_indices)  # the real task is untouched


def test_attack_tells_trained_from_never_trained_and_reads_50_when_they_look_alike():
    import numpy as np

    from classifiers.ulira import _summary, shadow_masks

    masks = shadow_masks(200, 16, seed=0)
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, size=200)  # each target's own difficulty
    noise = rng.normal(0, 0.5, size=masks.shape)
    remembered = _summary(base + noise + 2.0 * masks, masks, None, None)  # trained-on targets stay more confident
    forgotten = _summary(base + noise, masks, None, None)  # unlearned exactly like never trained on
    assert remembered["auc"] > 95 and remembered["balanced_accuracy"] > 90
    assert 40 < forgotten["auc"] < 60
