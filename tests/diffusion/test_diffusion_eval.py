"""The concept-erasure evaluation harness on the embedded tiny Stable Diffusion, adapters and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from concept_erase.core.errors import AdapterError, ModelLoadError
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, frechet_distance, generate
from concept_erase.diffusion.loading import apply_adapter, load_pipeline, save_weights_adapter
from concept_erase.diffusion.tiny_sd import ASSETS, DEFAULT_MODEL, TinySDConfig, build_pipeline, save_pipeline
from pipelines.cli import main

ORACLE = ASSETS / "tiny-sd-without-seven"
SMALL = {"num_images": 8, "num_inference_steps": 10}


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """One cache for the module (reference generations are reused across tests), never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONCEPT_ERASE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _volatile(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("seconds", "generation_seconds", "peak_memory")}


# ---------------------------------------------------------------------------------------------------- metrics


def test_frechet_distance_is_zero_for_equal_sets_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + 2.0)
    assert shifted == pytest.approx(4 * 4.0, rel=1e-6)  # |mu_a - mu_b|^2 with equal covariances
    assert frechet_distance(a, rng.normal(size=(500, 4)) * 3) > 10


def test_images_do_not_depend_on_the_batch_they_were_generated_in():
    pipe = load_pipeline(DEFAULT_MODEL)
    prompts, seeds = ["the digit three"] * 5, [0, 1, 2, 3, 4]
    a = generate(pipe, prompts, seeds, EvaluationConfig(batch_size=5, num_inference_steps=4))
    b = generate(pipe, prompts, seeds, EvaluationConfig(batch_size=2, num_inference_steps=4))
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


@pytest.mark.slow
def test_embedded_model_draws_every_concept_it_is_asked_for():
    metrics = evaluate_erasure(DEFAULT_MODEL, EvaluationConfig(num_images=16), oracle=None)
    assert metrics["forget_accuracy"] is None and metrics["retain"] == list(metrics["per_concept"])
    assert metrics["retain_accuracy"] >= 0.85, metrics["per_concept"]


