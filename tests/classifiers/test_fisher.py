"""Fisher forgetting (Golatkar et al., CVPR 2020): the Fisher estimate, the variance recipe, the class treatment."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import classifiers.plugin  # noqa: F401  (registers the methods)
from classifiers.data import UnlearningTask, from_arrays, make_task
from classifiers.methods import unlearn
from classifiers.methods.fisher import FisherConfig, _functional_fisher, predictive_fisher, scrub_variances
from classifiers.models import build_model, predict_logits
from concept_erase.core.errors import ConfigError, EmptyDataError


def _data(n=24, shape=(1, 8, 8), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))


def _loop_fisher(model, dataset, classes):
    """The authors' estimate written plainly: one example at a time, one backward pass per class, weighted by p."""
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x in dataset.tensors[0]:
        out = model(x[None])
        probs = out.softmax(-1).detach()
        for y in range(classes):
            model.zero_grad()
            nn.functional.cross_entropy(out, torch.tensor([y])).backward(retain_graph=True)
            for n, p in model.named_parameters():
                total[n] += probs[0, y] * p.grad.pow(2)
    model.zero_grad()
    return {n: t / len(dataset) for n, t in total.items()}


class _Tied(nn.Module):
    """A linear layer used twice (shared weights): the layer route cannot take it."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.inner = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(self.flat(x))))))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fisher_is_the_expectation_over_the_models_predictions_per_example(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, input_shape=(1, 8, 8))
    data = _data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher, route = predictive_fisher(model, data, batch_size=7)  # batches that do not divide the set
    assert route == "layers"
    reference = _loop_fisher(model, data, 4)
    functional = _functional_fisher(model, data, 5)
    for n in reference:
        scale = reference[n].abs().max()
        assert torch.allclose(fisher[n], reference[n], atol=1e-5 * scale), n
        assert torch.allclose(functional[n], reference[n], atol=1e-5 * scale), n
        assert torch.equal(before[n], dict(model.named_parameters())[n])
    # not the empirical Fisher of the labels: that one differs on an untrained model
    empirical = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in zip(*data.tensors):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[None]), y[None]).backward()
        for n, p in model.named_parameters():
            empirical[n] += p.grad.pow(2) / len(data)
    assert not torch.allclose(
        empirical["net.1.weight" if name == "mlp" else "head.weight"],
        reference["net.1.weight" if name == "mlp" else "head.weight"],
        rtol=0.05,
    )


def test_shared_weights_take_the_functional_route_with_the_same_result():
    torch.manual_seed(0)
    model = _Tied()
    data = _data(n=10)
    fisher, route = predictive_fisher(model, data, batch_size=4)
    assert route == "functional"
    reference = _loop_fisher(model, data, 4)
    for n in reference:
        assert torch.allclose(fisher[n], reference[n], atol=1e-5 * reference[n].abs().max()), n


def test_variances_follow_the_notebooks_clamps_row_means_and_multipliers():
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=4, input_shape=(1, 2, 2), hidden_sizes=[3])
    hidden_w, hidden_b, head_w, head_b = (p for _, p in model.named_parameters())
    fisher = {
        "net.1.weight": torch.tensor([[1e-9, 1.0, 1e-2, 4.0]] * 3),  # 1/F: 1e9 -> clamp 1e3, 1, 100, 0.25
        "net.1.bias": torch.full((3,), 0.5),
        "net.3.weight": torch.full((4, 3), 1e-9),  # the head: clamp at 1e2
        "net.3.bias": torch.full((4,), 2.0),
    }
    config = FisherConfig(alpha=1e-3)
    moments = scrub_variances(model, fisher, config, forget_classes=(2,))
    mean, var = moments["net.1.weight"]
    row = 1e-3 * (1e3 + 1.0 + 100.0 + 0.25) / 4  # alpha times the row mean of the clamped 1 / F
    assert torch.allclose(var, torch.full_like(var, row), rtol=1e-6) and torch.equal(mean, hidden_w)
    assert torch.allclose(moments["net.1.bias"][1], torch.full((3,), 10 * 1e-3 * 2.0), rtol=1e-5)  # 1-D: x10
    head_mean, head_var = moments["net.3.weight"]
    kept = [0, 1, 3]
    assert torch.allclose(head_var[kept], torch.full((3, 3), 10 * 1e-3 * 1e2), rtol=1e-6)  # clamp 1e2, x10
    assert torch.equal(head_mean[kept], head_w[kept].detach())
    assert torch.equal(head_mean[2], torch.zeros(3)) and torch.allclose(head_var[2], torch.full((3,), 1e-3))
    bias_mean, bias_var = moments["net.3.bias"]
    assert bias_mean[2] == 0 and torch.isclose(bias_var[2], torch.tensor(1e-3))
    assert torch.allclose(bias_var[kept], torch.full((3,), 10 * 1e-3 * 0.5), rtol=1e-5)
    assert float(head_b[2].detach()) != 0  # the model itself is not touched


def _trained_task(forget):
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(4, 16, generator=g)
    labels = torch.arange(4).repeat(30)
    x = (centres[labels] + 0.15 * torch.randn(len(labels), 16, generator=g)).clamp(0, 1)
    splits = from_arrays(x.view(-1, 1, 4, 4), labels, test_size=0.25, seed=0)
    task = make_task(splits, forget, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=4, input_shape=(1, 4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = splits.train.tensors
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()
    return model.eval(), task


def test_class_forgetting_zeroes_the_forgotten_rows_and_random_forgetting_keeps_them():
    model, task = _trained_task("class:1")
    scrubbed = build_model("mlp", num_classes=4, input_shape=(1, 4, 4))
    scrubbed.load_state_dict(model.state_dict())
    summary = unlearn("fisher", scrubbed, task, {"seed": 3})
    assert summary["zeroed_rows"] == [1] and summary["fisher"]["route"] == "layers"
    head = scrubbed.net[-1]
    assert float(head.weight[1].abs().max()) < 0.2 and float(head.bias[1].abs()) < 0.2  # std sqrt(1e-3)
    preds = predict_logits(scrubbed, task.forget).argmax(1)
    assert float((preds == 1).float().mean()) < float(
        (predict_logits(model, task.forget).argmax(1) == 1).float().mean()
    )
    kept = predict_logits(scrubbed, task.test_retain).argmax(1) == task.test_retain.tensors[1]
    assert float(kept.float().mean()) > 0.9  # the default noise leaves the other classes alone
    # another seed, another draw; class_rows: false keeps the row's weights (plus noise)
    other = build_model("mlp", num_classes=4, input_shape=(1, 4, 4))
    other.load_state_dict(model.state_dict())
    unlearn("fisher", other, task, {"seed": 3, "class_rows": False})
    assert torch.allclose(other.net[-1].weight[1], model.net[-1].weight[1], atol=0.5)
    assert not torch.allclose(other.net[-1].weight[1], head.weight[1], atol=0.2)

    _, random_task = _trained_task("random:0.2")
    random_model = build_model("mlp", num_classes=4, input_shape=(1, 4, 4))
    random_model.load_state_dict(model.state_dict())
    assert unlearn("fisher", random_model, random_task)["zeroed_rows"] == []


def test_no_retain_data_is_refused_with_what_it_needs():
    model = build_model("mlp", num_classes=4, input_shape=(1, 8, 8))
    data = _data(n=8)
    empty = TensorDataset(data.tensors[0][:0], data.tensors[1][:0])
    task = UnlearningTask(
        dataset="x", num_classes=4, input_shape=(1, 8, 8), forget_classes=(), forget=data, retain=empty,
        test_forget=empty, test_retain=data, test=data, scenario="random:1.0",
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(EmptyDataError, match="fisher needs retain data") as err:
        unlearn("fisher", model, task)
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_fisher_samples_subsets_the_retain_set_and_alpha_must_be_positive():
    model, task = _trained_task("class:1")
    summary = unlearn("fisher", model, task, {"fisher_samples": 10})
    assert summary["fisher"]["samples"] == 10
    with pytest.raises(ConfigError, match="alpha"):
        FisherConfig(alpha=0.0)
    with pytest.raises(ConfigError, match="fisher_samples"):
        FisherConfig(fisher_samples=0)
