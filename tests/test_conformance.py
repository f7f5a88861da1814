"""Conformance checks every registered method passes, diffusion and classifier alike.

The parameter list is computed from the registry when the module is collected (as peft's ``TEST_CASES`` and
scikit-learn's ``parametrize_with_checks``): registering a method is enough to get these checks, with ids such as
``diffusion-fmn`` or ``classifier-ssd``. For every method:

a. its config round-trips through YAML (``dump_config`` -> ``load_config``), non-default values included;
b. an unknown key is refused with a one-line error that names the valid keys;
c. two seeded runs give identical weights (and identical metrics / losses);
d. a run changes the model and lowers forget accuracy on the embedded defaults: class 3 of digits with a small MLP
   (classifiers, through the harness's ``run_job``, as ``concept-erase unlearn`` runs them), or "seven" on the
   embedded tiny Stable Diffusion scored by the embedded judge (diffusion, with the demo's settings made cheap).

Methods run at their defaults unless a table below gives cheaper settings; a method missing from the tables is
checked at its defaults, and a run that is too slow fails telling its author to add settings here.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import torch
from safetensors.torch import load_file

from classifiers.harness import UnlearnJob, make_method_config, run_job
from classifiers.metrics import accuracy
from classifiers.oracle import get_original
from concept_erase.core.config import dump_config, load_config, read_yaml
from concept_erase.core.errors import ConceptEraseError, UnknownConfigKeyError
from concept_erase.core.registry import METHODS, get_method
from concept_erase.diffusion.erasure import erase, load_erased
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure

KINDS = ("diffusion", "classifier")
DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.yaml"

# ---------------------------------------------------------------------------------------------------- settings

# Classifier scenario: forget class 3 of digits; the original is an MLP trained with this recipe (about 0.4 s).
CLASSIFIER_JOB = {"dataset": "digits", "model": "mlp", "forget": "class:3", "recipe": {"epochs": 10}, "seed": 0}
# Cheaper settings per classifier method. Empty: every registered method forgets class 3 at its defaults, each run
# in under a second (retrain / amnesiac get the recipe from the harness, distruction prepares and caches its artifact).
CLASSIFIER_FAST: dict[str, dict] = {
    # full-batch GD at the softmax-regression default (0.5) diverges on the hidden-layer MLP of this scenario
    "deltagrad": {"learning_rate": 0.1},
    # a student distilled from scratch: 4 epochs instead of 10 (forgets class 3 entirely either way)
    "influence_distillation": {"epochs": 4},
}


def _demo_settings() -> dict[str, dict]:
    """Each diffusion method's erase settings in the demo (tuned for the tiny model)."""
    demo = read_yaml(DEMO)
    steps = [s["config"] for s in demo["steps"] if s.get("step") == "erase"]
    return {s["method"]: dict(s.get("config") or {}) for s in steps}


DIFFUSION_DEMO = _demo_settings()
# On top of the demo's settings: fewer and cheaper training images (8 per concept, 5 denoising steps, one retain
# concept) and fewer steps. Measured on 16 evaluation images of "seven" (original: 0.69 recognised as seven):
# fmn 0.12 (the demo's 35 steps; textual inversion 50 steps instead of 100), salun 0.12 (30 steps instead of 150;
# 15 leave 0.44), esd 0.0 (20 steps instead of 100; 15 leave 0.06). Each erasure takes 1.5-4 s on one CPU thread.
DIFFUSION_CHEAP: dict[str, dict] = {
    "fmn": {"num_images": 8, "generation_steps": 5, "textual_inversion_steps": 50},
    "salun": {"num_images": 8, "generation_steps": 5, "retain_concepts": ["one"], "max_train_steps": 30},
    "esd": {"num_images": 8, "generation_steps": 5, "retain_concepts": ["one"], "max_train_steps": 20},
    "uce": {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0},  # closed form: no images
    "rece": {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0},  # uce + 5 closed-form rounds
}
CONCEPT = "seven"
# The evaluation of check d: the project's own (embedded judge, held-out templates), with fewer images and steps.
EVALUATION = {"forget": [CONCEPT], "retain": [], "num_images": 16, "num_inference_steps": 10}
# A run slower than this (seconds, one CPU thread) fails: the module must stay within about two minutes.
BUDGET = {"classifier": 20.0, "diffusion": 45.0}