@pytest.mark.slow
def test_evaluating_the_oracle_against_the_original_shows_the_concept_gone(tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate_erasure(
        ORACLE, EvaluationConfig(forget=["seven"], **SMALL), original=DEFAULT_MODEL, output_dir=out
    )
    assert metrics["original"]["forget_accuracy"] >= 0.5
    assert metrics["forget_accuracy"] <= 0.2  # the oracle never saw a seven
    assert metrics["oracle"]["forget_accuracy"] == metrics["forget_accuracy"]  # auto found the shipped oracle
    assert metrics["gaps_to_oracle"]["forget_accuracy"] == 0.0
    assert metrics["retain_accuracy"] >= 0.7
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("forget_accuracy", "retain_accuracy", "per_concept", "seconds", "original", "oracle"):
        assert key in saved
    for key in ("forget_accuracy", "retain_accuracy"):
        assert 0 <= saved["original"][key] <= 1 and 0 <= saved["oracle"][key] <= 1
    assert saved["per_concept"]["seven"]["role"] == "forget"
    assert "frechet_to_real" in saved["per_concept"]["three"]
    assert set(saved["unseen_word_baseline"]) >= {"words", "original", "oracle"}
    assert (out / "grid.png").stat().st_size > 1000
    assert "retrain oracle" in (out / "report.md").read_text()


def test_seeded_evaluation_gives_identical_metrics_twice():
    config = EvaluationConfig(forget=["seven"], retain=["one", "two"], **SMALL)
    first = evaluate_erasure(DEFAULT_MODEL, config, adapter=None, original=ORACLE, oracle=None)
    second = evaluate_erasure(DEFAULT_MODEL, config, adapter=None, original=ORACLE, oracle=None)
    assert _volatile(first) == _volatile(second)


# ---------------------------------------------------------------------------------------------------- adapters


def _unet_weight(pipe, name: str = "conv_out.weight") -> torch.Tensor:
    return pipe.unet.state_dict()[name]


def test_weights_adapter_replace_and_delta(tmp_path):
    pipe = load_pipeline(DEFAULT_MODEL)
    original = _unet_weight(pipe).clone()
    save_weights_adapter(tmp_path / "zero.safetensors", {"unet.conv_out.weight": torch.zeros_like(original)})
    save_weights_adapter(tmp_path / "plus.safetensors", {"unet.conv_out.weight": torch.ones_like(original)}, "delta")
    info = apply_adapter(pipe, tmp_path / "zero.safetensors")
    assert info["mode"] == "replace" and torch.count_nonzero(_unet_weight(pipe)) == 0
    apply_adapter(pipe, tmp_path / "plus.safetensors")
    assert torch.equal(_unet_weight(pipe), torch.ones_like(original))
    assert torch.equal(_unet_weight(load_pipeline(DEFAULT_MODEL)), original)  # the model files are untouched


def test_lora_adapter_from_peft_is_loaded_and_fused(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline(DEFAULT_MODEL)
    before = _unet_weight(pipe, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight").clone()
    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_k", "to_v"], init_lora_weights="gaussian"))
    for name, param in pipe.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    layers = get_peft_model_state_dict(pipe.unet)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)

    fresh = load_pipeline(DEFAULT_MODEL)
    info = apply_adapter(fresh, tmp_path / "lora")
    assert info["format"] == "lora"
    after = _unet_weight(fresh, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.base_layer.weight")
    assert not torch.allclose(after, before)

    other = build_pipeline(TinySDConfig(unet_channels=[16, 32]))
    with pytest.raises(AdapterError, match="does not match the model"):
        apply_adapter(other, tmp_path / "lora")


@pytest.mark.parametrize(
    "tensors, fragment",
    [
        ({"unet.conv_out.weight": torch.zeros(3, 3)}, "has shape (3, 3)"),
        ({"unet.no_such.weight": torch.zeros(1)}, "has no parameter"),
        ({"safety_checker.weight": torch.zeros(1)}, "does not name a model component"),
    ],
)
def test_adapter_that_does_not_fit_the_model_is_refused(tmp_path, tensors, fragment):
    save_weights_adapter(tmp_path / "bad.safetensors", tensors)
    pipe = load_pipeline(DEFAULT_MODEL)
    with pytest.raises(AdapterError, match="does not|has no"):
        apply_adapter(pipe, tmp_path / "bad.safetensors")
    with pytest.raises(AdapterError) as info:
        apply_adapter(pipe, tmp_path / "bad.safetensors")
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------------- bad input


def test_model_directory_missing_a_component_is_named(tmp_path):
    shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "unet")
    with pytest.raises(ModelLoadError, match="missing Stable Diffusion component.*unet"):
        load_pipeline(tmp_path / "model")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline directory"):
        load_pipeline(tmp_path / "plain")


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _bad_model(tmp_path: Path) -> list:
    shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "vae")
    return ["--model", tmp_path / "model", "--forget", "seven"]


def _empty_dir(tmp_path: Path) -> Path:
    """A folder that is not a pipeline (beside the output: an output inside an input is refused first)."""
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _bad_adapter(tmp_path: Path) -> list:
    save_weights_adapter(tmp_path / "bad.safetensors", {"unet.conv_in.weight": torch.zeros(2, 2)})
    return ["--model", DEFAULT_MODEL, "--forget", "seven", "--adapter", tmp_path / "bad.safetensors"]


@pytest.mark.parametrize(
    "make_args, fragments",
    [
        (_bad_model, ["missing Stable Diffusion component", "vae"]),
        (lambda p: ["--model", _empty_dir(p), "--forget", "seven"], ["not a diffusers pipeline directory"]),
        (lambda p: ["--model", DEFAULT_MODEL, "--forget", "七"], ["cannot be represented by the model's tokenizer"]),
        (lambda p: ["--model", DEFAULT_MODEL, "--forget", "banana"], ["not one of the evaluation", "zero, one, two"]),
        (lambda p: ["--model", DEFAULT_MODEL, "--forget", "seven", "--num_images", "0"], ["num_images must be >= 1"]),
        (_bad_adapter, ["adapter does not match the model", "conv_in.weight"]),
        (lambda p: ["--model", DEFAULT_MODEL, "--adapter", p / "none.safetensors"], ["does not exist"]),
    ],
)
def test_cli_bad_input_is_one_line_status_2_and_writes_nothing(tmp_path, capsys, make_args, fragments):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "evaluate", *make_args(tmp_path), "--output", out)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()


