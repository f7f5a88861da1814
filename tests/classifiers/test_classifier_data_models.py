"""The minimal classifier package: the digits dataset and tasks, models and their safetensors format, fine-tuning."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from classifiers.data import load_dataset, make_class_task
from classifiers.methods import unlearn
from classifiers.metrics import evaluate_classifier
from classifiers.models import ModelConfig, build_model, load_model, save_model
from concept_erase.core.errors import CheckpointError, ConfigError, EmptyDataError, UnknownNameError


def test_digits_split_is_seeded_stratified_and_scaled():
    splits = load_dataset("digits", seed=0, test_size=0.25)
    x, y = splits.train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert len(splits.train) + len(splits.test) == 1797 and len(splits.test) == 450
    assert splits.num_classes == 10 and splits.input_shape == (1, 8, 8)
    test_counts = torch.bincount(splits.test.tensors[1], minlength=10)
    all_counts = test_counts + torch.bincount(y, minlength=10)
    assert (test_counts - 0.25 * all_counts).abs().max() <= 1  # stratified: every class split 75/25
    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    assert not torch.equal(other.test.tensors[0], splits.test.tensors[0])


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: load_dataset("cifar"), ConfigError, "unknown dataset 'cifar'; accepted datasets: digits"),
        (lambda: load_dataset("digits", test_size=1.5), ConfigError, "test_size"),
        (lambda: make_class_task(load_dataset(), []), ConfigError, "forget_classes is empty"),
        (lambda: make_class_task(load_dataset(), [10]), ConfigError, r"out of range .* classes 0\.\.9"),
        (lambda: make_class_task(load_dataset(), range(10)), EmptyDataError, "nothing would be retained"),
        (
            lambda: build_model("resnet", 10, (1, 8, 8)),
            ConfigError,
            "unknown model 'resnet'; accepted models: cnn, mlp, vit",
        ),
        (lambda: build_model("mlp"), ConfigError, "needs num_classes and input_shape"),
    ],
)
def test_bad_data_and_model_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_class_task_splits_forget_and_retain():
    task = make_class_task(load_dataset(), [7, 3])
    assert task.forget_classes == (3, 7)
    assert set(task.forget.tensors[1].tolist()) == {3, 7} and not {3, 7} & set(task.retain.tensors[1].tolist())
    assert len(task.forget) + len(task.retain) == 1347
    assert len(task.test_forget) + len(task.test_retain) == len(task.test)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_models_round_trip_through_safetensors(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    assert model(x).shape == (4, 10)
    save_model(model, tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["model.safetensors", "model_config.json"]
    loaded = load_model(tmp_path / name)
    assert isinstance(loaded.config, ModelConfig) and loaded.config == model.config
    assert torch.equal(loaded(x), model.eval()(x))


def test_loading_a_damaged_model_dir_names_the_problem(tmp_path):
    save_model(build_model("mlp", 10, (1, 8, 8)), tmp_path / "m")
    with pytest.raises(ConfigError, match="model directory not found"):
        load_model(tmp_path / "missing")
    config = json.loads((tmp_path / "m/model_config.json").read_text())
    (tmp_path / "m/model_config.json").write_text(json.dumps({**config, "hidden_sizes": [32, 64]}))
    with pytest.raises(CheckpointError, match="does not match model_config.json: missing net.5"):
        load_model(tmp_path / "m")
    (tmp_path / "m/model_config.json").write_text(json.dumps(config))
    weights = tmp_path / "m/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_model(tmp_path / "m")


def test_finetune_lowers_forget_accuracy_and_a_mask_keeps_frozen_weights_bit_identical(tmp_path):
    from classifiers.training import TrainConfig, train_classifier
    from concept_erase.core.saliency import SaliencyMask

    task = make_class_task(load_dataset(), [7])
    original, _ = train_classifier(TrainConfig(max_train_steps=150))
    before = evaluate_classifier(original, task)
    masks = {
        n: torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) < 0.3
        for i, (n, p) in enumerate(original.named_parameters())
    }
    SaliencyMask(masks).save(tmp_path / "mask.safetensors")

    plain, masked = copy.deepcopy(original), copy.deepcopy(original)
    info = unlearn("finetune", plain, task, {"epochs": 5, "learning_rate": 0.05})
    assert info["global_step"] == max(5 * 19, 265) and info["mask"] is None  # 5 epochs, at least min_steps
    assert evaluate_classifier(plain, task)["forget_accuracy"] < before["forget_accuracy"]

    info = unlearn("finetune", masked, task, {"epochs": 2, "mask_path": str(tmp_path / "mask.safetensors")})
    assert 0.25 < info["mask"]["fraction_kept"] < 0.35
    params = dict(masked.named_parameters())
    for name, p in original.named_parameters():
        assert torch.equal(p[~masks[name]], params[name][~masks[name]])  # frozen: untouched
        assert not torch.equal(p[masks[name]], params[name][masks[name]])  # salient: trained
    with pytest.raises(
        UnknownNameError,
        match="registered classifier methods: amnesiac, amnesiac_relabel, bad_teacher, boundary_expand",
    ):
        unlearn("nope", plain, task)
