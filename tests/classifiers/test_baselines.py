"""The baselines of DiStruction's tables: bad teacher, UNSIR, amnesiac (and its relabelling variant), SSD."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import make_task
from classifiers.harness import make_method_config
from classifiers.methods import get_classifier_method, unlearn
from classifiers.methods.amnesiac import load_records, record_training, training_set
from classifiers.methods.bad_teacher import bad_teacher_loss
from classifiers.methods.ssd import dampen, fisher_importance
from classifiers.methods.unsir import error_maximising_noise, noise_objective
from classifiers.models import ModelConfig
from classifiers.training import TrainConfig, fresh_model, train_recipe
from concept_erase.core.errors import ConfigError, InputNotFoundError

BASELINES = ("bad_teacher", "unsir", "amnesiac", "amnesiac_relabel", "ssd")
RECIPE = TrainConfig(epochs=8, batch_size=64, seed=0)  # the original's training in these tests
# settings that forget on digits + a small MLP (the defaults are the authors', set for CIFAR-size runs)
FAST = {
    "bad_teacher": {"learning_rate": 1e-3, "epochs": 10},
    "unsir": {"noise_batch_size": 64, "noise_repeats": 5, "retain_per_class": 60},
    "amnesiac": {"repair_epochs": 2},
    "amnesiac_relabel": {"learning_rate": 1e-3, "epochs": 3},
    "ssd": {},  # the paper's lambda 1, alpha 10
}


@pytest.fixture(scope="module")
def trained(splits):
    model = fresh_model(ModelConfig("mlp"), splits.num_classes, splits.input_shape, seed=RECIPE.seed)
    train_recipe(model, splits.train, RECIPE)
    return model.eval()


def _accuracy(model: nn.Module, dataset) -> float:
    inputs, labels = dataset.tensors
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) == labels).float().mean())


def _recipe_keys() -> dict:
    return {k: getattr(RECIPE, k) for k in ("epochs", "batch_size", "learning_rate", "optimizer", "seed")}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_forgets_the_class_and_keeps_the_rest(name, task, trained):
    model = copy.deepcopy(trained)
    values = {**FAST[name], **(_recipe_keys() if name == "amnesiac" else {})}
    summary = unlearn(name, model, task, values)
    before_forget, before_test = _accuracy(trained, task.forget), _accuracy(trained, task.test_retain)
    assert before_forget > 0.85
    assert _accuracy(model, task.forget) < before_forget - 0.5, summary
    assert _accuracy(model, task.test_retain) > before_test - 0.12, summary
    assert summary["method"] == name


def test_baselines_are_registered_and_listed(capsys):
    from pipelines.cli import main

    for name in BASELINES:
        assert get_classifier_method(name).config_cls is not None
    main(["list"])
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in BASELINES)


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("ssd", {"selection_weighting": 0.0}, "selection_weighting"),
        ("ssd", {"selection_weighting": -1.0}, "selection_weighting"),
        ("ssd", {"dampening_constant": 0.0}, "dampening_constant"),
        ("ssd", {"alpha": 10}, "alpha"),
        ("bad_teacher", {"kl_temperature": 0.0}, "kl_temperature"),
        ("bad_teacher", {"retain_fraction": 1.5}, "retain_fraction"),
        ("bad_teacher", {"temperature": 1.0}, "temperature"),
        ("unsir", {"noise_l2": -0.1}, "noise_l2"),
        ("unsir", {"noise_steps": 0}, "noise_steps"),
        ("amnesiac", {"repair_epochs": -1}, "repair_epochs"),
        ("amnesiac", {"record_path": "x"}, "record_path"),
        ("amnesiac_relabel", {"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_config_is_a_clear_config_error(name, values, message):
    with pytest.raises(ConfigError, match=message):
        make_method_config(name, values)


# ---------------------------------------------------------------- SSD


def test_ssd_dampens_exactly_the_selected_parameters():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, -4.0, 8.0]]))
    full = {"weight": torch.tensor([[1.0, 1.0, 1.0]])}
    forget = {"weight": torch.tensor([[20.0, 5.0, 40.0]])}  # alpha 10: entries 0 and 2 selected, 1 not
    stats = dampen(model, full, forget, dampening_constant=4.0, selection_weighting=10.0)
    # beta = min(lambda * I_D / I_Df, 1): 4/20 = 0.2 and 4/40 = 0.1; entry 1 untouched
    assert torch.equal(model.weight.detach(), torch.tensor([[2.0 * 0.2, -4.0, 8.0 * 0.1]]))
    assert stats["selected"] == 2
    model.weight.data.copy_(torch.tensor([[2.0, -4.0, 8.0]]))
    dampen(model, full, forget, dampening_constant=30.0, selection_weighting=10.0)  # beta capped at 1
    assert torch.equal(model.weight.detach(), torch.tensor([[2.0, -4.0, 8.0 * 0.75]]))


def test_fisher_importance_is_the_mean_squared_batch_gradient():
    model = nn.Linear(2, 2)
    data = TensorDataset(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 3))
    importance = fisher_importance(model, data, batch_size=3)
    expected = torch.zeros_like(model.weight)
    for start in (0, 3):
        x, y = data.tensors[0][start : start + 3], data.tensors[1][start : start + 3]
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [model.weight])
        expected += grad.pow(2) / 2
    assert torch.allclose(importance["weight"], expected)


# ---------------------------------------------------------------- amnesiac


def test_amnesiac_records_reproduce_the_original_and_undo_to_the_initial_weights(splits, task, trained, tmp_path):
    model = fresh_model(ModelConfig("mlp"), splits.num_classes, splits.input_shape, seed=RECIPE.seed)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = record_training(model, splits.train, RECIPE, tmp_path / "records.safetensors")
    for name, param in trained.named_parameters():  # the recorded re-run is the original, bit for bit
        assert torch.equal(dict(model.named_parameters())[name], param), name
    assert info["steps"] == RECIPE.epochs * -(-len(splits.train) // RECIPE.batch_size)
    everything = torch.ones(len(splits.train), dtype=torch.bool)
    removed, loaded = load_records(tmp_path / "records.safetensors", model, everything)
    assert loaded["selected_steps"] == info["steps"]
    for name, param in model.named_parameters():
        restored = (param.detach().double() - removed[name]).float()
        assert torch.allclose(restored, initial[name], atol=1e-6), name
    # the method with the records: same result as re-creating them by re-running the recipe
    from_records, rerun = copy.deepcopy(trained), copy.deepcopy(trained)
    values = {**_recipe_keys(), "repair_epochs": 0}
    unlearn("amnesiac", from_records, task, {**values, "records_path": str(tmp_path / "records.safetensors")})
    summary = unlearn("amnesiac", rerun, task, values)
    assert summary["records"]["max_reproduction_error"] == 0.0 and summary["prepare_seconds"] > 0
    for (name, a), b in zip(from_records.named_parameters(), rerun.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert training_set(task)[1].sum() == len(task.forget)


def test_amnesiac_refuses_a_model_its_recipe_does_not_reproduce(task, trained, tmp_path):
    other = {**_recipe_keys(), "seed": 1}  # not the seed the original was trained with
    with pytest.raises(ConfigError, match="does not reproduce"):
        unlearn("amnesiac", copy.deepcopy(trained), task, other)
    with pytest.raises(InputNotFoundError, match="record_training"):
        unlearn("amnesiac", copy.deepcopy(trained), task, {"records_path": str(tmp_path / "missing.safetensors")})


# ---------------------------------------------------------------- UNSIR and bad teacher


def test_unsir_noise_raises_the_cross_entropy(trained, splits):
    label = 3
    start = torch.randn((32, *splits.input_shape), generator=torch.Generator().manual_seed(0))
    noise, history = error_maximising_noise(trained, label, splits.input_shape, count=32, steps=20, seed=0)
    labels = torch.full((32,), label)
    with torch.no_grad():
        before = nn.functional.cross_entropy(trained(start), labels)
        after = nn.functional.cross_entropy(trained(noise), labels)
    assert after > before + 1.0
    assert history[-1] < history[0]  # the objective (-CE + lambda * L2) fell
    with torch.no_grad():
        assert float(noise_objective(trained, noise, label, 0.1)) == pytest.approx(history[-1], rel=1e-5)
    assert all(p.requires_grad for p in trained.parameters())  # the model is left trainable


def test_unsir_refuses_random_forgetting(splits, trained):
    with pytest.raises(ConfigError, match="class-wise"):
        unlearn("unsir", copy.deepcopy(trained), make_task(splits, "random:0.1"))


def test_bad_teacher_loss_switches_teacher_per_sample():
    student = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    competent, incompetent = torch.tensor([[2.0, 0.0], [5.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # sample 0 is retained (competent teacher equals the student), sample 1 forgotten (incompetent one equals it)
    assert float(bad_teacher_loss(student, competent, incompetent, torch.tensor([False, True]), 1.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(bad_teacher_loss(student, competent, incompetent, torch.tensor([True, False]), 1.0)) > 0.1
