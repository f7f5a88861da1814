"""Unlearning metrics of classifiers: accuracies, the SalUn MIA-efficacy, the loss attack, distances, plots."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.data import load_dataset, make_task
from classifiers.metrics import (
    AVG_GAP_KEYS,
    HEADLINE_KEYS,
    ORACLE_KEYS,
    l2_distance,
    mean_kl,
    plot_metric_bars,
    unlearning_metrics,
)
from classifiers.mia import loss_mia, mia_efficacy, shadow_members
from classifiers.models import ModelConfig, build_model
from classifiers.training import TrainConfig, fresh_model, train_recipe
from concept_erase.core.errors import ConfigError, EmptyDataError

PERCENT_KEYS = ("ua", "ra", "ta", "ta_remaining", "ua_test", "mia_efficacy", "mia_loss", "mia_loss_auc", "avg_gap")
REQUIRED_KEYS = (
    *PERCENT_KEYS,
    "l2_to_original",
    "l2_to_oracle",
    "kl_to_oracle_forget",
    "kl_to_oracle_test",
    "seconds",
    "cost_ratio",
    "per_class_accuracy",
    "oracle",
)


def _train(dataset: TensorDataset) -> nn.Module:
    config = TrainConfig(model=ModelConfig("mlp"), epochs=5)
    model = fresh_model(config.model, 10, (1, 8, 8), seed=0)
    train_recipe(model, dataset, config)
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    """The digits splits, a class-3 and a random-10% task, a model trained on everything, and the class-3 oracle."""
    splits = load_dataset("digits")
    class_task, random_task = make_task(splits, "class:3"), make_task(splits, "random:0.1")
    return splits, class_task, random_task, _train(splits.train), _train(class_task.retain)


@pytest.fixture(scope="module")
def class_metrics(digits):
    _, task, _, original, oracle = digits
    return unlearning_metrics(original, task, original=original, oracle=oracle, seconds=1.0, oracle_seconds=4.0)


def test_metrics_of_the_original_and_the_oracle_on_class_forgetting(digits, class_metrics):
    m, oracle = class_metrics, class_metrics["oracle"]
    assert set(REQUIRED_KEYS) <= set(m) and set(HEADLINE_KEYS) <= set(m) and set(oracle) == set(ORACLE_KEYS)
    for entry in (m, oracle):
        assert all(0.0 <= entry[k] <= 100.0 for k in PERCENT_KEYS), {k: entry[k] for k in PERCENT_KEYS}
        assert all(v is None or 0.0 <= v <= 100.0 for v in entry["per_class_accuracy"].values())
    # the original still knows class 3; the oracle never saw it: every forget sample is wrong and looks unseen
    assert m["ua"] < 15 and m["ra"] > 85 and m["mia_efficacy"] < 60
    assert oracle["ua"] == 100.0 and oracle["ua_test"] == 100.0 and oracle["per_class_accuracy"]["3"] == 0.0
    assert oracle["mia_efficacy"] > 95 and oracle["mia_loss"] > m["mia_loss"] and oracle["mia_loss_auc"] < 10
    assert oracle["ta"] < oracle["ta_remaining"] - 5  # ta counts class 3's test images, ta_remaining does not
    expected_gap = sum(abs(m[k] - oracle[k]) for k in AVG_GAP_KEYS) / len(AVG_GAP_KEYS)
    assert m["avg_gap"] == pytest.approx(expected_gap) and m["avg_gap"] > 20
    assert m["kl_to_oracle_forget"] > m["kl_to_oracle_test"] > 0 and m["l2_to_oracle"] > 0
    assert m["l2_to_original"] == 0.0 and oracle["l2_to_original"] == pytest.approx(m["l2_to_oracle"])
    assert m["cost_ratio"] == 0.25 and (oracle["seconds"], oracle["cost_ratio"], oracle["avg_gap"]) == (4.0, 1.0, 0.0)


def test_metrics_are_deterministic(digits, class_metrics):
    _, task, _, original, oracle = digits
    again = unlearning_metrics(original, task, original=original, oracle=oracle, seconds=1.0, oracle_seconds=4.0)
    assert again == class_metrics


def test_the_oracle_against_itself_and_precomputed_oracle_metrics(digits, class_metrics):
    _, task, _, original, oracle = digits
    itself = unlearning_metrics(oracle, task, oracle=oracle)
    assert itself["avg_gap"] == 0.0 and itself["l2_to_oracle"] == 0.0
    assert itself["kl_to_oracle_forget"] == 0.0 and itself["kl_to_oracle_test"] == 0.0
    reused = unlearning_metrics(original, task, original=original, oracle_metrics=class_metrics["oracle"], seconds=2.0)
    assert reused["avg_gap"] == class_metrics["avg_gap"] and reused["oracle"] == class_metrics["oracle"]
    assert reused["cost_ratio"] == 0.5  # oracle seconds taken from the precomputed metrics (4.0)
    assert reused["l2_to_oracle"] is None and reused["kl_to_oracle_forget"] is None
    bare = unlearning_metrics(original, task, seconds=1.0, oracle_seconds=float("nan"))
    assert bare["oracle"] is None and bare["avg_gap"] is None and bare["cost_ratio"] is None
    with pytest.raises(ConfigError, match="oracle_metrics lacks mia_efficacy"):
        unlearning_metrics(original, task, oracle_metrics={"ua": 100.0, "ra": 90.0, "ta": 90.0})


def test_random_forgetting_with_the_model_trained_on_everything(digits):
    _, _, task, original, _ = digits
    m = unlearning_metrics(original, task)
    assert m["ua"] < 10 and m["ra"] > 85 and m["ta"] > 85
    assert m["ta_remaining"] == m["ta"] and m["ua_test"] is None and m["scenario"] == "random:0.1"


def test_a_constant_model_fails_all_but_one_class(digits):
    _, _, task, original, _ = digits
    model = build_model("mlp", 10, (1, 8, 8))
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()  # uniform softmax: argmax is class 0 for every input
    m = unlearning_metrics(model, task)
    share_of_zeros = float((task.forget.tensors[1] == 0).float().mean())
    assert m["ua"] == pytest.approx(100.0 * (1 - share_of_zeros)) and 80 < m["ua"] < 100
    assert m["per_class_accuracy"]["0"] == 100.0 and m["per_class_accuracy"]["5"] == 0.0
    # KL(p || uniform) = log(10) - H(p), averaged over the samples
    with torch.no_grad():
        probs = torch.softmax(original(task.test.tensors[0]).double(), dim=1)
    expected = float((math.log(10) + (probs * probs.log()).sum(dim=1)).mean())
    assert mean_kl(model, original, task.test) == pytest.approx(expected, rel=1e-6)


def test_mean_kl(digits):
    _, task, _, original, oracle = digits
    assert mean_kl(original, copy.deepcopy(original), task.forget) == 0.0
    assert mean_kl(original, oracle, task.forget) > 0 and mean_kl(oracle, original, task.test) > 0
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    assert mean_kl(original, oracle, empty) is None


def test_l2_distance_matches_a_hand_computation():
    torch.manual_seed(0)
    a, b = build_model("mlp", 10, (1, 8, 8)), build_model("mlp", 10, (1, 8, 8))
    flat = lambda m: torch.cat([p.detach().double().flatten() for p in m.parameters()])  # noqa: E731
    assert l2_distance(a, b) == pytest.approx(float((flat(a) - flat(b)).norm()), rel=1e-12)
    shifted = copy.deepcopy(a)
    with torch.no_grad():
        shifted.net[-1].bias.add_(0.5)  # 10 entries moved by 0.5
    assert l2_distance(a, shifted) == pytest.approx(0.5 * math.sqrt(10), rel=1e-6)  # float32 bias
    assert l2_distance(a, a) == 0.0


@pytest.mark.parametrize(
    "other, pattern",
    [
        (lambda: build_model("mlp", 10, (1, 8, 8), hidden_sizes=[32]), r"parameter 'net.1.weight' is \(64, 64\) vs"),
        (lambda: build_model("mlp", 10, (1, 8, 8), hidden_sizes=[64, 64]), r"'net.3.weight' is \(10, 64\) vs"),
        (lambda: build_model("cnn", 10, (1, 8, 8)), r"'net.1.weight' is \(64, 64\) vs missing"),
    ],
)
def test_l2_distance_of_different_architectures_names_the_parameter(other, pattern):
    with pytest.raises(ConfigError, match=pattern):
        l2_distance(build_model("mlp", 10, (1, 8, 8)), other())


def test_a_model_of_another_architecture_gets_no_weight_distances_but_every_other_metric(digits):
    """A distilled student of another architecture (influence_distillation's ``student``): L2 does not apply."""
    _, task, _, original, oracle = digits
    student = build_model("mlp", 10, (1, 8, 8), hidden_sizes=[16]).eval()
    metrics = unlearning_metrics(student, task, original=original, oracle=oracle, seconds=1.0, oracle_seconds=4.0)
    assert metrics["l2_to_original"] is None and metrics["l2_to_oracle"] is None
    assert metrics["kl_to_oracle_test"] > 0 and 0 <= metrics["ua"] <= 100


class _LogitsAsInput(nn.Module):
    """A 'classifier' whose logits are its inputs: the attacks' features are then chosen by the test."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _logits_set(true_logit: float, count: int, seed: int) -> TensorDataset:
    """Samples whose true class (label 0..9) has logit ``true_logit`` (plus noise); the others have logit 0."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    logits = 0.3 * torch.randn(count, 10, generator=generator)
    logits[torch.arange(count), labels] += true_logit
    return TensorDataset(logits, labels)


def test_the_attacks_call_training_like_samples_members_and_test_like_samples_non_members():
    model, retain, test = _LogitsAsInput(), _logits_set(8.0, 300, 0), _logits_set(1.0, 100, 1)
    remembered, unseen = _logits_set(8.0, 80, 2), _logits_set(1.0, 80, 3)
    assert mia_efficacy(model, retain, test, remembered) < 5 and mia_efficacy(model, retain, test, unseen) > 95
    remembered_loss, unseen_loss = loss_mia(model, retain, test, remembered), loss_mia(model, retain, test, unseen)
    assert remembered_loss["non_member_rate"] < 5 and unseen_loss["non_member_rate"] > 95
    assert remembered_loss["auc"] > 99 and 30 < unseen_loss["auc"] < 70
    with pytest.raises(EmptyDataError, match="forget set"):
        mia_efficacy(model, retain, test, _logits_set(1.0, 0, 4))


def test_shadow_members_are_a_seeded_subset_of_the_retain_set():
    retain = _logits_set(8.0, 50, 0)
    first, again, other = shadow_members(retain, 20, 0), shadow_members(retain, 20, 0), shadow_members(retain, 20, 1)
    assert len(first) == 20 and torch.equal(first.tensors[0], again.tensors[0])
    assert not torch.equal(first.tensors[0], other.tensors[0])
    assert shadow_members(retain, 80, 0) is retain  # smaller than asked: all of it


def test_plot_metric_bars_writes_a_figure(tmp_path, class_metrics):
    rows = {
        "original": {**class_metrics, "ua_std": 1.5, "mia_efficacy_std": 3.0},
        "oracle": class_metrics["oracle"],
        "broken": {"ua": None, "ra": 50.0},
    }
    path = plot_metric_bars(rows, tmp_path / "bars.png", title="class:3")
    assert path.stat().st_size > 5000
    nested_only = plot_metric_bars({"original": class_metrics}, tmp_path / "nested.png")
    assert nested_only.is_file()
    with pytest.raises(ConfigError, match="at least one row"):
        plot_metric_bars({}, tmp_path / "none.png")
