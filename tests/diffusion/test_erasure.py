"""The erasure framework shared by every diffusion method: validation, artifacts, loading back, CLI and pipeline.

A tiny test method (registered for the module) trains a chosen parameter subset with the ordinary denoising loss, so
these tests do not depend on any one method's behaviour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import TensorDataset

from concept_erase.core.errors import AdapterError, ConfigError, TrainingError, UnknownNameError
from concept_erase.core.registry import METHODS, register_method
from concept_erase.diffusion.base import ErasureConfig, ErasureOutcome, concept_data, make_trainer, noise_scheduler
from concept_erase.diffusion.erasure import erase, load_erased, read_erasure, resolve_erasure
from concept_erase.diffusion.loading import apply_adapter, load_pipeline
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL
from pipelines.cli import main

FAST = {"num_images": 2, "generation_steps": 2, "max_train_steps": 2, "train_batch_size": 2, "show_progress": False}


@dataclass
class _ProbeConfig(ErasureConfig):
    trainable: str = r"attn2\.to_k"
    loss_scale: float = 1.0
    poison: bool = False  # a valid setting that makes the loss itself NaN


def _probe(request, config: _ProbeConfig) -> ErasureOutcome:
    data = concept_data(request, request.concepts, config)
    scheduler = noise_scheduler(request.pipe)

    def loss(model, batch):
        latents, states = batch
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        pred = model(scheduler.add_noise(latents, noise, t), t, states).sample
        value = torch.nn.functional.mse_loss(pred, noise) * config.loss_scale
        return value * float("nan") if config.poison else value

    trainer = make_trainer(
        request, config, TensorDataset(data.latents, data.embeddings), loss, config.trainable, method="probe"
    )
    return ErasureOutcome(trainer.train())


@pytest.fixture(scope="module", autouse=True)
def probe_method():
    register_method("probe", _ProbeConfig, tags=("diffusion",))(_probe)
    yield
    METHODS.unregister("probe")


def _config(**changes) -> _ProbeConfig:
    return _ProbeConfig(**{**FAST, "learning_rate": 1e-2, **changes})


def test_weights_adapter_round_trip(tmp_path):
    out = tmp_path / "erased"
    record = erase("tiny-sd", "probe", ["seven"], _config(), output_dir=out)
    saved = read_erasure(out)
    assert saved["artifact"]["format"] == "weights" and (out / "erasure.safetensors").is_file()
    assert saved["artifact"]["fraction_of_unet"] <= 0.10
    assert saved["base_model"] == "tiny-sd" and saved["concepts"] == ["seven"] and saved["steps"] == 2
    for key in ("config", "seed", "versions", "trained_parameters", "seconds", "peak_memory", "losses"):
        assert key in saved, key
    assert record["changed_parameters"] and all("attn2.to_k" in n for n in record["changed_parameters"])
    erased, base = load_erased(out), load_pipeline(DEFAULT_MODEL)
    for name, param in erased.unet.named_parameters():
        same = torch.equal(param, base.unet.get_parameter(name))
        assert same == (name not in record["changed_parameters"]), name
    model, adapter, original = resolve_erasure(out)
    assert adapter == out and str(model) == str(original)


def test_large_change_writes_a_full_pipeline(tmp_path):
    out = tmp_path / "full"
    erase("tiny-sd", "probe", ["seven"], _config(trainable=".*"), output_dir=out)
    record = read_erasure(out)
    assert record["artifact"]["format"] == "pipeline" and (out / "model_index.json").is_file()
    assert not (out / "tiny_sd_recipe.json").exists()  # an erased model is not the recipe's model
    model, adapter, original = resolve_erasure(out)
    assert model == out and adapter is None and original.name == "tiny-sd"
    assert isinstance(load_erased(out).unet, torch.nn.Module)


def test_seeded_erasure_is_reproducible():
    first = erase("tiny-sd", "probe", ["seven"], _config())
    second = erase("tiny-sd", "probe", ["seven"], _config())
    assert first["losses"] == second["losses"]


@pytest.mark.parametrize(
    ("concepts", "message"),
    [([], "concept list is empty"), (["  "], "concept list is empty"), (["s\u00e9ven"], "cannot be represented")],
)
def test_bad_concepts_are_refused_before_any_work(tmp_path, concepts, message):
    with pytest.raises(ConfigError, match=message):
        erase("tiny-sd", "probe", concepts, _config(), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fp16_on_cpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("fp16 is supported on this machine")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        erase("tiny-sd", "probe", ["seven"], _config(mixed_precision="fp16"))


def test_nan_loss_stops_training_and_writes_nothing(tmp_path):
    config = _config(poison=True)  # a NaN setting is refused by validation: here the loss itself goes NaN
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        erase("tiny-sd", "probe", ["seven"], config, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_adapter_for_another_model_is_refused(tmp_path):
    from concept_erase.diffusion.loading import save_weights_adapter

    file = tmp_path / "erasure.safetensors"
    pipe = load_pipeline(DEFAULT_MODEL)
    name = next(n for n, _ in pipe.unet.named_parameters() if "attn2.to_k" in n)
    save_weights_adapter(file, {f"unet.{name}": torch.zeros(3, 3)})
    before = pipe.unet.get_parameter(name).clone()
    with pytest.raises(AdapterError, match="does not match the model"):
        apply_adapter(pipe, file)
    assert torch.equal(pipe.unet.get_parameter(name), before)  # nothing was changed


def test_unknown_method_and_bad_config_key():
    with pytest.raises(UnknownNameError, match="registered diffusion methods"):
        erase("tiny-sd", "nope", ["seven"])
    with pytest.raises(ConfigError, match="unknown key"):
        erase("tiny-sd", "probe", ["seven"], {"not_a_key": 1})


def test_cli_erase_then_evaluate_the_erasure_directory(tmp_path, capsys):
    out = tmp_path / "erased"
    overrides = [f"{k}={v}" for k, v in FAST.items()] + ["learning_rate=0.01"]
    assert main(["erase", "--method", "probe", "--concept", "seven", "--output", str(out), "--set", *overrides]) == 0
    assert "artifact: weights" in capsys.readouterr().out
    evaluation = tmp_path / "eval"
    args = ["evaluate", "--model", str(out), "--num_images", "1", "--num_inference_steps", "2", "--oracle", "none"]
    assert main([*args, "--output_dir", str(evaluation)]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["forget"] == ["seven"]  # taken from erasure.json
    assert metrics["settings"]["erasure"] == str(out) and metrics["settings"]["adapter"]["format"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concept", "s\u00e9ven"], "cannot be represented"),
        (["--concept", "seven", "--mixed_precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--concept", "seven", "--model", str(DEFAULT_MODEL.parent / "missing")], "not found"),
        (["--concept", "seven", "--set", "max_train_steps=0"], "max_train_steps must be >= 1"),
    ],
)
def test_cli_erase_bad_input_is_one_line_without_output(tmp_path, capsys, argv, message):
    if "fp16" in argv and torch.cuda.is_available():
        pytest.skip("fp16 is supported on this machine")
    out = tmp_path / "out"
    assert main(["erase", "--method", "probe", *argv, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_erase_points_classifier_methods_to_unlearn(capsys):
    assert main(["erase", "--method", "finetune", "--concept", "seven", "--output_dir", "x"]) == 2
    assert "concept-erase unlearn" in capsys.readouterr().err


def test_pipeline_erase_evaluate_report(tmp_path):
    from pipelines.runner import load_pipeline as load_pipeline_config

    evaluation = {"forget": ["seven"], "retain": ["one"], "num_images": 4, "num_inference_steps": 2}
    spec = {
        "name": "mini",
        "steps": [
            {
                "name": "erase_probe",
                "step": "erase",
                "config": {"method": "probe", "concepts": ["seven"], "config": {**FAST, "learning_rate": 0.01}},
            },
            {
                "name": "eval_probe",
                "step": "evaluate_erasure",
                "config": {"model": "${steps.erase_probe.output_dir}", "oracle": "none", "evaluation": evaluation},
            },
            {"name": "report", "step": "erasure_report", "config": {}},
        ],
    }
    manifest = load_pipeline_config(spec, output_dir=tmp_path / "run").run(log=lambda _: None)
    outputs = manifest["steps"]["report"]["outputs"]
    report = (tmp_path / "run" / "steps" / "report" / "report.md").read_text()
    assert "| probe |" in report and "forget goal" in report
    assert outputs["plot_path"].endswith("comparison.png") and outputs["grid_path"].endswith("grid.png")
    rows = json.loads((tmp_path / "run" / "steps" / "report" / "report.json").read_text())["rows"]
    assert rows[0]["artifact_format"] == "weights" and rows[0]["goals"]["retain"] in (True, False)


def test_pipeline_step_validates_the_method_config_before_running():
    from pipelines.runner import load_pipeline as load_pipeline_config

    spec = {
        "name": "bad",
        "steps": [
            {"name": "e", "step": "erase", "config": {"method": "probe", "concepts": ["seven"], "config": {"nope": 1}}}
        ],
    }
    with pytest.raises(ConfigError, match="unknown key"):
        load_pipeline_config(spec)


def test_weights_adapter_loads_into_a_plain_diffusers_pipeline(tmp_path):
    """The README's recipe: no concept-erase code needed to apply a weights adapter."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out = tmp_path / "erased"
    erase("tiny-sd", "probe", ["seven"], _config(), output_dir=out)
    pipe = StableDiffusionPipeline.from_pretrained(str(DEFAULT_MODEL), safety_checker=None)
    weights = {k.removeprefix("unet."): v for k, v in load_file(out / "erasure.safetensors").items()}
    missing, unexpected = pipe.unet.load_state_dict(weights, strict=False)
    assert not unexpected
    reference = load_erased(out)
    for name, param in pipe.unet.named_parameters():
        assert torch.equal(param, reference.unet.get_parameter(name)), name


def test_erasure_prompts_never_include_the_evaluation_paraphrases(tmp_path):
    from concept_erase.diffusion.tiny_sd import EVAL_TEMPLATES

    record = erase("tiny-sd", "probe", ["seven"], _config())
    assert record["templates"] and set(record["templates"]).isdisjoint(EVAL_TEMPLATES)
    assert record["retain_concepts"] == ["zero", "one", "two", "three", "four", "five", "six", "eight", "nine"]


def test_bundled_demo_is_a_valid_pipeline_of_every_method(capsys):
    from pipelines.cli import CONFIGS_DIR
    from pipelines.runner import load_pipeline as load_pipeline_config

    steps = load_pipeline_config(CONFIGS_DIR / "demo.yaml").config.steps
    assert sorted(s.config["method"] for s in steps if s.step == "erase") == ["esd", "fmn", "salun"]
    assert [s.step for s in steps][-1] == "erasure_report"
    # `concept-erase demo` runs that pipeline: a bad override names its steps
    assert main(["demo", "--output_dir", "unused", "--set", "steps.nope.x=1"]) == 2
    err = capsys.readouterr().err
    assert "no step named 'nope'" in err and "erase_fmn" in err
