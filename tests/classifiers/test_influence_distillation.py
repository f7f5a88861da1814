"""Influence distillation: the influence term, the student architecture check, bad input, the benchmark's quick mode."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from classifiers.data import from_arrays, load_dataset, make_task
from classifiers.methods.influence_distillation import (
    InfluenceDistillationConfig,
    influence_distillation,
    influence_distillation_loss,
)
from classifiers.metrics import accuracy
from classifiers.models import ModelConfig, SmallCNN, load_model, save_model
from classifiers.training import fit, fresh_model
from concept_erase.core.config import from_dict
from concept_erase.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setting():
    """A small MLP teacher trained on 400 digits, and the task of forgetting class 3."""
    splits = load_dataset("digits")
    x, y = (torch.cat(t) for t in zip(splits.train.tensors, splits.test.tensors))
    splits = from_arrays(x[:400], y[:400], name="digits400")
    teacher = fresh_model(ModelConfig("mlp"), splits.num_classes, splits.input_shape, seed=0)
    fit(teacher, splits.train, epochs=15, batch_size=32, learning_rate=3e-3, seed=0)
    return teacher.eval(), make_task(splits, "class:3")


def _run(teacher, task, **values):
    model = copy.deepcopy(teacher)
    summary = influence_distillation(
        model, task, InfluenceDistillationConfig(**{"epochs": 6, "batch_size": 16, **values})
    )
    return model, summary


def test_the_influence_term_raises_the_forget_loss(setting):
    teacher, task = setting
    with_term, on = _run(teacher, task)
    without, off = _run(teacher, task, influence_weight=0.0)
    assert on["forget_loss_cap"] == pytest.approx(math.log(10))
    assert on["teacher_forget_loss"] < 0.5  # the teacher knows class 3
    assert on["student_forget_loss"] > off["student_forget_loss"] + 1.0
    assert on["student_forget_loss"] > math.log(10) * 0.9  # pushed to about chance or beyond
    assert accuracy(with_term, task.forget) < accuracy(without, task.forget)
    assert accuracy(with_term, task.test_retain) > 0.5  # still a classifier of the other classes


def test_loss_is_matching_minus_the_capped_forget_loss():
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    forget, labels = torch.tensor([[0.0, 0.0], [10.0, -10.0]]), torch.tensor([0, 1])
    mse = (1.0 + 1.0) / 2
    ce = [math.log(2), 20.0]  # the second is capped at 1.5
    loss = influence_distillation_loss(student, teacher, forget, labels, influence_weight=0.5, cap=1.5)
    assert float(loss) == pytest.approx(mse - 0.5 * (ce[0] + 1.5) / 2, rel=1e-4)
    plain = influence_distillation_loss(student, teacher, forget, labels, influence_weight=0.0, cap=1.5)
    assert float(plain) == pytest.approx(mse)


def test_a_smaller_student_is_accepted_and_the_model_becomes_it(setting, tmp_path):
    teacher, task = setting
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model, summary = _run(teacher, task, student=ModelConfig("cnn", channels=[16]))
    assert isinstance(model, SmallCNN) and model.config.channels == [16]
    assert model.config.num_classes == 10 and model.config.input_shape == (1, 8, 8)
    assert summary["student_parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["student_parameters"] != summary["teacher_parameters"]
    assert accuracy(model, task.test_retain) > 0.3
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    reloaded = load_model(save_model(model, tmp_path / "student"))  # the saved directory describes the student
    assert torch.equal(reloaded(task.forget.tensors[0]), model(task.forget.tensors[0]))


@pytest.mark.parametrize(
    "student, words",
    [
        ({"name": "mlp", "num_classes": 5}, ["num_classes 5", "10"]),
        ({"name": "cnn", "input_shape": [3, 8, 8]}, ["input_shape (3, 8, 8)", "(1, 8, 8)"]),
        ({"name": "vit", "patch_size": 3}, ["student 'vit' cannot take the teacher's inputs", "patch_size 3"]),
    ],
)
def test_a_student_that_cannot_take_the_teachers_inputs_is_refused(setting, student, words):
    teacher, task = setting
    model = copy.deepcopy(teacher)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = from_dict(InfluenceDistillationConfig, {"student": student, "epochs": 1})
    with pytest.raises(ConfigError) as info:
        influence_distillation(model, task, config)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any training


@pytest.mark.parametrize(
    "values, words",
    [
        ({"forget_loss_cap": 0}, ["forget_loss_cap", "> 0"]),
        ({"influence_weight": -1}, ["influence_weight", ">= 0"]),
        ({"temperature": 0}, ["temperature", "> 0"]),
        ({"matching": "l1"}, ["matching", "mse", "kl"]),
        ({"student": {"name": "resnet"}}, ["resnet", "cnn", "mlp"]),
    ],
)
def test_bad_config_values_are_refused(values, words):
    with pytest.raises(ConfigError) as info:
        from_dict(InfluenceDistillationConfig, values)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_bench_quick_mode_writes_its_json_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_id", ROOT / "scripts" / "bench_influence_distillation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, plot = tmp_path / "id.json", tmp_path / "id.png"
    assert bench.main(["--quick", "--output", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert plot.stat().st_size > 0
    assert report["settings"]["quick"] and report["settings"]["requests"] == 2
    (case,) = report["comparisons"]
    assert case["scenario"] == "class:3"
    rows = case["rows"]
    assert set(rows) >= {"original", "retrain oracle", "distil mlp (teacher's)", "distil 1-conv"}
    assert rows["retrain oracle"]["avg_gap"] == 0.0
    assert rows["distil 1-conv"]["student_parameters"] != rows["distil mlp (teacher's)"]["student_parameters"]
    assert any(name.startswith("finetune") for name in rows) and any(name.startswith("grad_ascent") for name in rows)
    for kind in ("class", "random"):
        steps = report["sequential"]["digits"][kind]
        assert [s["requests"] for s in steps] == [1, 2]
        assert steps[1]["deleted"] > steps[0]["deleted"] > 0