def _settings(kind: str, name: str) -> dict:
    if kind == "classifier":
        return dict(CLASSIFIER_FAST.get(name, {}))
    return {**DIFFUSION_DEMO.get(name, {}), **DIFFUSION_CHEAP.get(name, {}), "show_progress": False}


def _where(kind: str, name: str) -> str:
    """How a method's settings were chosen, and what its author can do, for failure messages."""
    if kind == "classifier":
        table = "CLASSIFIER_FAST"
        source = "the settings in CLASSIFIER_FAST" if name in CLASSIFIER_FAST else "its defaults"
    else:
        table = "DIFFUSION_CHEAP"
        known = name in DIFFUSION_CHEAP or name in DIFFUSION_DEMO
        source = "the demo's settings made cheaper by DIFFUSION_CHEAP" if known else "its defaults"
    return f"(run with {source}; add settings that work cheaply to {table} in tests/test_conformance.py)"


def _cases(*, slow_kinds: tuple[str, ...] = ()) -> list:
    """One case per registered method and kind: ``diffusion-fmn``, ``classifier-salun``..."""
    return [
        pytest.param(
            kind, entry.name, id=f"{kind}-{entry.name}", marks=[pytest.mark.slow] if kind in slow_kinds else []
        )
        for entry in METHODS
        for kind in KINDS
        if kind in entry.tags
    ]


CASES = _cases()
# a diffusion run takes a few seconds: the quick loop (-m "not slow") leaves those out
RUN_CASES = _cases(slow_kinds=("diffusion",))


def test_every_registered_method_is_checked():
    """A method without a known kind would escape the checks below; stale table entries name no method."""
    untagged = [e.name for e in METHODS if not set(e.tags) & set(KINDS)]
    assert not untagged, f"registered methods without a {' or '.join(KINDS)} tag are not checked: {untagged}"
    assert {kind for kind, _ in (p.values for p in CASES)} == set(KINDS)
    for kind, table in (("classifier", CLASSIFIER_FAST), ("diffusion", DIFFUSION_CHEAP)):
        registered = {e.name for e in METHODS if kind in e.tags}
        assert set(table) <= registered, f"settings for unregistered {kind} methods: {set(table) - registered}"


# ---------------------------------------------------------------------------------------------------- a, b: configs


def _changed_value(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(True, a value of type tp other than value)``, or ``(False, None)`` when no generic one exists."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        others = [a for a in args if a != value]
        return (True, others[0]) if others else (False, None)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            for arg in inner:
                sample = {bool: True, int: 7, float: 0.25}.get(arg)
                if sample is not None:
                    return True, sample
                if typing.get_origin(arg) is list and typing.get_args(arg) == (str,):
                    return True, ["one", "two"]
            return False, None
        return _changed_value(value, inner[0]) if len(inner) == 1 else (False, None)
    if tp is bool:
        return True, not value
    if tp is int:
        return True, value + 1
    if tp is float:
        return True, value * 2 if value else 0.25
    if origin is list and args == (str,) and isinstance(value, list):
        return True, [*value, "nine"]
    return False, None


def _non_default_values(entry, base: dict) -> dict:
    """Values other than the config's (``base`` applied) for as many fields as validation accepts together: a bool
    flipped, a number changed, another Literal choice, a list for an unset list... added one field at a time."""
    hints = typing.get_type_hints(entry.config_cls)
    start = entry.make_config(base)
    values: dict = {}
    for f in dataclasses.fields(entry.config_cls):
        if not f.init:
            continue
        ok, value = _changed_value(getattr(start, f.name), hints[f.name])
        if not ok:
            continue
        try:
            entry.make_config({**base, **values, f.name: value})
        except (ConceptEraseError, ValueError):
            continue
        values[f.name] = value
    return values


@pytest.mark.parametrize("kind, name", CASES)
def test_config_round_trips_through_yaml(kind, name, tmp_path):
    entry = get_method(name, tag=kind)
    assert entry.config_cls is not None and dataclasses.is_dataclass(entry.config_cls), name
    base = _settings(kind, name)
    changed = _non_default_values(entry, base)
    assert changed, f"{name}: no field of {entry.config_cls.__name__} accepts a non-default value"
    config = entry.make_config({**base, **changed})
    assert config != entry.make_config()
    file = tmp_path / "config.yaml"
    dump_config(config, file)
    loaded = load_config(entry.config_cls, file)
    assert loaded == config, f"fields that did not survive: {_differences(config, loaded)}"
    assert entry.make_config(read_yaml(file)) == config  # the registry's route (what `--config FILE` takes)
    for key, value in changed.items():
        assert getattr(loaded, key) == value or (isinstance(value, list) and list(getattr(loaded, key)) == value), key


def _differences(a, b) -> dict:
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    }


