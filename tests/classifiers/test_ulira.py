"""U-LiRA (classifiers.ulira): its bad input (the oracle-near-50 / original-above check is still to be added)."""

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
