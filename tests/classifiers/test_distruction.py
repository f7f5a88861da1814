"""DiStruction: BGD preparation, the prepared artifact, forgetting without retain data, and its bad inputs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from classifiers.distruction.bgd import BGDConfig, PreparedPosterior, bgd_sigma_update, prepare_model
from classifiers.distruction.method import OBJECTIVES, gaussian_kl
from classifiers.harness import UnlearnJob, run_job
from classifiers.methods import get_classifier_method, unlearn
from classifiers.models import ModelConfig
from classifiers.training import fresh_model
from concept_erase.core.errors import CheckpointError, ConfigError, TrainingError


@pytest.fixture(scope="module")
def prepared_dir(trained, splits, tmp_path_factory):
    path = tmp_path_factory.mktemp("prepared")
    prepare_model(trained, splits.train, BGDConfig()).save(path)
    return path


class _NoRetain(TensorDataset):
    """A retain set that fails the test when read."""

    def __init__(self):
        pass

    def __getattribute__(self, name):
        if name in ("__class__", "__init__"):
            return object.__getattribute__(self, name)
        raise AssertionError(f"the retain set was read ({name})")

    def __len__(self):
        raise AssertionError("the retain set was read (len)")


def _accuracy(model, dataset) -> float:
    inputs, labels = dataset.tensors
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) == labels).float().mean())


def test_sigma_update_matches_the_formula():
    sigma, e = torch.tensor([0.5, 0.5, 0.5, 0.02]), torch.tensor([2.0, -2.0, 0.0, 1e25])
    out = bgd_sigma_update(sigma, e)
    # 0.5 * sqrt(1 + 0.5^2) -/+ 0.25: by hand; the last would cancel to 0 in the literal float32 formula
    assert out[:3].tolist() == pytest.approx([0.309017, 0.809017, 0.5], abs=1e-6)
    assert 0 < out[3] < 1e-20


def test_one_bgd_step_by_hand():
    """A 2x2 linear model, one sample, one Monte Carlo draw: the step computed from the softmax gradient by hand."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -0.5], [0.3, 0.8]]))
    x, y = torch.tensor([[0.7, -1.2]]), torch.tensor([1])
    config = BGDConfig(mc_samples=1, batch_size=1, init_sigma=0.3, cap_at_init=False, seed=5)
    posterior = prepare_model(model, TensorDataset(x, y), config)
    generator = torch.Generator().manual_seed(5)
    torch.randperm(1, generator=generator)  # the data order is drawn first
    eps = torch.randn(2, 2, generator=generator)
    theta = model.weight.detach() + 0.3 * eps
    probs = torch.softmax(theta @ x[0], dim=0)
    grad = torch.outer(probs - torch.tensor([0.0, 1.0]), x[0])  # d CE / d W
    half = 0.3 * (grad * eps) / 2
    expected = 0.3 * torch.sqrt(1 + half**2) - 0.3 * half
    assert torch.allclose(posterior.sigma["weight"], expected, atol=1e-6)


def test_preparation_learns_sigma_and_keeps_the_mean(trained, splits):
    before = copy.deepcopy(trained.state_dict())
    posterior = prepare_model(trained, splits.train, BGDConfig(mc_samples=2))
    for name, param in trained.named_parameters():
        assert torch.equal(param, before[name])
        assert torch.equal(posterior.mean[name], before[name])
        sigma = posterior.sigma[name]
        assert torch.isfinite(sigma).all() and (sigma > 0).all() and (sigma <= 0.06).all()
    assert min(float(s.min()) for s in posterior.sigma.values()) < 0.03  # the data pinned some weights down
    assert posterior.info["train_samples"] == len(splits.train)