def test_cli_evaluate_end_to_end_with_an_adapter(tmp_path, capsys):
    pipe = load_pipeline(DEFAULT_MODEL)
    weight = _unet_weight(pipe)
    save_weights_adapter(tmp_path / "noise.safetensors", {"unet.conv_out.weight": torch.randn_like(weight)}, "delta")
    out = tmp_path / "eval"
    code, stdout, err = _run(
        capsys, "evaluate", "--model", DEFAULT_MODEL, "--adapter", tmp_path / "noise.safetensors",
        "--forget", "seven", "--retain", "one", "three", "--num_images", "8", "--num_inference_steps", "10",
        "--output", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["retain"] == ["one", "three"]
    assert metrics["settings"]["adapter"]["mode"] == "delta"
    assert metrics["original"]["frechet_to_original"] == pytest.approx(0.0, abs=1e-3)
    assert metrics["frechet_to_original"] > 1.0  # the perturbed UNet draws different digits
    assert "forget accuracy" in stdout and (out / "grid.png").is_file() and (out / "run.json").is_file()


def test_cli_oracle_reports_the_shipped_oracle_and_refuses_unknown_recipes(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "oracle", "--concept", "seven")
    assert code == 0 and "tiny-sd-without-seven" in stdout
    untrained = tmp_path / "untrained"
    save_pipeline(build_pipeline(), untrained)
    code, _, err = _run(capsys, "oracle", "--concept", "seven", "--model", untrained)
    assert code == 2 and "training recipe is unknown" in err


def test_pipeline_step_scores_shipped_assets_by_name(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text(
        "name: t\nsteps:\n  - name: ev\n    step: evaluate_erasure\n    config:\n"
        "      model: tiny-sd-without-seven\n      original: tiny-sd\n      oracle: none\n"
        "      evaluation: {forget: [seven], retain: [one], num_images: 8, num_inference_steps: 10}\n"
    )
    code, _, err = _run(capsys, "run", config, "--output_dir", tmp_path / "out")
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "steps" / "ev" / "metrics.json").read_text())
    assert metrics["forget_accuracy"] < metrics["original"]["forget_accuracy"]
    assert metrics["oracle"] is None and "oracle=none" in metrics["oracle_source"]
    assert (tmp_path / "out" / "steps" / "ev" / "grid.png").is_file()


def test_reference_images_are_cached_once_whatever_the_concept_order(tmp_path, monkeypatch):
    """Scoring erasures of different concepts of one model reuses the original's images: the cache does not depend on
    which concept is forgotten (listed first), and the images are the same in either order."""
    from concept_erase.diffusion.evaluation import _generate_all

    monkeypatch.setenv("CONCEPT_ERASE_CACHE", str(tmp_path / "cache"))
    config = EvaluationConfig(num_images=1, num_inference_steps=2)
    first = _generate_all(DEFAULT_MODEL, ["seven", "two", "one"], config, "original")
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    second = _generate_all(DEFAULT_MODEL, ["two", "one", "seven"], config, "original")
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors")) == files and len(files) == 1
    assert list(second.images) == ["two", "one", "seven"]
    for concept in ("seven", "two", "one"):
        assert torch.equal(first.images[concept], second.images[concept])
