"""The classifier unlearning methods: retrain, gradient ascent, random labelling, SalUn and its random-mask ablation."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from classifiers.methods import get_classifier_method, unlearn
from classifiers.methods.random_label import RetainSampler, random_labels, retain_weight
from classifiers.models import ModelConfig
from classifiers.training import TrainConfig, cross_entropy, fresh_model, train_recipe
from concept_erase.core.errors import ConfigError, TrainingError
from concept_erase.core.saliency import SaliencyMask, compute_saliency

METHODS = ("retrain", "grad_ascent", "random_label", "salun", "salun_random_mask")


@pytest.fixture()
def original(trained):
    return copy.deepcopy(trained)


def _accuracy(model: nn.Module, dataset) -> float:
    inputs, labels = dataset.tensors
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) == labels).float().mean())


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    wb = _weights(b)
    return all(torch.equal(w, wb[name]) for name, w in _weights(a).items())


def test_retrain_reproduces_the_oracle_bit_for_bit(original, task, splits):
    info = unlearn("retrain", original, task, {"epochs": 3, "seed": 5})
    oracle = fresh_model(ModelConfig("mlp"), splits.num_classes, splits.input_shape, seed=5)
    train_recipe(oracle, task.retain, TrainConfig(epochs=3, seed=5))
    assert _same_weights(original, oracle)
    assert info["reinitialised"] == "model_config" and info["train_samples"] == len(task.retain)
    assert info["global_step"] == 3 * -(-len(task.retain) // 64)
    assert _accuracy(original, task.forget) == 0.0  # class 3 was never seen
    json.dumps(info)


def test_retrain_defaults_are_the_training_recipe_and_plain_modules_are_reset(task):
    recipe = get_classifier_method("retrain").make_config().recipe()
    assert recipe == TrainConfig()
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    before = _weights(plain)
    twins = [copy.deepcopy(plain) for _ in range(2)]
    infos = [unlearn("retrain", m, task, {"max_train_steps": 2, "seed": 1}) for m in twins]
    assert infos[0]["reinitialised"] == "reset_parameters"
    assert _same_weights(*twins)
    assert not torch.equal(_weights(twins[0])["1.weight"], before["1.weight"])


# The defaults are tuned for mnist5k's CNN (6 forget batches per epoch); digits' class 3 has 3, so step harder here.
@pytest.mark.parametrize(
    "name, config",
    [
        ("grad_ascent", {"learning_rate": 2e-3}),
        ("random_label", {"learning_rate": 0.01}),
        ("salun", {"learning_rate": 0.01}),
    ],
)
def test_methods_forget_a_class_and_keep_the_rest(name, config, original, task):
    retain_before = _accuracy(original, task.retain)
    assert _accuracy(original, task.forget) > 0.9
    info = unlearn(name, original, task, config)
    assert _accuracy(original, task.forget) < 0.2, name
    assert _accuracy(original, task.retain) > retain_before - 0.08, name
    assert info["method"] == name and info["global_step"] > 0
    json.dumps(info)


def _saliency_mask(model: nn.Module, task, ratio: float = 0.5) -> dict[str, torch.Tensor]:
    scores = compute_saliency(model, DataLoader(task.forget, batch_size=256), cross_entropy, show_progress=False)
    return SaliencyMask.from_scores(scores, ratio=ratio).masks


def test_salun_changes_only_salient_weights(original, trained, task):
    salient = _saliency_mask(trained, task)
    info = unlearn("salun", original, task)
    assert info["mask"]["source"] == "saliency" and info["mask"]["fraction_kept"] == pytest.approx(0.5, abs=0.01)
    after, changed = _weights(original), 0
    for name, before in trained.named_parameters():
        keep = salient[name]
        assert torch.equal(before.detach()[~keep], after[name][~keep]), name  # frozen: bit-identical
        changed += int((before.detach()[keep] != after[name][keep]).sum())
    assert changed > 0.25 * sum(int(m.sum()) for m in salient.values())


def test_salun_random_mask_keeps_as_many_weights_at_other_positions(original, trained, task):
    salient = _saliency_mask(trained, task)
    info = unlearn("salun_random_mask", original, task)
    assert info["mask"]["source"] == "random"
    assert info["mask"]["kept"] == sum(int(m.sum()) for m in salient.values())
    after = _weights(original)
    moved = {name: before.detach() != after[name] for name, before in trained.named_parameters()}
    assert sum(int((m & ~salient[name]).sum()) for name, m in moved.items()) > 0  # outside the saliency mask
    assert sum(int(m.sum()) for m in moved.values()) <= info["mask"]["kept"]  # never more than the mask allows


def test_seeded_runs_are_deterministic(original, trained, task):
    twin, other = copy.deepcopy(trained), copy.deepcopy(trained)
    unlearn("salun", original, task, {"epochs": 2, "seed": 3})
    unlearn("salun", twin, task, {"epochs": 2, "seed": 3})
    unlearn("salun", other, task, {"epochs": 2, "seed": 4})
    assert _same_weights(original, twin)
    assert not _same_weights(original, other)


def test_salun_resumes_from_a_checkpoint_exactly(original, trained, task, tmp_path):
    config = {"epochs": 2, "checkpointing_steps": 2}
    unlearn("salun", original, task, config, work_dir=tmp_path)
    steps = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    shutil.rmtree(tmp_path / f"checkpoint-{steps[-1]}")  # as if the run had died after the previous checkpoint
    resumed = copy.deepcopy(trained)
    info = unlearn("salun", resumed, task, config, work_dir=tmp_path)
    assert info["resumed_from"].endswith(f"checkpoint-{steps[-2]}")
    assert _same_weights(original, resumed)


def test_random_labels_and_retain_batches():
    labels = torch.arange(10).repeat(20)
    other = random_labels(labels, 10, seed=0, exclude_true_label=True)
    assert not (other == labels).any() and set(other.tolist()) == set(range(10))
    assert torch.equal(other, random_labels(labels, 10, seed=0, exclude_true_label=True))
    assert (random_labels(labels, 10, seed=0, exclude_true_label=False) == labels).any()  # SalUn: any class

    retain = torch.utils.data.TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    sampler = RetainSampler(retain, seed=0)
    first = torch.cat([sampler.draw(4)[1] for _ in range(2)] + [sampler.draw(2)[1]])
    assert sorted(first.tolist()) == list(range(10))  # one pass covers the retain set once
    state = {k: v.clone() for k, v in sampler.state_dict().items()}
    ahead = sampler.draw(7)[1]
    sampler.load_state_dict(state)
    assert torch.equal(sampler.draw(7)[1], ahead)


def test_retain_weight_defaults_to_the_union_share_capped(original, task):
    assert retain_weight(None, 900, 100) == 9.0  # SalUn's union loader: 9 retain samples per forget sample
    assert retain_weight(None, 5000, 1) == 10.0  # capped: a tiny forget set keeps a forget signal
    assert retain_weight(0.0, 900, 100) == 0.0 and retain_weight(2.5, 900, 100) == 2.5
    summary = unlearn("random_label", copy.deepcopy(original), task, {"max_train_steps": 1})
    assert summary["retain_weight"] == pytest.approx(min(len(task.retain) / len(task.forget), 10.0))
    with pytest.raises(ConfigError, match="retain_weight"):
        get_classifier_method("random_label").make_config({"retain_weight": -1})


def test_grad_ascent_divergence_names_the_method_and_step(original, task):
    with pytest.raises(TrainingError, match=r"grad_ascent: the loss became .* at step \d+"):
        unlearn("grad_ascent", original, task, {"learning_rate": 1e20})


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(
    "values, pattern",
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"mask": "bogus"}, "mask"),
    ],
)
def test_configs_reject_bad_values(name, values, pattern):
    entry = get_classifier_method(name)
    with pytest.raises(ConfigError, match=pattern):
        entry.make_config(values)
    if "mask" not in values:
        with pytest.raises(ConfigError, match=pattern):
            entry.config_cls(**values)


def test_registered_defaults():
    assert get_classifier_method("salun").make_config().mask == "saliency"
    assert get_classifier_method("salun_random_mask").make_config().mask == "random"
    assert get_classifier_method("random_label").make_config().mask == "none"
    assert get_classifier_method("grad_ascent").make_config().mask == "none"