def _refuse_unknown_key(kind: str, name: str, values: dict):
    """Build a config through the route the method's runs take (the harness / the erase driver)."""
    if kind == "classifier":
        return make_method_config(name, values, seed=0)
    return erase(None, name, [CONCEPT], values)  # validated before the model is loaded


@pytest.mark.parametrize("kind, name", CASES)
def test_unknown_key_is_refused_naming_the_valid_keys(kind, name):
    entry = get_method(name, tag=kind)
    valid = sorted(f.name for f in dataclasses.fields(entry.config_cls) if f.init)
    attempts = {
        "mapping": lambda: entry.make_config({"not_a_key": 1}),
        "override": lambda: entry.make_config(None, ["not_a_key=1"]),
        "run": lambda: _refuse_unknown_key(kind, name, {"not_a_key": 1}),
    }
    for route, attempt in attempts.items():
        with pytest.raises(UnknownConfigKeyError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and "not_a_key" in message, (route, message)
        missing = [key for key in valid if key not in message]
        assert not missing, f"{route}: the error does not name the valid keys {missing}: {message}"


# ---------------------------------------------------------------------------------------------------- c, d: runs


@dataclasses.dataclass
class Run:
    weights: dict[str, torch.Tensor]  # the model after the method
    original: dict[str, torch.Tensor]  # the model it started from
    results: dict  # what must repeat exactly: metrics (classifier) or losses (diffusion)
    output: Any  # the harness's JobResult (classifier) or the erasure directory (diffusion)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _without_timings(value: Any) -> Any:
    """``value`` without wall-clock entries (``*seconds``, ``cost_ratio``, ``peak_memory``)."""
    if isinstance(value, dict):
        volatile = ("seconds", "cost_ratio", "peak_memory")
        return {k: _without_timings(v) for k, v in value.items() if not any(w in k for w in volatile)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


class Runner:
    """Runs methods the way their users do, and remembers each method's first run for the later checks."""

    def __init__(self, splits, tmp_path_factory):
        self.splits, self.tmp = splits, tmp_path_factory
        self.first: dict[tuple[str, str], Run] = {}
        self._original = None
        self._base = None

    @staticmethod
    def job(name: str) -> UnlearnJob:
        return UnlearnJob(method=name, method_config=_settings("classifier", name), oracle=False, **CLASSIFIER_JOB)

    def classifier_original(self) -> torch.nn.Module:
        if self._original is None:  # the harness's own route to the original: trained on the training split
            job = UnlearnJob(oracle=False, **CLASSIFIER_JOB)
            self._original = get_original(self.splits, job.architecture(), job.train_config(), cache=False).model
        return self._original

    def diffusion_base(self) -> dict[str, torch.Tensor]:
        if self._base is None:
            from concept_erase.diffusion.loading import load_pipeline
            from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL

            self._base = _state(load_pipeline(DEFAULT_MODEL).unet)
        return self._base

    def run(self, kind: str, name: str) -> Run:
        start = time.perf_counter()
        run = self._classifier(name) if kind == "classifier" else self._diffusion(name)
        seconds = time.perf_counter() - start
        if seconds > BUDGET[kind]:
            pytest.fail(
                f"{kind}-{name}: one run took {seconds:.0f} s, over the budget of {BUDGET[kind]:.0f} s {_where(kind, name)}"
            )
        self.first.setdefault((kind, name), run)
        return run

    def first_run(self, kind: str, name: str) -> Run:
        return self.first.get((kind, name)) or self.run(kind, name)

    def _classifier(self, name: str) -> Run:
        original = self.classifier_original()
        before = _state(original)
        result = run_job(self.job(name), model=original, splits=self.splits)
        assert all(torch.equal(before[k], v) for k, v in _state(original).items()), "run_job changed the original"
        return Run(_state(result.model), before, _without_timings(result.metrics), result)

    def _diffusion(self, name: str) -> Run:
        out = self.tmp.mktemp(f"erase-{name}") / "out"
        record = erase(None, name, [CONCEPT], _settings("diffusion", name), output_dir=out)
        unet = load_erased(out).unet
        assert all(math.isfinite(x) for x in record["losses"]), record["losses"]
        results = {"losses": record["losses"], "changed_parameters": record["changed_parameters"]}
        return Run(_state(unet), self.diffusion_base(), results, out)


@pytest.fixture(scope="module")
def runner(splits, tmp_path_factory) -> Runner:
    return Runner(splits, tmp_path_factory)


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return sorted(set(a) ^ set(b)) + [
        k for k in a if k in b and (a[k].shape != b[k].shape or not torch.equal(a[k], b[k]))
    ]


@pytest.mark.parametrize("kind, name", RUN_CASES)
def test_seeded_runs_are_identical(kind, name, runner):
    first = runner.first_run(kind, name)
    second = runner.run(kind, name)
    differing = _differing(first.weights, second.weights)
    assert not differing, f"{kind}-{name}: two runs with seed 0 differ in {len(differing)} tensors: {differing[:5]}"
    assert first.results == second.results, f"{kind}-{name}: two runs with seed 0 gave different results"


@pytest.mark.parametrize("kind, name", RUN_CASES)
def test_run_changes_the_model_and_lowers_forget_accuracy(kind, name, runner):
    run = runner.first_run(kind, name)
    changed = _differing(run.weights, run.original)
    assert changed, f"{kind}-{name}: every parameter is as it was {_where(kind, name)}"
    if kind == "classifier":
        forget = run.output.task.forget
        before, after = accuracy(run.output.original.model, forget), accuracy(run.output.model, forget)
        assert before > 0.9  # the scenario is meaningful: the original knows the class
        margin = 0.05  # 7 of the 137 forget samples
    else:
        metrics = evaluate_erasure(run.output, EvaluationConfig(**EVALUATION), oracle=None)
        before, after = metrics["original"]["forget_accuracy"], metrics["forget_accuracy"]
        assert before >= 0.5  # the embedded model draws the concept
        margin = 0.25  # 4 of the 16 images
    assert after <= before - margin, f"{kind}-{name}: forget accuracy {before:.3f} -> {after:.3f} {_where(kind, name)}"


# ---------------------------------------------------------------------------------------------------- GPU

DIFFUSION_CASES = [p for p in CASES if p.values[0] == "diffusion"]


@pytest.mark.gpu
@pytest.mark.parametrize("kind, name", DIFFUSION_CASES)
def test_fp16_erasure_on_cuda_keeps_fp32_weights(kind, name, tmp_path):
    """mixed_precision fp16 (CUDA only, refused on CPU) runs every diffusion method: autocast with a grad scaler,
    the trained weights kept in fp32 and finite. Ten steps, so that the steps the scaler skips while it calibrates
    (each overflow halves the scale) cannot leave the model unchanged."""
    settings = {**_settings(kind, name), "mixed_precision": "fp16", "max_train_steps": 10, "num_images": 4}
    record = erase(None, name, [CONCEPT], settings, output_dir=tmp_path / "out")
    assert record["device"].startswith("cuda") and record["steps"] == 10
    assert record["config"]["mixed_precision"] == "fp16"
    assert all(math.isfinite(x) for x in record["losses"]), record["losses"]
    assert record["changed_parameters"], "no weight moved in 10 fp16 steps"
    saved = {
        f"{file.name}:{k}": v for file in (tmp_path / "out").rglob("*.safetensors") for k, v in load_file(file).items()
    }
    assert saved
    for key, tensor in saved.items():  # what was written: the trained weights, never their fp16 copies
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all(), key
