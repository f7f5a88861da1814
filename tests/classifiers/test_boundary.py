"""Boundary Unlearning (Chen et al., CVPR 2023): boundary_shrink and boundary_expand on digits with a small CNN."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

import classifiers.methods.boundary_expand  # noqa: F401  (registers the method)
import classifiers.methods.boundary_shrink  # noqa: F401
from classifiers.data import load_dataset, make_task
from classifiers.methods import unlearn
from classifiers.methods.boundary_shrink import fgsm, neighbour_labels
from classifiers.models import ModelConfig, classifier_head, load_model, save_model
from classifiers.training import TrainConfig, cross_entropy, fresh_model, train_recipe
from concept_erase.core.errors import ConfigError, TrainingError
from concept_erase.core.saliency import SaliencyMask, compute_saliency


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    splits = load_dataset("digits")
    task = make_task(splits, "class:3")
    model = fresh_model(ModelConfig("cnn"), splits.num_classes, splits.input_shape, seed=0)
    train_recipe(model, splits.train, TrainConfig(epochs=10))
    return task, model.eval()


def accuracy(model, dataset) -> float:
    inputs, labels = dataset.tensors
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) == labels).float().mean())


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_neighbour_labels_are_wrong_classes_found_by_fgsm_on_a_frozen_copy(setup):
    task, original = setup
    model = copy.deepcopy(original)
    before = state(model)
    inputs, labels = task.retain.tensors[0][:300], task.retain.tensors[1][:300]  # many classes, not only class 3
    dataset = torch.utils.data.TensorDataset(inputs, labels)
    found, flipped = neighbour_labels(model, dataset, bound=0.1)
    assert (found != labels).all()
    assert 0 < flipped.sum() < len(labels)  # some flipped by FGSM, the others take the next-best class
    with torch.no_grad():
        adv = fgsm(model, inputs, labels, 0.1)
        prediction = model(adv).argmax(dim=1)
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - inputs).abs().max() <= 0.1 + 1 / 255
    assert torch.equal(found[flipped], prediction[flipped]) and torch.equal(flipped, prediction != labels)
    code, _ = neighbour_labels(model, dataset, bound=0.1, fallback="prediction")  # the authors' code
    assert torch.equal(code, prediction)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_boundary_shrink_forgets_the_class_and_keeps_the_others(setup):
    task, original = setup
    model = copy.deepcopy(original)
    assert accuracy(model, task.forget) > 0.95
    info = unlearn("boundary_shrink", model, task)
    assert accuracy(model, task.forget) < 0.05
    assert accuracy(model, task.test_retain) > accuracy(original, task.test_retain) - 0.08
    assert sum(info["neighbour_labels"].values()) == len(task.forget) and "3" not in info["neighbour_labels"]
    assert 0 < info["fgsm_flip_fraction"] < 1 and info["global_step"] == max(
        10 * 3, 60
    )  # 137 samples, batch 64; min_steps 60
    assert not model.training


def test_boundary_expand_prunes_the_shadow_class_and_keeps_the_architecture(setup, tmp_path):
    task, original = setup
    model = copy.deepcopy(original)
    parent, attr, head = classifier_head(model)
    info = unlearn("boundary_expand", model, task)
    assert getattr(parent, attr) is head and head.out_features == 10 and info["shadow_class"] == 10
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in original.state_dict().items()}
    assert not torch.equal(head.weight, classifier_head(original)[2].weight)
    assert accuracy(model, task.forget) < 0.05
    assert accuracy(model, task.test_retain) > accuracy(original, task.test_retain) - 0.12
    reloaded = load_model(save_model(model, tmp_path / "model"))
    inputs = task.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.equal(reloaded(inputs), model(inputs))


def test_boundary_expand_failure_names_the_step_and_restores_the_original_head(setup):
    task, original = setup
    model = copy.deepcopy(original)
    parent, attr, head = classifier_head(model)
    with pytest.raises(TrainingError, match=r"boundary_expand: the loss became .* at step \d+"):
        unlearn("boundary_expand", model, task, {"learning_rate": 1e30, "max_grad_norm": None, "mask": "random"})
    assert getattr(parent, attr) is head and head.out_features == 10
    assert torch.equal(head.weight, classifier_head(original)[2].weight)
    with torch.no_grad():
        assert model(task.test.tensors[0][:4]).shape == (4, 10)


@pytest.mark.parametrize("name", ["boundary_shrink", "boundary_expand"])
def test_same_seed_same_weights(setup, name):
    task, original = setup
    first, second = copy.deepcopy(original), copy.deepcopy(original)
    unlearn(name, first, task, {"epochs": 2, "seed": 3})
    unlearn(name, second, task, {"epochs": 2, "seed": 3})
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())


def test_boundary_expand_with_a_mask_keeps_frozen_weights_and_resumes_from_checkpoints(setup, tmp_path):
    task, original = setup
    scores = compute_saliency(copy.deepcopy(original), DataLoader(task.forget, batch_size=256), cross_entropy)
    mask = SaliencyMask.from_scores(scores, ratio=0.3)
    mask.save(tmp_path / "mask.safetensors")
    config = {"epochs": 3, "mask_path": str(tmp_path / "mask.safetensors"), "checkpointing_steps": 4}
    model = copy.deepcopy(original)
    info = unlearn("boundary_expand", model, task, config, work_dir=tmp_path / "work")
    assert info["mask"]["fraction_kept"] == pytest.approx(0.3, abs=0.01)
    moved = 0
    for name, value in model.state_dict().items():
        frozen = ~mask.masks[name]
        assert torch.equal(value[frozen], original.state_dict()[name][frozen]), name
        moved += int((value != original.state_dict()[name]).sum())
    assert moved > 0
    again = copy.deepcopy(original)  # a restarted run resumes from the last checkpoint of the widened model
    info = unlearn("boundary_expand", again, task, config, work_dir=tmp_path / "work")
    assert info["resumed_from"] is not None
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_configuration_errors(setup):
    task, original = setup
    with pytest.raises(ConfigError, match="bound must be > 0"):
        unlearn("boundary_shrink", copy.deepcopy(original), task, {"bound": 0})
    with pytest.raises(ConfigError, match="fallback"):
        unlearn("boundary_shrink", copy.deepcopy(original), task, {"fallback": "random"})
    wrong = fresh_model(ModelConfig("cnn"), 12, task.input_shape, seed=0)
    with pytest.raises(ConfigError, match="12 outputs but the task has 10 classes"):
        unlearn("boundary_expand", wrong, task)
    assert classifier_head(wrong)[2].out_features == 12