def test_prepared_artifact_round_trip_and_refusals(trained, prepared_dir, splits):
    loaded = PreparedPosterior.load(prepared_dir, trained)
    again = PreparedPosterior.load(prepared_dir / "prepared.safetensors", trained)
    for name, param in trained.named_parameters():
        assert torch.equal(loaded.mean[name], param) and torch.equal(loaded.sigma[name], again.sigma[name])
    other = fresh_model(ModelConfig("mlp", hidden_sizes=[32]), splits.num_classes, splits.input_shape, seed=0)
    with pytest.raises(CheckpointError, match="another model"):
        PreparedPosterior.load(prepared_dir, other)
    retrained = fresh_model(ModelConfig("mlp"), splits.num_classes, splits.input_shape, seed=1)
    with pytest.raises(CheckpointError, match="other trained weights"):
        PreparedPosterior.load(prepared_dir, retrained)


def test_bad_configs():
    entry = get_classifier_method("distruction")
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"kl_weight \(lambda\) must be in \[0, 1\]"):
            entry.make_config({"kl_weight": bad})
    with pytest.raises(ConfigError, match="accepted: " + ", ".join(OBJECTIVES)):
        entry.make_config({"objective": "repair"})


def test_sigma_collapse_names_the_step(trained, splits):
    with pytest.raises(TrainingError, match=r"sigma of '.*' became nan at step 1"):
        prepare_model(trained, splits.train, BGDConfig(init_sigma=1e30, cap_at_init=False))


def test_unprepared_model_is_refused_with_how_to_prepare(trained, task):
    with pytest.raises(ConfigError, match="concept-erase distruction prepare"):
        unlearn("distruction", copy.deepcopy(trained), task, {"require_prepared": True})


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_forgetting_reads_no_retain_data(trained, task, prepared_dir, objective):
    blind = dataclasses.replace(task, retain=_NoRetain())
    model = copy.deepcopy(trained)
    config = {"prepared_path": str(prepared_dir), "require_prepared": True, "objective": objective, "epochs": 5}
    summary = unlearn("distruction", model, blind, config)
    assert _accuracy(model, task.forget) < _accuracy(trained, task.forget) - 0.3
    assert len(summary["kl_history"]) == summary["global_step"] and summary["prepare_seconds"] == 0.0


def test_kl_weight_one_stays_at_the_prepared_model(trained, task, prepared_dir):
    runs = {}
    for weight in (1.0, 0.1):
        model = copy.deepcopy(trained)
        config = {"prepared_path": str(prepared_dir), "kl_weight": weight, "epochs": 10}
        runs[weight] = (unlearn("distruction", model, task, config), model)
    assert runs[1.0][0]["final_kl"] == 0.0 and runs[0.1][0]["final_kl"] > 1.0
    for name, param in trained.named_parameters():
        assert torch.equal(dict(runs[1.0][1].named_parameters())[name], param)
    assert _accuracy(runs[0.1][1], task.forget) < 0.5 < _accuracy(runs[1.0][1], task.forget)


def test_gaussian_kl_closed_form():
    mu_q, s_q, mu_p, s_p = torch.tensor([0.3]), torch.tensor([0.2]), torch.tensor([0.1]), torch.tensor([0.4])
    expected = torch.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5
    assert float(gaussian_kl(mu_q, s_q, mu_p, s_p)) == pytest.approx(float(expected))
    assert float(gaussian_kl(mu_p, s_p, mu_p, s_p)) == 0.0


def test_harness_prepares_says_so_and_excludes_it(splits, task, capsys):
    assert torch.equal(task.training_data().tensors[0], splits.train.tensors[0])
    job = UnlearnJob(method="distruction", dataset="digits", model="mlp", recipe={"epochs": 5}, oracle=False)
    result = run_job(job)
    assert "preparing the model with BGD" in capsys.readouterr().out
    assert result.summary["prepare_seconds"] > 0
    assert result.metrics["excluded_seconds"] == pytest.approx(result.summary["prepare_seconds"], abs=1e-3)
    run_job(job)
    assert "using the prepared artifact cached" in capsys.readouterr().out
